"""Scalar summaries of what T and V learned, per TUV layer (for loggers; never on the inner-loop hot path).

For the left factor TTᵀ (m×m) and the right factor VᵀV (n×n) of W = T·U·V (Lee & Choi 2018):
condition number λmax/λmin, log-determinant Σ log λ, distance from the identity ‖F − I‖_F/√dim, and the
effective largest step α·λmax(TTᵀ)·λmax(VᵀV) — the largest eigenvalue of α·(VᵀV ⊗ TTᵀ) (docs/derivation.md, eq. 4).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from metatuv.metric.factors import factors, mask_fractions
from metatuv.nn.tuv import TUVLayer


def tuv_layers(model: nn.Module) -> dict[str, TUVLayer]:
    """The TUV layers that have a T or a V (the ones with a non-trivial metric)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, TUVLayer) and (m.T is not None or m.V is not None)}


@torch.no_grad()
def factor_spectra(model: nn.Module) -> dict[str, dict[str, Tensor]]:
    """{layer: {"TT": eigenvalues of TTᵀ, "VV": eigenvalues of VᵀV}} (ascending, float64, on the CPU)."""
    out = {}
    for name, layer in tuv_layers(model).items():
        left, right = factors(layer)
        out[name] = {
            "TT": torch.linalg.eigvalsh(left.double()).cpu(),
            "VV": torch.linalg.eigvalsh(right.double()).cpu(),
        }
    return out


def _factor_stats(evals: Tensor) -> dict[str, float]:
    lo, hi = evals.min().item(), evals.max().item()
    return {
        "cond": hi / lo if lo > 0 else math.inf,
        "logdet": evals.clamp_min(1e-300).log().sum().item(),
        # ‖F − I‖_F/√dim from the spectrum (F is symmetric): √(mean (λ − 1)²)
        "dist_identity": (evals - 1).pow(2).mean().sqrt().item(),
        "eig_max": hi,
        "eig_min": lo,
    }


def learned_metrics(model: nn.Module, lr: float, spectra: dict[str, dict[str, Tensor]] | None = None) -> dict:
    """Flat {key: float}: per layer ``metric/<layer>/<TT|VV>/<stat>``, ``metric/<layer>/max_step`` (α·λmax·λmax),
    and for MT-net layers ``mask/<layer>/hard`` and ``mask/<layer>/expected`` (on-fractions)."""
    spectra = factor_spectra(model) if spectra is None else spectra
    out: dict[str, float] = {}
    for name, s in spectra.items():
        label = name or "layer"
        for side in ("TT", "VV"):
            for stat, value in _factor_stats(s[side]).items():
                out[f"metric/{label}/{side}/{stat}"] = value
        out[f"metric/{label}/max_step"] = lr * s["TT"].max().item() * s["VV"].max().item()
    for name, fractions in mask_fractions(model).items():
        for kind, value in fractions.items():
            out[f"mask/{name or 'layer'}/{kind}"] = value
    return out
