"""What a bounded metric costs: seconds per meta-step (eager, func/vmap backend, 1 thread) of tuv against its bounded
forms (model.bound=tanh, the tuv_bounded preset; spectral; spectrum) and kfo, on the sinusoid MLP (meta-batch 4,
1 inner step) and on the Omniglot conv4 (5-way 1-shot, meta-batch 4, 1 inner step, random images: the cost does not
depend on the pixels). Variants are interleaved round by round, so load from other processes hits them alike;
the median over rounds is reported.

    OMP_NUM_THREADS=1 python experiments/stability/cost.py [--rounds 7] [--steps 20] [--out cost.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from metatuv.meta import MetaLearner, cross_entropy, get_preset, mse
from metatuv.nn import bound_factors, conv4, mlp

VARIANTS = {
    "tuv": ("tuv", "none"),
    "tuv_bounded (tanh)": ("tuv", "tanh"),
    "tuv+spectral": ("tuv", "spectral"),
    "tuv+spectrum": ("tuv", "spectrum"),
    "kfo": ("kfo", "none"),
}


def learner(arch: str, preset: str, bound: str) -> tuple[MetaLearner, tuple]:
    torch.manual_seed(0)
    p = get_preset(preset)
    if arch == "sinusoid":
        model, loss = mlp([1, 40, 40, 1], p.use_T, p.use_V), mse
        batch = (torch.randn(4, 5, 1), torch.randn(4, 5, 1), torch.randn(4, 10, 1), torch.randn(4, 10, 1))
    else:
        model, loss = conv4(5, 1, 64, 28, "stride", p.use_T, p.use_V), cross_entropy
        batch = (
            torch.randn(4, 5, 1, 28, 28),
            torch.randint(0, 5, (4, 5)),
            torch.randn(4, 5, 1, 28, 28),
            torch.randint(0, 5, (4, 5)),
        )
    model = bound_factors(model, bound, 100.0)
    return MetaLearner.from_preset(model, p, loss, 0.01, 1), batch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = {}
    for arch, steps in (("sinusoid", a.steps), ("omniglot-5w1s", max(a.steps // 4, 2))):
        built = {name: learner(arch, *spec) for name, spec in VARIANTS.items()}
        times: dict[str, list[float]] = {name: [] for name in built}
        for r in range(a.rounds + 1):
            for name, (lrn, batch) in built.items():
                t0 = time.perf_counter()
                for _ in range(steps):
                    lrn.zero_grad(set_to_none=True)
                    lrn.backward(batch)
                if r:  # round 0 warms up
                    times[name].append((time.perf_counter() - t0) / steps)
        med = {name: statistics.median(v) for name, v in times.items()}
        out[arch] = {name: {"ms_per_meta_step": 1e3 * m, "vs_tuv": m / med["tuv"]} for name, m in med.items()}
        for name, m in med.items():
            print(f"{arch:14s} {name:20s} {1e3 * m:8.2f} ms/meta-step  ×{m / med['tuv']:.2f} of tuv")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"torch": torch.__version__, "threads": 1, "rounds": a.rounds, **out}, f, indent=1)


if __name__ == "__main__":
    main()
