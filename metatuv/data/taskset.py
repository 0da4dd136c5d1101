"""Feed any learn2learn ``TaskDataset`` (NWays, KShots(shots + queries), LoadData, RemapLabels) to the trainer."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from metatuv.inner.backends import Batch


def taskset_batches(taskset, tasks: int, ways: int, shots: int, queries: int) -> Iterator[Batch]:
    """Endless meta-batches from ``taskset.sample()`` tasks of ``ways·(shots + queries)`` labelled items.

    Each task's items are split per class into the first ``shots`` (support) and the next ``queries`` (query);
    labels must be 0..ways−1 (use learn2learn's RemapLabels). Shapes as the episode sampler's.
    """
    while True:
        parts: list[list[torch.Tensor]] = [[], [], [], []]
        for _ in range(tasks):
            x, y = taskset.sample()
            y = torch.as_tensor(y)
            if sorted(y.unique().tolist()) != list(range(ways)):
                raise ValueError(
                    f"taskset_batches: task labels {sorted(y.unique().tolist())} are not 0..{ways - 1}; "
                    f"add RemapLabels and NWays({ways})."
                )
            xs, ys, xq, yq = [], [], [], []
            for c in range(ways):
                idx = (y == c).nonzero().flatten()
                if len(idx) < shots + queries:
                    raise ValueError(
                        f"taskset_batches: class {c} has {len(idx)} items, fewer than shots + queries = "
                        f"{shots + queries}; use KShots({shots + queries})."
                    )
                xs.append(x[idx[:shots]]), xq.append(x[idx[shots : shots + queries]])
                ys.append(y[idx[:shots]]), yq.append(y[idx[shots : shots + queries]])
            for part, items in zip(parts, (xs, ys, xq, yq), strict=True):
                part.append(torch.cat(items))
        yield tuple(torch.stack(p) for p in parts)
