"""Bounded learned metrics (issue 20): T and V built from raw parameters so that, for ANY raw values, the inner
step's preconditioner P = VᵀV ⊗ TTᵀ (vec ΔW = −α P vec G, docs/derivation.md eq. 4 and section 9) has λmax(P) < b,
a per-layer bound.

Three designs (``bound=``); all start at T = V = I (so W = U, as the seed) and all keep W = T·U·V with only U
adapting, so the inner step is still −α (VᵀV ⊗ TTᵀ) vec G, only with constrained factors:

- ``tanh`` (recommended; preset tuv_bounded): a soft clip of each factor's spectral norm,
  T = T̃·c·tanh(‖T̃‖₂/c)/‖T̃‖₂ with c = b_f^½, b_f = b^(1/#factors): every singular value of T̃ is scaled by the same
  factor ≤ 1, so λmax(TTᵀ) = c²·tanh²(‖T̃‖₂/c) < b_f and λmax(P) < b. Far below the bound T ≈ T̃ (the seed's
  dynamics); T̃ starts at atanh(1/c)·c·I so that T = I. Parameters: T_raw, V_raw.
- ``spectral``: T = √ρ·T̃/‖T̃‖₂, V = Ṽ/‖Ṽ‖₂, ρ = b·σ(θ) — unit-spectral-norm factors and one learned scale per
  layer (on T; on V when the layer has no T): λmax(P) = ρ < b. Parameters: T_raw, V_raw, bound_logit θ.
- ``spectrum``: T = Q_T·diag(s_T), V = diag(s_V)·Q_Vᵀ, Q = exp(A − Aᵀ) (orthogonal), s = √b_f·σ(r) with
  b_f = b^(1/#factors): TTᵀ = Q_T diag(s_T²) Q_Tᵀ, every eigenvalue in (0, b_f), so λmax(P) < b.
  Parameters: T_skew, T_logit, V_skew, V_logit.

``tanh`` and ``spectral`` leave P's shape free (any condition number) and bound only its scale; ``spectrum`` bounds
every eigenvalue of each factor separately. The spectral norm is exact (singular values), not a power-iteration
estimate, so the bound holds at every step, not only after the estimate has converged.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from metatuv.nn.tuv import TUVConv2d, TUVLayer, TUVLinear

__all__ = ["BOUNDS", "BoundedFactors", "BoundedTUVConv2d", "BoundedTUVLinear", "bound_factors"]

BOUNDS = ("none", "tanh", "spectral", "spectrum")


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


class BoundedFactors:
    """Mixin for TUV layers whose ``T`` and ``V`` are computed from raw parameters with λmax(VᵀV ⊗ TTᵀ) < b."""

    bound: str
    max_eig: float
    sides: tuple[str, ...]

    @property
    def T(self) -> Tensor | None:  # type: ignore[override]
        return self._factor("T")

    @T.setter
    def T(self, value) -> None:
        if value is not None:
            raise AttributeError(
                "a bounded TUV layer's T is computed from T_raw (bound_logit) / T_skew, T_logit; set those."
            )

    @property
    def V(self) -> Tensor | None:  # type: ignore[override]
        return self._factor("V")

    @V.setter
    def V(self, value) -> None:
        if value is not None:
            raise AttributeError(
                "a bounded TUV layer's V is computed from V_raw (bound_logit) / V_skew, V_logit; set those."
            )

    def _factor(self, side: str) -> Tensor | None:
        if side not in self.__dict__.get("sides", ()):
            return None
        if self.bound == "tanh":
            raw = getattr(self, f"{side}_raw")
            c = math.sqrt(self.max_eig ** (1 / len(self.sides)))
            norm = torch.linalg.matrix_norm(raw, ord=2)
            return raw * (c * torch.tanh(norm / c) / norm)
        if self.bound == "spectral":
            raw = getattr(self, f"{side}_raw")
            f = raw / torch.linalg.matrix_norm(raw, ord=2)
            if side == self.sides[0]:  # the layer's one learned scale: λmax(FFᵀ) = ρ = b·σ(θ)
                f = f * torch.sqrt(self.max_eig * torch.sigmoid(self.bound_logit))
            return f
        skew = getattr(self, f"{side}_skew")
        Q = torch.linalg.matrix_exp(skew - skew.mT)
        s = math.sqrt(self.max_eig ** (1 / len(self.sides))) * torch.sigmoid(getattr(self, f"{side}_logit"))
        return Q * s if side == "T" else s[:, None] * Q.mT  # T = Q·diag(s), V = diag(s)·Qᵀ

    def _init_bound(self, bound: str, max_eig: float, sides: tuple[str, ...]) -> None:
        if bound not in BOUNDS[1:]:
            raise ValueError(f"bound={bound!r}; choose one of {list(BOUNDS)} (model.bound=...).")
        if not max_eig > 1:
            raise ValueError(
                f"bound max_eig={max_eig} must be > 1 (T = V = I at the start has λmax(P) = 1); raise model.max_step "
                "or lower inner.lr (max_eig = model.max_step / inner.lr)."
            )
        self.bound, self.max_eig, self.sides = bound, float(max_eig), sides
        U = self.U
        f = {"device": U.device, "dtype": U.dtype}
        dims = {"T": U.shape[0], "V": U.shape[1]}
        for side in sides:
            d = dims[side]
            if bound == "tanh":
                c = math.sqrt(self.max_eig ** (1 / len(sides)))
                setattr(self, f"{side}_raw", nn.Parameter(c * math.atanh(1 / c) * torch.eye(d, **f)))
            elif bound == "spectral":
                setattr(self, f"{side}_raw", nn.Parameter(torch.eye(d, **f)))
            else:
                setattr(self, f"{side}_skew", nn.Parameter(torch.zeros(d, d, **f)))
                s0 = _logit(self.max_eig ** (-0.5 / len(sides)))  # s = 1 at the start
                setattr(self, f"{side}_logit", nn.Parameter(torch.full((d,), s0, **f)))
        if bound == "spectral":
            self.bound_logit = nn.Parameter(torch.full((), _logit(1 / self.max_eig), **f))  # ρ = 1 at the start

    def extra_repr(self) -> str:
        return super().extra_repr() + f", bound={self.bound}, max_eig={self.max_eig:g}"  # type: ignore[misc]


class BoundedTUVLinear(BoundedFactors, TUVLinear):
    """TUVLinear with bounded factors (see the module docstring); build it with ``bound_factors``."""


class BoundedTUVConv2d(BoundedFactors, TUVConv2d):
    """TUVConv2d with bounded factors (see the module docstring); build it with ``bound_factors``."""


_BOUNDED = {TUVLinear: BoundedTUVLinear, TUVConv2d: BoundedTUVConv2d}


def _is_identity(f: Tensor | None) -> bool:
    return f is None or torch.equal(f.detach(), torch.eye(f.shape[0], dtype=f.dtype, device=f.device))


def _convert(layer: TUVLayer, bound: str, max_eig: float) -> TUVLayer:
    if not (_is_identity(layer.T) and _is_identity(layer.V)):
        raise ValueError("bound_factors: a layer's T or V is not the identity; bound a freshly tuvified model.")
    sides = tuple(s for s in ("T", "V") if getattr(layer, s) is not None)
    new = copy.deepcopy(layer)  # U, bias, mask logits and the layer's settings, as they are
    for side in ("T", "V"):
        new._parameters.pop(side, None)
        new.__dict__.pop(side, None)
    new.__class__ = _BOUNDED[type(layer)]
    new._init_bound(bound, max_eig, sides)
    return new


def bound_factors(model: nn.Module, bound: str, max_eig: float) -> nn.Module:
    """Replace every TUV layer of ``model`` that has a T or a V by a bounded copy: λmax(VᵀV ⊗ TTᵀ) < ``max_eig``.

    Unlike ``tuvify`` this makes new layer objects: a deep copy of each layer (U, bias and MT-net mask logits keep
    their values but are new Parameters) whose T and V are rebuilt from raw parameters, starting at T = V = I; the
    copies are set into their parents in place, and a layer registered under several names (tied) becomes one
    bounded layer under all of them. The layers must be fresh (T = V = I). Returns ``model``, or the new bounded
    layer when ``model`` is itself such a layer (the argument is then left as it was); ``bound="none"`` returns
    ``model`` unchanged.
    """
    if bound not in BOUNDS:
        raise ValueError(f"bound={bound!r}; choose one of {list(BOUNDS)} (model.bound=...).")
    if bound == "none":
        return model
    return _bound_all(model, bound, max_eig, {})


def _needs_bound(m: nn.Module) -> bool:
    if not isinstance(m, TUVLayer) or isinstance(m, BoundedFactors) or (m.T is None and m.V is None):
        return False
    if type(m) not in _BOUNDED:  # never leave a learned T or V unbounded without a word
        raise ValueError(
            f"bound_factors: {type(m).__name__} layers cannot be bounded yet (only {[c.__name__ for c in _BOUNDED]}); "
            "use model.bound=none for this model."
        )
    return True


def _bound_all(model: nn.Module, bound: str, max_eig: float, done: dict[int, nn.Module]) -> nn.Module:
    if _needs_bound(model):
        if id(model) not in done:
            done[id(model)] = _convert(model, bound, max_eig)  # type: ignore[arg-type]
        return done[id(model)]
    for name, child in list(model._modules.items()):  # every name, aliases included (named_children skips them)
        if child is not None:
            new = _bound_all(child, bound, max_eig, done)
            if new is not child:
                setattr(model, name, new)
    return model
