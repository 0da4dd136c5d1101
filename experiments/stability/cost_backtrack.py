"""What the backtracked test-time step costs: meta-test time of 600 sinusoid tasks, plain vs backtracked, side by side.

    OMP_NUM_THREADS=1 python experiments/stability/cost_backtrack.py RUN_DIR [--rounds 3] [--out cost_backtrack.json]

Loads one trained run (a metatuv-train folder), then times ``evaluate`` over the same 600 tasks at 10 and 50 test
steps with ``backtrack`` 0 and 8, the four settings interleaved in each round; reports the median seconds per setting
and the ratio backtracked / plain. Training is unaffected (the backtracked step runs in evaluation only).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from metatuv.build import TEST_SEED_OFFSET, build_learner
from metatuv.checkpoint import load_checkpoint
from metatuv.meta.evaluation import evaluate
from metatuv.runstate import stored_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run", type=Path)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("cost_backtrack.json"))
    a = p.parse_args()
    torch.set_num_threads(1)
    state, _ = load_checkpoint(a.run / "checkpoint.pt")
    cfg = stored_config(state["config"])
    setup, _, learner = build_learner(cfg)
    learner.load_state_dict(state["learner"])
    settings = [(steps, bt) for steps in (10, 50) for bt in (0, 8)]
    times: dict[str, list[float]] = {f"{s} steps, backtrack {bt}": [] for s, bt in settings}
    for _ in range(a.rounds):
        for steps, bt in settings:
            start = time.perf_counter()
            evaluate(learner, setup.test(), 600, steps, setup.metric, False, cfg.seed + TEST_SEED_OFFSET, backtrack=bt)
            times[f"{steps} steps, backtrack {bt}"].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "run": str(a.run),
        "preset": cfg.model.name,
        "rounds": a.rounds,
        "median_seconds": med,
        "ratio_backtracked_over_plain": {
            s: med[f"{s} steps, backtrack 8"] / med[f"{s} steps, backtrack 0"] for s in (10, 50)
        },
        "all_seconds": times,
    }
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["median_seconds"], indent=1), json.dumps(out["ratio_backtracked_over_plain"]))


if __name__ == "__main__":
    main()
