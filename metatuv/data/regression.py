"""Shared stream for synthetic regression benchmarks (sinusoid, polynomial)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from metatuv.inner.backends import Batch


class RegressionTasks:
    """Mixin: ``batches()`` over a subclass's ``sample(tasks, generator, device, dtype)``."""

    def sample(self, tasks: int, generator: torch.Generator, device, dtype) -> Batch:
        raise NotImplementedError

    def batches(
        self, tasks: int, seed: int, device: str | torch.device = "cpu", dtype=torch.float32
    ) -> Iterator[Batch]:
        """Endless stream of meta-batches, reproducible from ``seed``."""
        generator = torch.Generator(device=device).manual_seed(seed)
        while True:
            yield self.sample(tasks, generator, device, dtype)
