"""Few-shot classification benchmarks: one episode sampler per split of a ClassImages dataset."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from metatuv.data.episodes import ClassImages, EpisodeSampler
from metatuv.inner.backends import Batch

IMAGE_BENCHMARKS = ("omniglot", "mini-imagenet", "tiered-imagenet", "cifar-fs", "fc100")


def load_splits(
    name: str, data_root: str | Path, protocol: str = "vinyals", image_size: int | None = None, cache_dir=None
) -> dict[str, ClassImages]:
    """Load a benchmark's train/val/test splits from ``data_root`` (the folder holding omniglot/, mini-imagenet/, …)."""
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"data root {root} does not exist; set paths.data_root=... (or METATUV_DATA_ROOT) to the folder that "
            f"holds the {name} data."
        )
    if name == "omniglot":
        from metatuv.data.omniglot import omniglot_splits

        return omniglot_splits(root / "omniglot", protocol, image_size or 28, cache_dir)
    if name == "mini-imagenet":
        from metatuv.data.imagenet_like import mini_imagenet_splits

        return mini_imagenet_splits(root / "mini-imagenet", image_size or 84, cache_dir)
    if name in ("tiered-imagenet", "cifar-fs", "fc100"):
        from metatuv.data.imagenet_like import l2l_splits

        return l2l_splits(name, root, cache_dir)
    raise ValueError(f"unknown image benchmark {name!r}; choose one of {list(IMAGE_BENCHMARKS)}.")


class FewShot:
    """N-way K-shot Q-query episodes for each split; ``rotate_train`` turns training classes by random 90° steps."""

    def __init__(
        self,
        splits: dict[str, ClassImages],
        ways: int,
        shots: int,
        queries: int,
        rotate_train: bool = False,
        device: str | torch.device = "cpu",
    ) -> None:
        self.samplers = {
            split: EpisodeSampler(data.to(device), ways, shots, queries, rotate_train and split == "train", split)
            for split, data in splits.items()
        }

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(next(iter(self.samplers.values())).data.images.shape[1:])

    def batches(self, split: str, tasks: int, seed: int) -> Iterator[Batch]:
        if split not in self.samplers:
            raise ValueError(f"split {split!r} not loaded; available: {sorted(self.samplers)}.")
        return self.samplers[split].batches(tasks, seed)
