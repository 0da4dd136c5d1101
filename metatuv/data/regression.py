"""Shared stream for synthetic regression benchmarks (sinusoid, polynomial)."""

from __future__ import annotations

import torch

from metatuv.data.stream import Stream
from metatuv.inner.backends import Batch


class RegressionTasks:
    """Mixin: ``batches()`` over a subclass's ``sample(tasks, generator, device, dtype)``."""

    def sample(self, tasks: int, generator: torch.Generator, device, dtype) -> Batch:
        raise NotImplementedError

    def batches(self, tasks: int, seed: int, device: str | torch.device = "cpu", dtype=torch.float32) -> Stream:
        """Endless stream of meta-batches, reproducible from ``seed`` (resumable: ``Stream.state_dict``)."""
        return Stream(lambda g: self.sample(tasks, g, device, dtype), seed, device)
