"""Recipe: higher's ``innerloop_ctx`` over the fast parameters of a tuvified model (U and biases only).

The differentiable optimizer holds ``fast_parameters(model)``, so only U and the biases step; with
``copy_initial_weights=False`` every parameter of ``model`` (T, V, the initial U, the mask logits) gets its
meta-gradient through the patched model. MT-net masks enter through ``grad_callback``, which sees one gradient per
parameter of the model. Each step is U' = U − α·(m ⊙ g_U) (W' = W − α·T·(m ⊙ Tᵀ·G)).

    python examples/higher_innerloop.py             # sinusoid 10-shot, W = T·U·V
    python examples/higher_innerloop.py --mtnet     # MT-net masks
"""

from __future__ import annotations

import argparse

import higher
import torch
from torch import Tensor

from metatuv.data.sinusoid import Sinusoid
from metatuv.meta import mask_noise, mask_sample, mse
from metatuv.nn import fast_parameters, mlp


def meta_loss(model: torch.nn.Module, batch, lr: float, steps: int, noise=None) -> Tensor:
    """Mean query loss over the tasks after ``steps`` SGD steps on the fast parameters of each task."""
    xs, ys, xq, yq = batch
    names = [n for n, _ in model.named_parameters()]
    losses = []
    for i in range(len(xs)):
        masks = {}
        for logit_name, p in model.named_parameters():  # MT-net: the task's mask per gated parameter
            if logit_name.endswith("mask_logit"):
                m = mask_sample(p, noise[logit_name][i], 1.0)
                prefix = logit_name.removesuffix("mask_logit")
                masks |= {prefix + "U": m[:, None], prefix + "bias": m}

        def callback(grads, masks=masks):
            return [masks[n] * g if n in masks and g is not None else g for n, g in zip(names, grads, strict=True)]

        opt = torch.optim.SGD(fast_parameters(model), lr=lr)
        with higher.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
            for _ in range(steps):
                diffopt.step(mse(fmodel(xs[i]), ys[i]), grad_callback=callback)
            losses.append(mse(fmodel(xq[i]), yq[i]))
    return torch.stack(losses).mean()


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mtnet", action="store_true", help="T·U with MT-net masks instead of T·U·V")
    ap.add_argument("--steps", type=int, default=2000, help="meta-steps")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model = mlp((1, 40, 40, 1), use_T=True, use_V=not args.mtnet, use_mask=args.mtnet)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    tasks, g = Sinusoid(10, 10).batches(4, seed=0), torch.Generator().manual_seed(1)
    for step in range(args.steps):
        opt.zero_grad()
        loss = meta_loss(model, next(tasks), lr=0.01, steps=1, noise=mask_noise(model, 4, g))
        loss.backward()
        opt.step()
        if (step + 1) % max(1, args.steps // 10) == 0:
            print(f"meta-step {step + 1}: query MSE {loss.item():.4f}")
    return loss.item()


if __name__ == "__main__":
    main()
