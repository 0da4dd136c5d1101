"""Benchmarks and episode sampling."""

from metatuv.data.episodes import ClassImages, EpisodeSampler
from metatuv.data.fewshot import IMAGE_BENCHMARKS, FewShot, load_splits
from metatuv.data.polynomial import Polynomial
from metatuv.data.sinusoid import Sinusoid
from metatuv.data.stream import Stream
from metatuv.data.taskset import taskset_batches

__all__ = [
    "IMAGE_BENCHMARKS",
    "ClassImages",
    "EpisodeSampler",
    "FewShot",
    "Polynomial",
    "Sinusoid",
    "Stream",
    "load_splits",
    "taskset_batches",
]
