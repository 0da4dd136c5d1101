"""Where a logged run's extra time goes (issue 6): one sinusoid run with logger=wandb defaults, timing every
logging call on the training thread and the CPU time of the logger's own thread. Unlike the A/B comparison in
overhead.py this does not depend on run-to-run noise (the machine here varies by ±10% between identical runs).
Run from the repository root:

    python experiments/logging/account.py --steps 2000 [overrides ...]

Training thread: the after-step hook (train loss, learned metrics, validation, queueing wandb calls and pictures),
the step-0 metrics, the final wait in ``finish`` — every second there is added to the run. Logger thread: wandb.init,
wandb.log, the PNGs; it runs beside training (2 cores) and at worst, if it took the training thread's core the
whole time, adds its CPU seconds too. Upper bound of the overhead = (training-thread seconds + logger-thread CPU
seconds) / the run's wall time.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

import metatuv.loggers as loggers
import metatuv.monitor as monitor
import metatuv.train as train
from metatuv.train import CONF_DIR, run

SPENT: dict[str, list[float]] = {}


def timed(owner, name: str, key: str) -> None:
    f = getattr(owner, name)

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return f(*args, **kwargs)
        finally:
            SPENT.setdefault(key, []).append(time.perf_counter() - start)

    setattr(owner, name, wrapper)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. monitor.eval_every=0")
    a = p.parse_args()

    def timed_monitor(hook):  # metatuv.train.run(wrap=...): the monitor's after-step hook, timed
        def log(step, losses):
            start = time.perf_counter()
            hook(step, losses)
            SPENT.setdefault("after-step hook (training thread)", []).append(time.perf_counter() - start)

        return log

    timed(monitor, "evaluate", "  of which evaluate (validation, then the meta-test)")  # validation
    timed(train, "evaluate", "  of which evaluate (validation, then the meta-test)")  # the meta-test
    timed(loggers.RunLogger, "finish", "logger.finish wait (training thread)")
    timed(train, "open_logger", "open_logger (training thread)")
    work = loggers.Worker._work

    def timed_work(self, init):
        start = time.thread_time()
        try:
            work(self, init)
        finally:
            SPENT.setdefault("logger thread CPU (init, wandb, PNGs)", []).append(time.thread_time() - start)

    loggers.Worker._work = timed_work

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", [f"outer.steps={a.steps}", "progress=false", "eval.baseline=false", *a.overrides])
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        results = run(cfg, Path(out), wrap=timed_monitor)
        total = time.perf_counter() - start
    test = SPENT["  of which evaluate (validation, then the meta-test)"].pop()  # the meta-test is not logging
    print(f"run {total:.2f} s wall (meta-train {results['train_seconds']:.2f} s, meta-test {test:.2f} s)")
    for key, values in SPENT.items():
        print(f"  {key:<52} {len(values):4d} calls {sum(values):7.3f} s = {100 * sum(values) / total:5.2f}% of the run")
    main_thread = sum(sum(SPENT[k]) for k in SPENT if "training thread" in k)
    worker = sum(SPENT["logger thread CPU (init, wandb, PNGs)"])
    print(
        f"training-thread logging {main_thread:.2f} s = {100 * main_thread / total:.2f}%; upper bound with the logger "
        f"thread's CPU {main_thread + worker:.2f} s = {100 * (main_thread + worker) / total:.2f}%"
    )


if __name__ == "__main__":
    main()
