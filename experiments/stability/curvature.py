"""Per-task curvature of a trained run at its meta-learned initialization: α·λmax(H) with H the Hessian of the
support loss w.r.t. the fast parameters (U's and biases; plain GD with step α on them is what the inner loop does,
so a task's inner loop oscillates/diverges along the top direction when α·λmax(H) > 2). Power iteration (60 HVPs,
float64) on every second task of the first 100 meta-test tasks, and on one named task.

    OMP_NUM_THREADS=1 python experiments/stability/curvature.py RUN_DIR [--task 320]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from torch.func import grad, jvp

from metatuv.build import build_learner
from metatuv.checkpoint import load_checkpoint
from metatuv.runstate import stored_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--task", type=int, default=320, help="test task index (stream order) to report on its own")
    a = ap.parse_args()
    torch.set_default_dtype(torch.float64)
    state, _ = load_checkpoint(Path(a.run) / "checkpoint.pt")
    cfg = stored_config(state["config"])  # keys added since the run filled in
    cfg.eval.baseline = False
    setup, _, learner = build_learner(cfg)
    learner.load_state_dict(state["learner"])
    learner.double()
    params = {k: v.detach() for k, v in learner.params().items()}
    fast = {n: params[n] for n in learner.fast_names}

    def lam_max(xs: torch.Tensor, ys: torch.Tensor) -> float:
        g = grad(lambda f: learner.loss(learner.problem.forward({**params, **f}, xs), ys))
        gen = torch.Generator().manual_seed(0)
        v = {n: torch.randn(p.shape, generator=gen) for n, p in fast.items()}
        lam = 0.0
        for _ in range(60):
            norm = sum((t * t).sum() for t in v.values()).sqrt()
            v = {n: t / norm for n, t in v.items()}
            _, hv = jvp(g, (fast,), (v,))
            lam = sum((hv[n] * v[n]).sum() for n in fast).item()
            v = hv
        return lam

    stream, tasks = setup.test(), []
    while len(tasks) <= max(a.task, 100):
        xs, ys = next(stream)[:2]
        tasks += [(xs[i].double(), ys[i].double()) for i in range(len(xs))]
    alpha = cfg.inner.lr
    lams = [alpha * lam_max(*tasks[k]) for k in range(0, 100, 2)]
    one = alpha * lam_max(*tasks[a.task])
    print(
        f"{a.run}: α·λmax(H_fast) task {a.task} {one:.3g}; over 50 tasks median {statistics.median(lams):.3g}, "
        f"max {max(lams):.3g}, > 2 in {sum(v > 2 for v in lams)}"
    )


if __name__ == "__main__":
    main()
