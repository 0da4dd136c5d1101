"""Median ms of the compiled sinusoid meta-step (MetaLearner.backward + fused Adam) for tuv and maml: an A/B timer.

Run it alternately against two checkouts (PYTHONPATH=<checkout>), e.g.
    for root in /work/main .; do PYTHONPATH=$root OMP_NUM_THREADS=1 python experiments/tuvify/ab_step.py; done
"""

import math
import time

import torch

from metatuv.meta import MetaLearner, get_preset, mse
from metatuv.nn import TUVLayer, mlp


def median_ms(preset: str, warmup: int = 20, steps: int = 1000) -> tuple[float, float]:
    p = get_preset(preset)
    torch.manual_seed(0)
    model = mlp((1, 40, 40, 1), use_T=p.use_T, use_V=p.use_V)
    with torch.no_grad():  # T, V off the identity, as in experiments/benchmark/workloads.py
        for m in model.modules():
            if isinstance(m, TUVLayer):
                for f in (m.T, m.V):
                    if f is not None:
                        f.add_(0.05 * torch.randn_like(f) / math.sqrt(f.shape[0]))
    learner = MetaLearner.from_preset(model, p, mse, 0.01, 1, compile=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    g = torch.Generator().manual_seed(0)
    batch = tuple(torch.randn(4, 10, 1, generator=g) for _ in range(4))
    times = []
    for k in range(warmup + steps):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        learner.backward(batch)
        opt.step()
        if k >= warmup:
            times.append(time.perf_counter() - start)
    times.sort()
    return 1e3 * times[len(times) // 2], 1e3 * times[len(times) // 4]


if __name__ == "__main__":
    torch.set_num_threads(1)
    for name in ("tuv", "maml"):
        med, p25 = median_ms(name)
        print(f"{name} median {med:.3f} ms  p25 {p25:.3f}", end="  ")
    print()
