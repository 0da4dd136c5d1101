"""The benchmark's workloads: the network, the episode shapes and the inner loop of each row, and a random batch.

Inputs are random tensors of the workload's shapes (no dataset needed): timing does not depend on the pixels.
Part of the harness run by bench.py (workloads, contenders, measure, report).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from metatuv.meta import cross_entropy, get_preset, mse
from metatuv.nn import TUVLayer, conv4, mlp

Batch = tuple[Tensor, Tensor, Tensor, Tensor]  # x_support (t, S, ...), y_support, x_query (t, Q, ...), y_query


@dataclass
class Workload:
    """One row of the issue: the network, the episode shapes, the inner loop and the presets to time."""

    name: str
    presets: tuple[str, ...]
    tasks: int  # meta-batch
    steps: int  # inner steps
    lr: float  # inner α
    shots: int
    queries: int
    ways: int = 1  # classes (1 for regression)
    in_channels: int = 0  # 0: sinusoid MLP
    hidden: int = 64
    image_size: int = 28
    pool: str = "stride"

    @property
    def classification(self) -> bool:
        return self.in_channels > 0

    def describe(self) -> str:
        if not self.classification:
            return (
                f"MLP 1-40-40-1, {self.shots} shots / {self.queries} queries, meta-batch {self.tasks}, "
                f"{self.steps} inner step(s), α={self.lr}"
            )
        return (
            f"conv4-{self.hidden} ({self.image_size}×{self.image_size}×{self.in_channels}, {self.pool} pooling, "
            f"primitive batch norm), {self.ways}-way {self.shots}-shot, {self.queries} queries/class, "
            f"meta-batch {self.tasks}, {self.steps} inner step(s), α={self.lr}"
        )


WORKLOADS = {
    w.name: w
    for w in (
        Workload(
            "omniglot-5w1s", ("tuv", "maml"), tasks=32, steps=1, lr=0.4, shots=1, queries=15, ways=5, in_channels=1
        ),
        Workload("omniglot-20w1s", ("tuv",), tasks=16, steps=5, lr=0.1, shots=1, queries=15, ways=20, in_channels=1),
        Workload(
            "miniimagenet-5w1s",
            ("tuv",),
            tasks=4,
            steps=5,
            lr=0.01,
            shots=1,
            queries=15,
            ways=5,
            in_channels=3,
            hidden=32,
            image_size=84,
            pool="max",
        ),
        Workload("sinusoid", ("maml", "tuv"), tasks=4, steps=1, lr=0.01, shots=10, queries=10),
    )
}


def variant(wl: Workload, smoke: bool, omniglot_pool: str) -> Workload:
    """The workload as run: ``--smoke`` shrinks it to plumbing size (2 tasks, 1 query/class, 8 channels, 28×28);
    a 28×28 image workload takes ``--omniglot-pool`` (max: peerbench's net)."""
    if smoke:
        wl = Workload(**{**asdict(wl), "tasks": 2, "queries": 1, "hidden": 8, "image_size": 28})
    if wl.classification and wl.image_size == 28:
        wl = Workload(**{**asdict(wl), "pool": omniglot_pool})
    return wl


def loss_fn(wl: Workload):
    """The workload's loss: cross-entropy (classification) or MSE (regression)."""
    return cross_entropy if wl.classification else mse


def build_model(wl: Workload, preset: str, device: str, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    """The preset's metatuv network; T and V moved off the identity (seeded) so the check exercises them."""
    p = get_preset(preset)
    torch.manual_seed(seed)
    if wl.classification:
        model = conv4(wl.ways, wl.in_channels, wl.hidden, wl.image_size, wl.pool, p.use_T, p.use_V, p.use_mask)
    else:
        model = mlp([1, 40, 40, 1], p.use_T, p.use_V, p.use_mask)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, TUVLayer):
                for f in (m.T, m.V):
                    if f is not None:  # I + 0.05·N(0, 1/m): well conditioned, not the identity
                        f.add_(0.05 * torch.randn_like(f) / math.sqrt(f.shape[0]))
    return model.to(device=device, dtype=dtype)


def make_batch(wl: Workload, device: str, seed: int = 0) -> Batch:
    """Random inputs of the workload's shapes; labels 0..ways−1 in order (classification) or targets (regression)."""
    g = torch.Generator().manual_seed(seed)
    t, n_s, n_q = wl.tasks, wl.ways * wl.shots, wl.ways * wl.queries
    if not wl.classification:
        xs, xq = (10 * torch.rand(t, n, 1, generator=g) - 5 for n in (n_s, n_q))  # x ~ U[-5, 5]
        ys, yq = (torch.randn(t, n, 1, generator=g) for n in (n_s, n_q))
    else:
        c, hw = wl.in_channels, wl.image_size
        xs, xq = (torch.randn(t, n, c, hw, hw, generator=g) for n in (n_s, n_q))
        ys, yq = (torch.arange(wl.ways).repeat_interleave(k).expand(t, -1).contiguous() for k in (wl.shots, wl.queries))
    return tuple(b.to(device) for b in (xs, ys, xq, yq))  # type: ignore[return-value]


def cast_batch(batch: Batch, dtype: torch.dtype) -> Batch:
    return tuple(b.to(dtype) if b.is_floating_point() else b for b in batch)  # type: ignore[return-value]
