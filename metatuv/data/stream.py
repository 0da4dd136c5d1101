"""A resumable, endless stream of meta-batches drawn from one seeded ``torch.Generator``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from metatuv.inner.backends import Batch


class Stream(Iterator[Batch]):
    """``next(stream) = sample(generator)``; ``state_dict()`` holds the generator state, so a checkpointed run
    continues with exactly the meta-batches an uninterrupted one would have drawn."""

    def __init__(self, sample: Callable[[torch.Generator], Batch], seed: int, device: str | torch.device = "cpu"):
        self.sample = sample
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Batch:
        return self.sample(self.generator)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
