"""Step rules as small gradient transforms, composed like optax's: Δ_k = (t_n ∘ … ∘ t_1)(g_k), θ' = θ − Δ_k.

Each transform has ``init(params, extra) -> state``, run once per task before the inner steps, and
``update(k, grads, state, params) -> grads'`` at inner step k; ``chain(t_1, …, t_n)`` is again a transform.
``params`` holds the meta-parameters the rule reads, by the names the transform was built with (mask logits,
curvature factors, learned rates): the rule is a pure function of them, so autograd, vmap and torch.compile see
them as inputs. ``extra`` is the task's own randomness (the MT-net mask noise, by mask-logit name), as optax
keeps a transform's randomness in its state. The transforms and their papers: metatuv/meta/rule.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from metatuv.inner.sgd import Params


class Transform(NamedTuple):
    """``init(params, extra) -> state`` once per task; ``update(k, grads, state, params) -> grads'`` per step."""

    init: Callable[[Params, Params], Any]
    update: Callable[[int, Params, Any, Params], Params]


def _no_state(params: Params, extra: Params) -> None:
    return None


def chain(*transforms: Transform) -> Transform:
    """t_n ∘ … ∘ t_1: each transform's update takes the previous one's output; the state is the tuple of states."""

    def init(params: Params, extra: Params) -> tuple:
        return tuple(t.init(params, extra) for t in transforms)

    def update(k: int, grads: Params, state: tuple, params: Params) -> Params:
        for t, s in zip(transforms, state, strict=True):
            grads = t.update(k, grads, s, params)
        return grads

    return Transform(init, update)


def logistic_noise(units: dict[str, int], tasks: int, generator: torch.Generator | None, like: Tensor) -> Params:
    """ℓ ~ Logistic(0, 1) per task and unit, {name: (tasks, units)}: the MT-net mask's noise (see ``mask_sample``)."""
    noise = {}
    for name, n in units.items():
        u = torch.rand(tasks, n, generator=generator, device=like.device, dtype=like.dtype).clamp(1e-6, 1 - 1e-6)
        noise[name] = torch.log(u) - torch.log1p(-u)
    return noise


def mask_noise(model: torch.nn.Module, tasks: int, generator: torch.Generator | None = None) -> Params:
    """``logistic_noise`` for every MT-net mask logit of ``model``, named as in ``model.named_parameters()``."""
    logits = {n: p for n, p in model.named_parameters() if n.endswith("mask_logit")}
    like = next(iter(logits.values()), None)
    return {} if like is None else logistic_noise({n: p.numel() for n, p in logits.items()}, tasks, generator, like)


def mask_sample(logit: Tensor, noise: Tensor, temperature: float) -> Tensor:
    """Hard straight-through sample of a two-class Gumbel-softmax: forward 1[σ((ζ + ℓ)/τ) > ½], backward σ'."""
    soft = torch.sigmoid((logit + noise) / temperature)
    hard = (soft > 0.5).to(soft.dtype)
    return hard - soft.detach() + soft


def mask(gates: dict[str, tuple[str, list[str]]], temperature: float = 1.0) -> Transform:
    """MT-net mask: g ↦ m ⊙ g along the rows (output units) of each gated gradient.

    ``gates``: params key of a mask logit ζ → (its ``extra`` key ℓ, the gradients it gates). The state is the
    task's hard masks m = mask_sample(ζ, ℓ, τ), one per logit, drawn once and used at every step.
    """
    gated = {n: logit for logit, (_, names) in gates.items() for n in names}

    def init(params: Params, extra: Params) -> dict[str, Tensor]:
        return {logit: mask_sample(params[logit], extra[noise], temperature) for logit, (noise, _) in gates.items()}

    def update(k: int, grads: Params, state: dict[str, Tensor], params: Params) -> Params:
        out = {}
        for n, g in grads.items():
            if n in gated:
                g = state[gated[n]].view(-1, *([1] * (g.dim() - 1))) * g
            out[n] = g
        return out

    return Transform(init, update)


def curvature(factors: dict[str, tuple[str, ...]]) -> Transform:
    """Meta-Curvature: G ↦ M_o·G·M_i, and for a conv G (o, i, kh, kw) then ×₃ M_f over the kernel taps.

    ``factors``: gradient name → params keys (M_o, M_i) or (M_o, M_i, M_f); other gradients pass unchanged.
    """

    def update(k: int, grads: Params, state: None, params: Params) -> Params:
        out = {}
        for n, g in grads.items():
            if n in factors:
                Mo, Mi = params[factors[n][0]], params[factors[n][1]]
                if g.dim() == 2:
                    g = Mo @ g @ Mi
                else:
                    g = torch.einsum("oa,abkl,bi->oikl", Mo, g, Mi)
                    g = (g.flatten(2) @ params[factors[n][2]].T).view_as(g)
            out[n] = g
        return out

    return Transform(_no_state, update)


def kfo(factors: dict[str, tuple[str, str]]) -> Transform:
    """MetaKFO's positive semi-definite Kronecker transform: G ↦ (AᵀA)·G·(BᵀB); a conv G (o, i, kh, kw) as o
    matrices (i, kh·kw). ``factors``: gradient name → params keys (A, B); other gradients pass unchanged."""

    def update(k: int, grads: Params, state: None, params: Params) -> Params:
        out = {}
        for n, g in grads.items():
            if n in factors:
                A, B = params[factors[n][0]], params[factors[n][1]]
                L, R = A.T @ A, B.T @ B
                g = L @ g @ R if g.dim() == 2 else (L @ g.flatten(2) @ R).view_as(g)
            out[n] = g
        return out

    return Transform(_no_state, update)


RATES = ("fixed", "metasgd", "lslr")


def rate(mode: str, lr: float, keys: dict[str, str] | None = None) -> Transform:
    """g ↦ α·g. ``fixed``: α = lr; ``metasgd``: α = params[keys[n]], one rate per entry (elementwise);
    ``lslr``: α = params[keys[n]][min(k, K − 1)], one rate per tensor and step (steps beyond the K trained ones
    reuse the last trained rate)."""
    if mode not in RATES:
        raise ValueError(f"unknown lr_mode={mode!r}; choose one of {list(RATES)}.")
    if mode != "fixed" and keys is None:
        raise ValueError(f"rate({mode!r}) needs the params key of every gradient's rate (keys=...).")

    def update(k: int, grads: Params, state: None, params: Params) -> Params:
        if mode == "fixed":
            return {n: lr * g for n, g in grads.items()}
        out = {}
        for n, g in grads.items():
            r = params[keys[n]]
            out[n] = (r if mode == "metasgd" else r[min(k, r.numel() - 1)]) * g
        return out

    return Transform(_no_state, update)
