"""Differentiable SGD on the fast parameters (MAML, Finn et al. 2017; on U only: Lee & Choi 2018).

θ_{k+1} = θ_k − α ∇_θ L_support(θ_k), written as pure updates on a dict of tensors (no in-place, no .data),
with gradients from ``torch.func.grad`` so the outer autograd differentiates through every step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor
from torch.func import grad

Params = dict[str, Tensor]
LR = float | Mapping[str, Tensor]


def sgd_step(fast: Params, grads: Params, lr: LR) -> Params:
    """θ' = θ − α·g, with α a float or a per-parameter tensor (broadcast against θ)."""
    if isinstance(lr, Mapping):
        return {n: p - lr[n] * grads[n] for n, p in fast.items()}
    return {n: p - lr * grads[n] for n, p in fast.items()}


def adapt(
    loss_fn: Callable[[Params], Tensor],
    fast: Params,
    steps: int,
    lr: LR,
    first_order: bool = False,
) -> Params:
    """Take ``steps`` SGD steps of size ``lr`` on ``loss_fn`` (a function of the fast parameters).

    Second order by default: the returned tensors carry the full graph back to ``fast`` and to every
    tensor ``loss_fn`` closes over (T, V, ...). ``first_order=True`` detaches the inner gradients
    (FOMAML). Under ``torch.no_grad()`` the steps still run (``torch.func.grad`` ignores an outer
    no_grad) but no graph is kept: that is the evaluation mode, with as many steps as wanted.
    """
    if steps < 0:
        raise ValueError(f"adapt: steps={steps} must be >= 0.")
    grad_fn = grad(loss_fn)
    for _ in range(steps):
        grads = grad_fn(fast)
        if first_order:
            grads = {n: g.detach() for n, g in grads.items()}
        fast = sgd_step(fast, grads, lr)
    if not torch.is_grad_enabled():
        fast = {n: p.detach() for n, p in fast.items()}
    return fast
