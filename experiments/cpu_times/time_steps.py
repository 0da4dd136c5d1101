"""Seconds per meta-step on CPU of every conf/experiment file (and the default config), as metatuv-train runs it.

Each setup's config is composed by Hydra as ``metatuv-train experiment=<name>`` would (preset from ``--model``),
its network and MetaLearner built from that config, and the meta-step of the training loop (zero_grad, the
meta-batch's inner loops and backward, gradient clipping, Adam) timed on random inputs of the experiment's
shapes: no dataset is needed (mini-ImageNet's images are not on this machine), and timing does not depend on the
pixels. One warm-up step, then the median of ``--steps`` steps.

    python experiments/cpu_times/time_steps.py --steps 3 --out experiments/cpu_times/results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from torch import nn

from metatuv.build import build_learner
from metatuv.data import image_shape
from metatuv.meta import build_optimizer
from metatuv.schema import register

CONF = Path(__file__).resolve().parents[2] / "conf"


def setup(cfg):
    """(learner, random meta-batch) of the composed config: the learner built by metatuv-train's own
    ``build_learner`` (no dataset read), inputs of the benchmark's shapes."""
    b, t = cfg.benchmark, cfg.outer.meta_batch
    _, _, learner = build_learner(cfg, load_data=False)
    if b.name in ("sinusoid", "polynomial"):
        d_in, d_out = b.arch.sizes[0], b.arch.sizes[-1]
        return learner, (
            torch.randn(t, b.shots, d_in),
            torch.randn(t, b.shots, d_out),
            torch.randn(t, b.queries, d_in),
            torch.randn(t, b.queries, d_out),
        )
    c, s, _ = image_shape(b.name, b.image_size)
    n_s, n_q = b.ways * b.shots, b.ways * b.queries
    return learner, (
        torch.randn(t, n_s, c, s, s),
        torch.randint(0, b.ways, (t, n_s)),
        torch.randn(t, n_q, c, s, s),
        torch.randint(0, b.ways, (t, n_q)),
    )


def time_setup(overrides: list[str], steps: int) -> dict:
    register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    learner, batch = setup(cfg)
    opt = build_optimizer(torch.optim.Adam, learner.parameters(), cfg.outer.lr)
    g = torch.Generator().manual_seed(0)
    times = []
    for k in range(steps + 1):  # the first one warms up
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        learner.backward(batch, g)
        nn.utils.clip_grad_norm_(learner.parameters(), cfg.outer.clip if cfg.outer.clip is not None else float("inf"))
        opt.step()
        if k:
            times.append(time.perf_counter() - start)
    s = statistics.median(times)
    return {
        "overrides": overrides,
        "s_per_step": s,
        "steps_timed": steps,
        "outer_steps": cfg.outer.steps,
        "hours_for_outer_steps": s * cfg.outer.steps / 3600,
        "meta_batch": cfg.outer.meta_batch,
        "inner_steps": cfg.inner.steps,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="timed meta-steps per setup (after one warm-up)")
    ap.add_argument("--model", default="tuv", help="preset (model=...)")
    ap.add_argument("--experiments", default="all", help="comma list of conf/experiment names, or all")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="JSON path")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
    if args.experiments != "all":
        names = args.experiments.split(",")
    setups = [[f"model={args.model}"]] + [[f"experiment={n}", f"model={args.model}"] for n in names]
    rows = []
    for overrides in setups:
        row = time_setup(overrides, args.steps)
        row["load_1min_after"] = os.getloadavg()[0]
        rows.append(row)
        print(
            f"{' '.join(overrides):45s} {row['s_per_step']:8.3f} s/step  x {row['outer_steps']} steps = "
            f"{row['hours_for_outer_steps']:7.2f} h   (load {row['load_1min_after']:.1f})",
            flush=True,
        )
    if args.out:
        meta = {"threads": args.threads, "torch": torch.__version__, "cpu": platform.processor() or platform.machine()}
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
