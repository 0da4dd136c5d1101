"""A test-time inner step that never raises the support loss: backtracking on the step length.

θ_{k+1} = θ_k − s_k·Δ_k,  s_k = max{ ρʲ : j = 0 … J−1,  L(θ_k − ρʲ·Δ_k) ≤ L(θ_k) }, and s_k = 0 if no ρʲ qualifies,

where Δ_k is the step rule's step (for TUV: vec ΔW = −α (VᵀV ⊗ TTᵀ) vec G). The direction is the rule's own, only its
length shrinks, so the seed's preconditioner is kept up to a per-step scalar s_k ∈ {1, ρ, …, ρ^{J−1}, 0}; the support
loss is non-increasing in k and stays finite once it starts finite, whatever the task's curvature (a fixed bound on
P cannot see the Hessian of the task: experiments/stability/README.md). Backtracking line search: Armijo (1966);
Nocedal & Wright, Numerical Optimization, §3.1. Every candidate is evaluated and the first acceptable one selected
with tensor ops (no data-dependent branch), so it runs under ``torch.func.vmap`` over tasks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import grad_and_value

from metatuv.inner.sgd import Params, StepRule, sgd_rule

SHRINK = 0.5  # ρ


def step_scale(
    loss_fn: Callable[[Params], Tensor],
    fast: Params,
    delta: Params,
    tries: int,
    shrink: float = SHRINK,
    current: Tensor | None = None,
) -> Tensor:
    """s = the largest ρʲ (j < ``tries``) with a finite L(θ − ρʲ·Δ) ≤ L(θ), else 0; a 0-d tensor (``current``: L(θ)
    when the caller has it already)."""
    if tries < 1 or not 0 < shrink < 1:
        raise ValueError(f"step_scale: tries={tries} must be >= 1 and shrink={shrink} in (0, 1).")
    current = loss_fn(fast) if current is None else current
    scales = [shrink**j for j in range(tries)]
    losses = torch.stack([loss_fn({n: p - s * delta[n] for n, p in fast.items()}) for s in scales])  # (tries,)
    ok = torch.isfinite(losses) & (losses <= current)
    first = ok & (torch.cumsum(ok.to(torch.int64), 0) == 1)  # the first acceptable candidate, if any
    return (first.to(losses.dtype) * torch.tensor(scales, dtype=losses.dtype, device=losses.device)).sum()


def adapt_backtracking(
    loss_fn: Callable[[Params], Tensor],
    fast: Params,
    steps: int,
    lr: float | StepRule,
    tries: int = 8,
    shrink: float = SHRINK,
) -> Params:
    """``steps`` inner steps θ ← θ − s·Δ(∇L(θ)) with s from ``step_scale``; graph-free (evaluation only)."""
    if steps < 0:
        raise ValueError(f"adapt_backtracking: steps={steps} must be >= 0.")
    rule = lr if callable(lr) else sgd_rule(lr)
    grad_fn = grad_and_value(loss_fn)  # L(θ) comes with its gradient: no second forward per step
    with torch.no_grad():
        fast = {n: p.detach() for n, p in fast.items()}
        for k in range(steps):
            grads, current = grad_fn(fast)
            delta = rule(k, grads)
            s = step_scale(loss_fn, fast, delta, tries, shrink, current)
            fast = {n: torch.where(s > 0, p - s * delta[n], p) for n, p in fast.items()}  # s = 0 with a NaN Δ too
    return fast
