"""Outer loop: meta-learner presets, the inner step rule, meta-training, evaluation."""

from metatuv.inner.transforms import mask_noise
from metatuv.meta.evaluation import evaluate, format_score, mean_ci95
from metatuv.meta.learner import MetaLearner, meta_loss, query_losses
from metatuv.meta.loop import NonFiniteLoss, build_optimizer, meta_train
from metatuv.meta.losses import accuracy, cross_entropy, mse
from metatuv.meta.presets import PRESETS, Preset, get_preset
from metatuv.meta.rule import InnerRule, mask_sample

__all__ = [
    "PRESETS",
    "InnerRule",
    "MetaLearner",
    "NonFiniteLoss",
    "Preset",
    "accuracy",
    "build_optimizer",
    "cross_entropy",
    "evaluate",
    "get_preset",
    "mask_noise",
    "mask_sample",
    "format_score",
    "mean_ci95",
    "meta_loss",
    "meta_train",
    "mse",
    "query_losses",
]
