"""TUV layers, tuvify(), the fast/static parameter split and the models."""

from metatuv.nn.bounded import BOUNDS, BoundedTUVConv2d, BoundedTUVLinear, bound_factors
from metatuv.nn.models import conv4, mlp
from metatuv.nn.norm import BatchNorm
from metatuv.nn.params import fast_names, fast_parameters, split_params
from metatuv.nn.tuv import TUVConv1d, TUVConv2d, TUVConv3d, TUVLayer, TUVLinear, compose, tuvify

__all__ = [
    "BOUNDS",
    "BoundedTUVConv2d",
    "BoundedTUVLinear",
    "bound_factors",
    "BatchNorm",
    "conv4",
    "TUVConv1d",
    "TUVConv2d",
    "TUVConv3d",
    "TUVLayer",
    "TUVLinear",
    "compose",
    "fast_names",
    "fast_parameters",
    "mlp",
    "split_params",
    "tuvify",
]
