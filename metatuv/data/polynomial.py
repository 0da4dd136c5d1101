"""Polynomial regression (Lee & Choi 2018): y = Σ_{i≤order} c_i·x^i, c_i ~ U[−1, 1]/2^i, x ~ U[−2, 2]."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from metatuv.data.regression import RegressionTasks
from metatuv.inner.backends import Batch


@dataclass(frozen=True)
class Polynomial(RegressionTasks):
    """K-shot polynomial tasks of a fixed ``order`` (0, 1 or 2 in the paper)."""

    order: int = 1
    shots: int = 10
    queries: int = 10
    x_range: tuple[float, float] = (-2.0, 2.0)

    def __post_init__(self) -> None:
        if self.order < 0 or self.shots < 1 or self.queries < 1:
            raise ValueError(
                f"Polynomial: order={self.order} must be >= 0, shots={self.shots} and queries={self.queries} >= 1."
            )

    def sample(
        self, tasks: int, generator: torch.Generator, device: str | torch.device = "cpu", dtype=torch.float32
    ) -> Batch:
        f = {"device": device, "dtype": dtype}
        scale = 2.0 ** -torch.arange(self.order + 1, **f)  # 1/2^i
        coef = (2 * torch.rand(tasks, 1, self.order + 1, generator=generator, **f) - 1) * scale
        lo, hi = self.x_range
        x = lo + (hi - lo) * torch.rand(tasks, self.shots + self.queries, 1, generator=generator, **f)
        y = (coef * x ** torch.arange(self.order + 1, **f)).sum(-1, keepdim=True)
        return x[:, : self.shots], y[:, : self.shots], x[:, self.shots :], y[:, self.shots :]
