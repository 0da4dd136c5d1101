"""Episode-sampling cost against one meta-step, on the real Omniglot data, in one run.

Samples Omniglot 5-way 1-shot 15-query meta-batches of 32 tasks (vinyals train split, in memory on the device)
and times one second-order conv4-64 meta-step (preset tuv, 1 inner step) on the same meta-batch size; prints
medians and their ratio.

    python experiments/sampler/measure.py --data-root ../shared/data
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from metatuv.data import FewShot, load_splits
from metatuv.meta import MetaLearner, cross_entropy, get_preset
from metatuv.nn import conv4


def median_ms(fn, repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tasks", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    start = time.perf_counter()
    fs = FewShot(load_splits("omniglot", args.data_root, "vinyals"), 5, 1, 15, device=args.device)
    print(f"data ready in {time.perf_counter() - start:.2f} s")
    stream = fs.batches("train", args.tasks, seed=0)
    batch = next(stream)
    sample_ms = median_ms(lambda: next(stream), 50, args.device)

    p = get_preset("tuv")
    model = conv4(5, 1, 64, 28, "stride", p.use_T, p.use_V).to(args.device)
    learner = MetaLearner.from_preset(model, p, cross_entropy, 0.4, 1)
    opt = torch.optim.Adam(learner.parameters(), 1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        learner.backward(batch)
        opt.step()

    step()
    step_ms = median_ms(step, args.repeats, args.device)
    print(f"{args.device}, {torch.get_num_threads()} threads, meta-batch {args.tasks}, Omniglot 5-way 1-shot 15-query")
    print(f"  sample one meta-batch: {sample_ms:8.2f} ms")
    print(f"  one conv4-64 tuv meta-step (1 inner step, 2nd order, vectorize={learner.vectorize}): {step_ms:8.1f} ms")
    print(f"  sampling / meta-step = {sample_ms / step_ms:.4f}")


if __name__ == "__main__":
    main()
