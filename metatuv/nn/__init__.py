"""TUV layers, tuvify(), the fast/static parameter split and the models."""

from metatuv.nn.models import mlp
from metatuv.nn.params import fast_names, split_params
from metatuv.nn.tuv import TUVConv2d, TUVLayer, TUVLinear, compose, tuvify

__all__ = ["TUVConv2d", "TUVLayer", "TUVLinear", "compose", "fast_names", "mlp", "split_params", "tuvify"]
