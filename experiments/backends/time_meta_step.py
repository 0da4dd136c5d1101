"""Time one second-order meta-step per inner-loop backend, side by side in one run.

Workload (default): conv4 Omniglot (64 filters, 28×28×1, stride-2 convs, primitive batch norm), 5-way 1-shot,
15 queries, meta-batch 4, 1 inner step, float32, on whatever device is given. Prints a table (median ms over
repeats after warm-up) and writes JSON next to this file.

    python experiments/backends/time_meta_step.py                 # CPU, presets maml, tuv, mtnet
    python experiments/backends/time_meta_step.py --device cuda --tasks 32
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from metatuv.meta import MetaLearner, cross_entropy, get_preset
from metatuv.nn import conv4

PATHS = [("func", "loop"), ("func", "vmap"), ("higher", "loop"), ("learn2learn", "loop")]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_step(preset: str, backend: str, vectorize: str, args) -> float:
    torch.manual_seed(0)
    p = get_preset(preset)
    model = conv4(args.ways, 1, args.hidden, 28, "stride", p.use_T, p.use_V, p.use_mask).to(args.device)
    learner = MetaLearner.from_preset(
        model, p, cross_entropy, 0.4, args.steps, backend=backend, vectorize=vectorize
    ).to(args.device)
    opt = torch.optim.Adam(learner.parameters(), 1e-3)
    n_s, n_q = args.ways * args.shots, args.ways * args.queries
    t, dev = args.tasks, args.device
    batch = (
        torch.randn(t, n_s, 1, 28, 28, device=dev),
        torch.arange(args.ways, device=dev).repeat_interleave(args.shots).expand(t, -1).contiguous(),
        torch.randn(t, n_q, 1, 28, 28, device=dev),
        torch.arange(args.ways, device=dev).repeat_interleave(args.queries).expand(t, -1).contiguous(),
    )

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        learner.backward(batch)
        opt.step()

    for _ in range(args.warmup):
        step()
    sync(dev)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        sync(dev)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="maml,tuv,mtnet")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--ways", type=int, default=5)
    ap.add_argument("--shots", type=int, default=1)
    ap.add_argument("--queries", type=int, default=15)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    args = ap.parse_args()

    rows = []
    presets = args.presets.split(",")
    print(f"ms per meta-step, {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"conv4-{args.hidden} {args.ways}-way {args.shots}-shot, {args.queries} queries, meta-batch {args.tasks}, "
          f"{args.steps} inner step(s), second order")  # fmt: skip
    print(f"{'backend':<22}" + "".join(f"{p:>10}" for p in presets))
    for backend, vectorize in PATHS:
        label = f"{backend}" + (f" ({vectorize})" if backend == "func" else "")
        ms = {p: time_step(p, backend, vectorize, args) for p in presets}
        rows.append({"backend": backend, "vectorize": vectorize, **{p: round(v, 2) for p, v in ms.items()}})
        print(f"{label:<22}" + "".join(f"{ms[p]:>10.1f}" for p in presets), flush=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "torch": torch.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
