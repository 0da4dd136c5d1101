"""adapt(): differentiable SGD on the fast parameters."""

from metatuv.inner.sgd import adapt, sgd_step

__all__ = ["adapt", "sgd_step"]
