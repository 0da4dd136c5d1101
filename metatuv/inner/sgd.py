"""Differentiable SGD on the fast parameters (MAML, Finn et al. 2017; on U only: Lee & Choi 2018).

θ_{k+1} = θ_k − Δ_k(∇_θ L_support(θ_k)), with Δ_k = α·g for plain SGD or any preconditioned step rule
(MT-net mask, Meta-SGD / LSLR learned rates, Meta-Curvature), written as pure updates on a dict of tensors
(no in-place, no .data) with gradients from ``torch.func.grad``, so the outer autograd (and vmap)
differentiates through every step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import grad

Params = dict[str, Tensor]
StepRule = Callable[[int, Params], Params]  # (inner step k, gradients) -> Δ, the step: θ' = θ − Δ


def sgd_rule(lr: float) -> StepRule:
    """Plain SGD: Δ = α·g."""
    return lambda k, grads: {n: lr * g for n, g in grads.items()}


def sgd_step(fast: Params, delta: Params) -> Params:
    """θ' = θ − Δ, as new tensors."""
    return {n: p - delta[n] for n, p in fast.items()}


def adapt(
    loss_fn: Callable[[Params], Tensor],
    fast: Params,
    steps: int,
    lr: float | StepRule,
    first_order: bool = False,
) -> Params:
    """Take ``steps`` SGD steps on ``loss_fn`` (a function of the fast parameters).

    ``lr`` is the step size α, or a step rule ``(k, grads) -> Δ``. Second order by default: the returned
    tensors carry the full graph back to ``fast`` and to every tensor ``loss_fn`` or the rule closes over
    (T, V, mask logits, learned rates). ``first_order=True`` detaches the support-loss gradients (FOMAML;
    what the rule does with them stays differentiable, so Meta-SGD rates and MT-net masks still learn).
    Under ``torch.no_grad()`` the steps still run (``torch.func.grad`` ignores an outer no_grad) but no
    graph is kept: that is the evaluation mode, with as many steps as wanted.
    """
    if steps < 0:
        raise ValueError(f"adapt: steps={steps} must be >= 0.")
    rule = lr if callable(lr) else sgd_rule(lr)
    grad_fn = grad(loss_fn)
    for k in range(steps):
        grads = grad_fn(fast)
        if first_order:
            grads = {n: g.detach() for n, g in grads.items()}
        fast = sgd_step(fast, rule(k, grads))
    if not torch.is_grad_enabled():
        fast = {n: p.detach() for n, p in fast.items()}
    return fast
