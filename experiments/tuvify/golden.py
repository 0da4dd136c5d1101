"""Golden float64 meta-gradients of every preset (MLP and conv4), to check that a change to the layers keeps them.

    python experiments/tuvify/golden.py --out before.pt                  # on the old code
    python experiments/tuvify/golden.py --out after.pt --compare before.pt

Each model is built from a fixed seed through ``mlp`` / ``conv4`` (so a changed random stream at construction
shows up too), then one meta-gradient (2 inner steps, second order, func backend) of a fixed random batch.
"""

from __future__ import annotations

import argparse

import torch

from metatuv.meta import MetaLearner, cross_entropy, get_preset, mse
from metatuv.meta.presets import PRESETS
from metatuv.nn import conv4, mlp


def golden() -> dict[str, dict[str, torch.Tensor]]:
    out = {}
    for name in sorted(n for n in PRESETS if PRESETS[n].bound == "none"):  # the presets that existed before (f4a5ad2)
        p = get_preset(name)
        for arch in ("mlp", "conv4"):
            torch.manual_seed(0)
            if arch == "mlp":
                model = mlp((1, 8, 8, 1), use_T=p.use_T, use_V=p.use_V, use_mask=p.use_mask).double()
                g = torch.Generator().manual_seed(1)
                batch = (
                    torch.randn(3, 5, 1, generator=g, dtype=torch.float64),
                    torch.randn(3, 5, 1, generator=g, dtype=torch.float64),
                    torch.randn(3, 6, 1, generator=g, dtype=torch.float64),
                    torch.randn(3, 6, 1, generator=g, dtype=torch.float64),
                )
                loss = mse
            else:
                model = conv4(3, hidden=4, image_size=8, use_T=p.use_T, use_V=p.use_V, use_mask=p.use_mask).double()
                g = torch.Generator().manual_seed(1)
                batch = (
                    torch.randn(2, 3, 1, 8, 8, generator=g, dtype=torch.float64),
                    torch.randint(0, 3, (2, 3), generator=g),
                    torch.randn(2, 6, 1, 8, 8, generator=g, dtype=torch.float64),
                    torch.randint(0, 3, (2, 6), generator=g),
                )
                loss = cross_entropy
            learner = MetaLearner.from_preset(model, p, loss, 0.05, 2).double()
            learner.zero_grad(set_to_none=True)
            meta_loss = learner.backward(batch, torch.Generator().manual_seed(3))
            grads = {n: q.grad.detach().clone() for n, q in learner.named_parameters() if q.grad is not None}
            grads["<loss>"] = meta_loss.detach().reshape(1)
            out[f"{name}/{arch}"] = grads
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--compare", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    now = golden()
    torch.save(now, args.out)
    if args.compare:
        ref = torch.load(args.compare, weights_only=True)
        worst = 0.0
        for key in ref:
            if ref[key].keys() != now[key].keys():
                raise SystemExit(f"{key}: parameter names differ: {sorted(ref[key])} vs {sorted(now[key])}")
            for n in ref[key]:
                worst = max(worst, (ref[key][n] - now[key][n]).abs().max().item())
        print(f"{len(ref)} preset x arch cases, largest |difference| of any meta-gradient entry: {worst:.3e}")
        if worst > 1e-12:
            raise SystemExit("golden meta-gradients changed by more than 1e-12")


if __name__ == "__main__":
    main()
