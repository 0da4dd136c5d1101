"""Outer loop: meta-learner presets, meta-training, evaluation."""

from metatuv.meta.learner import Batch, MetaLearner, accuracy, evaluate, mean_ci95, meta_train, mse
from metatuv.meta.presets import PRESETS, Preset, get_preset

__all__ = [
    "PRESETS",
    "Batch",
    "MetaLearner",
    "Preset",
    "accuracy",
    "evaluate",
    "get_preset",
    "mean_ci95",
    "meta_train",
    "mse",
]
