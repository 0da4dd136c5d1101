"""TUV layers, tuvify(), the fast/static parameter split and the models."""

from metatuv.nn.bounded import BOUNDS, BoundedTUVConv2d, BoundedTUVLinear, bound_factors
from metatuv.nn.models import conv4, mlp
from metatuv.nn.norm import BatchNorm
from metatuv.nn.params import fast_names, split_params
from metatuv.nn.tuv import TUVConv2d, TUVLayer, TUVLinear, compose, tuvify

__all__ = [
    "BOUNDS",
    "BoundedTUVConv2d",
    "BoundedTUVLinear",
    "bound_factors",
    "BatchNorm",
    "conv4",
    "TUVConv2d",
    "TUVLayer",
    "TUVLinear",
    "compose",
    "fast_names",
    "mlp",
    "split_params",
    "tuvify",
]
