"""The task stream seen by the outer loop: the next meta-batch, and a meta-batch cut into chunks of tasks."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils._pytree import tree_map

from metatuv.inner import Params
from metatuv.inner.backends import Batch

INNER_SEED_OFFSET = 0x5EED  # the inner loop's randomness (MT-net masks) never shares a seed with the task stream


def next_batch(batches: Iterator[Batch], done: int) -> Batch:
    """``next(batches)``, or one clear error naming how many meta-batches the stream gave."""
    try:
        return next(batches)
    except StopIteration:
        raise ValueError(
            f"the task stream ended after {done} meta-batches; pass an endless iterator (e.g. .batches())."
        ) from None


def chunks(batch: Batch, extras: Params, size: int, first: int = 0, last: int | None = None) -> Iterator[tuple]:
    """(batch, extras) of tasks [start, start + size) for start = first, first + size, … < last (default: all)."""
    last = len(batch[0]) if last is None else last
    for start in range(first, last, size):
        part = slice(start, min(start + size, last))
        yield tuple(b[part] for b in batch), tree_map(lambda t, part=part: t[part], extras)
