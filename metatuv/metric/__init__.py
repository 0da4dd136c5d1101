"""The preconditioner implied by a TUV layer: vec(ΔW) = −α (VᵀV ⊗ TTᵀ) vec(∂L/∂W) (docs/derivation.md, eq. 4),
and T, V estimated from training statistics (Natural Neural Networks / K-FAC)."""

from metatuv.metric.factors import dense_preconditioner, factors, mask_fractions, precondition, spectra
from metatuv.metric.statistics import MODES, StatisticsTracker, reestimate, set_from_statistics

__all__ = [
    "MODES",
    "StatisticsTracker",
    "dense_preconditioner",
    "factors",
    "mask_fractions",
    "precondition",
    "reestimate",
    "set_from_statistics",
    "spectra",
]
