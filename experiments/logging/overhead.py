"""Logging overhead on a sinusoid run (issue 6): the same run with logger=wandb (default interval) and without
any logging, side by side in one process, alternating, each repeated. Run from the repository root:

    python experiments/logging/overhead.py --steps 2000 --repeats 2

Prints wall time of the whole run (build, meta-train, test, logger finish), the meta-training part, and the
overhead in %. Extra overrides apply to every setting (``... --steps 2000 inner.compile=true``).
"""

import argparse
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from metatuv.train import CONF_DIR, run

SETTINGS = {
    "no logging": ["logger=none", "monitor.every=0", "monitor.eval_every=0", "monitor.images_every=-1"],
    "logger=wandb (defaults)": ["logger=wandb"],
    "logger=wandb, no validation": ["logger=wandb", "monitor.eval_every=0"],
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("overrides", nargs="*", help="extra config overrides for every setting, e.g. inner.compile=true")
    a = p.parse_args()
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in SETTINGS}
    for r in range(a.repeats):
        for name, overrides in SETTINGS.items():
            with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
                cfg = compose(
                    "config",
                    [f"outer.steps={a.steps}", "progress=false", "eval.baseline=false", *overrides, *a.overrides],
                )
            with tempfile.TemporaryDirectory() as out:
                start = time.perf_counter()
                res = run(cfg, Path(out))
                total = time.perf_counter() - start
            times[name].append((total, res["train_seconds"]))
            print(f"repeat {r}: {name:<26} total {total:7.2f} s   meta-train {res['train_seconds']:7.2f} s", flush=True)
    base_total = min(t for t, _ in times["no logging"])
    base_train = min(t for _, t in times["no logging"])
    print(
        f"\n{'setting':<26} {'total s (best)':>15} {'train s (best)':>15} {'overhead total':>15} {'overhead train':>15}"
    )
    for name, ts in times.items():
        total, trn = min(t for t, _ in ts), min(t for _, t in ts)
        print(
            f"{name:<26} {total:15.2f} {trn:15.2f} {100 * (total / base_total - 1):14.1f}% "
            f"{100 * (trn / base_train - 1):14.1f}%"
        )


if __name__ == "__main__":
    main()
