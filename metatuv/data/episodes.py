"""Few-shot episodes by index arithmetic on one in-memory image tensor (on the training device).

``ClassImages`` holds every image of a split as uint8 (N, C, H, W), grouped by class (contiguous rows;
``offsets[c]``, ``counts[c]``). ``EpisodeSampler`` draws N-way K-shot Q-query meta-batches from a seeded
``torch.Generator``: classes without replacement per task, then K + Q images without replacement per class,
as one gather. Support/query tensors come out shaped (tasks, N·K, C, H, W) / (tasks, N·Q, C, H, W), labels
0..N−1 (class-major order).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from metatuv.data.stream import Stream
from metatuv.inner.backends import Batch


@dataclass
class ClassImages:
    """A split's images grouped by class: ``images`` uint8 (N, C, H, W), class c = rows offsets[c] : +counts[c]."""

    images: Tensor
    counts: Tensor  # (classes,) int64
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"ClassImages: images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}."
            )
        if int(self.counts.sum()) != len(self.images):
            raise ValueError(
                f"ClassImages: counts sum to {int(self.counts.sum())} but there are {len(self.images)} images."
            )
        self.offsets = torch.cumsum(self.counts, 0) - self.counts

    @classmethod
    def from_grouped(cls, per_class: Tensor, names: list[str] | None = None) -> ClassImages:
        """From a (classes, per_class, C, H, W) uint8 tensor (every class the same size)."""
        k, n = per_class.shape[:2]
        return cls(per_class.reshape(k * n, *per_class.shape[2:]), torch.full((k,), n, dtype=torch.long), names or [])

    @property
    def num_classes(self) -> int:
        return len(self.counts)

    def to(self, device: str | torch.device) -> ClassImages:
        return ClassImages(self.images.to(device), self.counts.to(device), self.names)


class EpisodeSampler:
    """Seeded N-way K-shot Q-query meta-batches from ``data``; ``rotate`` adds a random 0/90/180/270° turn per
    class and episode (the MAML Omniglot augmentation, Finn et al. 2017). Images are scaled to [0, 1].
    """

    def __init__(
        self,
        data: ClassImages,
        ways: int,
        shots: int,
        queries: int,
        rotate: bool = False,
        split: str = "split",
    ) -> None:
        if ways < 2 or shots < 1 or queries < 1:
            raise ValueError(f"episodes: ways={ways} must be >= 2, shots={shots} and queries={queries} >= 1.")
        if ways > data.num_classes:
            raise ValueError(
                f"episodes: ways={ways} exceeds the {data.num_classes} classes of the {split} split; "
                f"use ways <= {data.num_classes}."
            )
        smallest = int(data.counts.min())
        if shots + queries > smallest:
            raise ValueError(
                f"episodes: shots + queries = {shots} + {queries} = {shots + queries} exceeds the {smallest} images "
                f"of the smallest class in the {split} split; lower shots or queries."
            )
        self.data, self.ways, self.shots, self.queries, self.rotate = data, ways, shots, queries, rotate
        self._max = int(data.counts.max())

    @property
    def device(self) -> torch.device:
        return self.data.images.device

    def sample(self, tasks: int, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> Batch:
        d, dev = self.data, self.device
        n, k, q = self.ways, self.shots, self.queries
        classes = torch.rand(tasks, d.num_classes, generator=generator, device=dev).argsort(1)[:, :n]  # (tasks, n)
        counts = d.counts[classes]  # (tasks, n)
        r = torch.rand(tasks, n, self._max, generator=generator, device=dev)
        r = r.masked_fill(torch.arange(self._max, device=dev) >= counts[..., None], 2.0)  # never pick padding
        pick = r.argsort(-1)[..., : k + q]  # (tasks, n, k+q) image index within its class
        rows = d.offsets[classes][..., None] + pick
        x = d.images[rows].to(dtype) / 255.0  # (tasks, n, k+q, C, H, W)
        if self.rotate:
            turns = torch.randint(0, 4, (tasks, n), generator=generator, device=dev)
            rotated = torch.stack([torch.rot90(x, t, dims=(-2, -1)) for t in range(4)])  # (4, tasks, n, ...)
            x = rotated.gather(0, turns.view(1, tasks, n, 1, 1, 1, 1).expand(1, *x.shape)).squeeze(0)
        labels = torch.arange(n, device=dev).view(1, n, 1)
        shape = x.shape[3:]
        xs, xq = x[:, :, :k].reshape(tasks, n * k, *shape), x[:, :, k:].reshape(tasks, n * q, *shape)
        ys = labels.expand(tasks, n, k).reshape(tasks, n * k)
        yq = labels.expand(tasks, n, q).reshape(tasks, n * q)
        return xs, ys, xq, yq

    def batches(self, tasks: int, seed: int, dtype: torch.dtype = torch.float32) -> Stream:
        """Endless stream of meta-batches, reproducible from ``seed`` (resumable: ``Stream.state_dict``)."""
        return Stream(lambda g: self.sample(tasks, g, dtype), seed, self.device)
