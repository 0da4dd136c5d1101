"""The preconditioner implied by a TUV layer: vec(ΔW) = −α (VᵀV ⊗ TTᵀ) vec(∂L/∂W) (seed, Eq. 2)."""

from metatuv.metric.factors import dense_preconditioner, factors, mask_fractions, precondition, spectra

__all__ = ["dense_preconditioner", "factors", "mask_fractions", "precondition", "spectra"]
