"""Evaluate every run of the stability study at 1, 10 and 50 test steps, with plain and with backtracked steps.

    python experiments/stability/evaluate_runs.py [--shard I/N] [--backtrack 8] [--glob PATTERN] [--steps 1 10 50]

Writes metatuv-eval's own files beside each checkpoint (``eval-test-<s>steps[-backtrack<N>]-600tasks.json``, the same
600 meta-test tasks for every run), skipping those already there or in the run's results.json; one process, no
start-up per evaluation. ``--shard I/N`` takes every N-th run from the I-th (two processes on two cores). ``--glob``
picks the runs under runs/ (default: the sinusoid grid), ``--steps`` the test-step settings.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from metatuv.evaluate import evaluate_checkpoint

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from records import run_scores  # noqa: E402

TEST_STEPS = (1, 10, 50)
TASKS = 600
SINUSOID = "steps*/shots*/lr*/*/maxstep*/seed*"


def in_results(run: Path, steps: int, backtrack: int) -> bool:
    """Whether the run already holds this evaluation (600 tasks, ``steps`` test steps, this step rule): in its
    results.json or a metatuv-eval file beside it (``records.run_scores``, which reads both)."""
    want = (steps, TASKS, backtrack)
    return any((r["test_steps"], r["tasks"], r.get("backtrack", 0)) == want for r in run_scores(run / "results.json"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shard", default="0/1", help="I/N: every N-th run from the I-th")
    p.add_argument("--backtrack", type=int, default=8, help="halvings of the backtracked evaluation (default 8)")
    p.add_argument("--glob", default=SINUSOID, help=f"runs under runs/ (default {SINUSOID})")
    p.add_argument("--steps", type=int, nargs="+", default=TEST_STEPS, help="test-step settings (default 1 10 50)")
    a = p.parse_args()
    i, n = map(int, a.shard.split("/"))
    torch.set_num_threads(1)
    runs = sorted(d for d in (HERE / "runs").glob(a.glob) if (d / "results.json").exists())
    for run in runs[i::n]:
        for steps in a.steps:
            for bt in (0, a.backtrack):
                if in_results(run, steps, bt):
                    continue
                r = evaluate_checkpoint(run, TASKS, steps, progress=False, backtrack=bt)
                print(f"{run.relative_to(HERE)} {steps} steps, backtrack {bt}: {r['mean']}", flush=True)


if __name__ == "__main__":
    main()
