"""Recipe: plain torch.func on a tuvified model: ``functional_call`` + ``grad`` over the fast parameters, ``vmap``
over tasks, and ``grad`` of the whole meta-loss with respect to every parameter (T, V, U₀, b₀, mask logits).

Each inner step is U' = U − α·(m ⊙ g_U) on the fast parameters only (``fast_names``); the rest of the parameter
dict passes through unchanged, so W' = W − α·TTᵀ·G·VᵀV.

    python examples/torch_func.py                   # sinusoid 10-shot, W = T·U·V
    python examples/torch_func.py --mtnet           # MT-net masks
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor
from torch.func import functional_call, grad, vmap

from metatuv.data.sinusoid import Sinusoid
from metatuv.meta import mask_noise, mask_sample, mse
from metatuv.nn import fast_names, mlp


def meta_loss_fn(model: torch.nn.Module, lr: float, steps: int):
    """params, batch, noise -> mean query loss after ``steps`` inner steps per task (a pure function)."""
    names = fast_names(model)

    def task_loss(params: dict[str, Tensor], xs, ys, xq, yq, noise: dict[str, Tensor]) -> Tensor:
        masks = {}
        for logit_name, task_noise in noise.items():  # MT-net: the task's mask per gated parameter
            m = mask_sample(params[logit_name], task_noise, 1.0)
            prefix = logit_name.removesuffix("mask_logit")
            masks |= {prefix + "U": m[:, None], prefix + "bias": m}
        fast = {n: params[n] for n in names}
        for _ in range(steps):
            g = grad(lambda f: mse(functional_call(model, {**params, **f}, (xs,)), ys))(fast)
            fast = {n: fast[n] - lr * masks.get(n, 1.0) * g[n] for n in names}
        return mse(functional_call(model, {**params, **fast}, (xq,)), yq)

    def meta_loss(params: dict[str, Tensor], batch, noise: dict[str, Tensor]) -> Tensor:
        return vmap(task_loss, in_dims=(None, 0, 0, 0, 0, 0))(params, *batch, noise).mean()

    return meta_loss


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mtnet", action="store_true", help="T·U with MT-net masks instead of T·U·V")
    ap.add_argument("--steps", type=int, default=2000, help="meta-steps")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model = mlp((1, 40, 40, 1), use_T=True, use_V=not args.mtnet, use_mask=args.mtnet)
    params = {n: p.detach() for n, p in model.named_parameters()}
    opt = torch.optim.Adam(params.values(), lr=1e-3)
    meta_grad = grad(meta_loss_fn(model, lr=0.01, steps=1), has_aux=False)
    loss_of = meta_loss_fn(model, lr=0.01, steps=1)
    tasks, g = Sinusoid(10, 10).batches(4, seed=0), torch.Generator().manual_seed(1)
    for step in range(args.steps):
        batch, noise = next(tasks), mask_noise(model, 4, g)
        for p, gp in zip(params.values(), meta_grad(params, batch, noise).values(), strict=True):
            p.grad = gp
        opt.step()
        if (step + 1) % max(1, args.steps // 10) == 0:
            print(f"meta-step {step + 1}: query MSE {loss_of(params, batch, noise).item():.4f}")
    return loss_of(params, batch, noise).item()


if __name__ == "__main__":
    main()
