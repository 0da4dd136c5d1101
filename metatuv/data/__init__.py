"""Benchmarks and episode sampling."""

from metatuv.data.episodes import ClassImages, EpisodeSampler
from metatuv.data.fewshot import IMAGE_BENCHMARKS, FewShot, image_shape, load_splits, preprocessor
from metatuv.data.folders import FolderEpisode, read_episodes
from metatuv.data.polynomial import Polynomial
from metatuv.data.sinusoid import Sinusoid
from metatuv.data.stream import Stream
from metatuv.data.taskset import taskset_batches

__all__ = [
    "IMAGE_BENCHMARKS",
    "ClassImages",
    "EpisodeSampler",
    "FewShot",
    "FolderEpisode",
    "Polynomial",
    "Sinusoid",
    "Stream",
    "image_shape",
    "load_splits",
    "preprocessor",
    "read_episodes",
    "taskset_batches",
]
