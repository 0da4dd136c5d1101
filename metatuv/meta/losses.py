"""Task losses and scores: mean squared error, cross-entropy, accuracy."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

LossFn = Callable[[Tensor, Tensor], Tensor]


def mse(pred: Tensor, y: Tensor) -> Tensor:
    """mean((ŷ − y)²)."""
    return torch.mean((pred - y) ** 2)


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """mean(−log softmax(z)_y)."""
    return nn.functional.cross_entropy(logits, y)


def accuracy(logits: Tensor, y: Tensor) -> Tensor:
    """mean(1[argmax z = y])."""
    return (logits.argmax(-1) == y).to(logits.dtype).mean()
