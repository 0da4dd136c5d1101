"""Kronecker factors of the preconditioner implied by W = T·U·V (docs/derivation.md, eq. 3–4; Lee & Choi 2018).

An SGD step of size α on U gives W' = W − α·TTᵀ·G·VᵀV with G = ∂L/∂W, so with column-stacking vec
vec(W' − W) = −α (VᵀV ⊗ TTᵀ) vec(G). For Conv2d the same holds for every kernel tap W[:, :, k, l].
"""

from __future__ import annotations

import torch
from torch import Tensor

from metatuv.nn.tuv import TUVLayer

MAX_DENSE = 4096  # largest mn for which the dense mn×mn matrix is built


def factors(layer: TUVLayer) -> tuple[Tensor, Tensor]:
    """(TTᵀ, VᵀV): the left (m×m) and right (n×n) factors; the identity where T or V is absent."""
    m, n = layer.U.shape[:2]
    factory = {"device": layer.U.device, "dtype": layer.U.dtype}
    left = layer.T @ layer.T.T if layer.T is not None else torch.eye(m, **factory)
    right = layer.V.T @ layer.V if layer.V is not None else torch.eye(n, **factory)
    return left, right


def dense_preconditioner(layer: TUVLayer) -> Tensor:
    """P = VᵀV ⊗ TTᵀ (mn × mn), acting on column-stacked vec(G) of one (m×n) weight slice."""
    m, n = layer.U.shape[:2]
    if m * n > MAX_DENSE:
        raise ValueError(
            f"dense_preconditioner: layer with m×n = {m}×{n} = {m * n} exceeds {MAX_DENSE}; "
            "use factors(layer) (the Kronecker factors) or precondition(layer, G) instead."
        )
    left, right = factors(layer)
    return torch.kron(right, left)


def precondition(layer: TUVLayer, G: Tensor) -> Tensor:
    """TTᵀ·G·VᵀV for a weight-shaped G (m, n) or (m, n, kh, kw), without forming the dense P."""
    left, right = factors(layer)
    if G.dim() == 2:
        return left @ G @ right
    return torch.einsum("oa,abkl,bi->oikl", left, G, right)


def spectra(layer: TUVLayer) -> tuple[Tensor, Tensor]:
    """Eigenvalues (ascending) of TTᵀ and of VᵀV; both are PSD, so P's eigenvalues are their products."""
    left, right = factors(layer)
    return torch.linalg.eigvalsh(left.detach()), torch.linalg.eigvalsh(right.detach())


def mask_fractions(model: torch.nn.Module) -> dict[str, dict[str, float]]:
    """MT-net learned subspace per masked layer: the fraction of output units with P(on) = σ(ζ) > ½ ("hard")
    and the expected fraction E[m] = mean σ(ζ) under the τ = 1 sampling noise ("expected").
    """
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, TUVLayer) and module.mask_logit is not None:
            logit = module.mask_logit.detach()
            out[name] = {"hard": (logit > 0).float().mean().item(), "expected": torch.sigmoid(logit).mean().item()}
    return out
