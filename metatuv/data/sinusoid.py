"""Sinusoid regression (Finn et al. 2017): y = A·sin(x − φ), A ~ U[0.1, 5], φ ~ U[0, π], x ~ U[−5, 5]."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from metatuv.data.regression import RegressionTasks
from metatuv.inner.backends import Batch


@dataclass(frozen=True)
class Sinusoid(RegressionTasks):
    """K-shot sinusoid tasks: ``shots`` support and ``queries`` query points per task."""

    shots: int = 10
    queries: int = 10
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)

    def __post_init__(self) -> None:
        if self.shots < 1 or self.queries < 1:
            raise ValueError(f"Sinusoid: shots={self.shots} and queries={self.queries} must both be >= 1.")

    def sample(
        self, tasks: int, generator: torch.Generator, device: str | torch.device = "cpu", dtype=torch.float32
    ) -> Batch:
        """One meta-batch: x, y of shape (tasks, shots, 1) for support and (tasks, queries, 1) for query."""
        f = {"device": device, "dtype": dtype}

        def u(lo_hi: tuple[float, float], *shape: int) -> torch.Tensor:  # U[lo, hi] samples
            return lo_hi[0] + (lo_hi[1] - lo_hi[0]) * torch.rand(*shape, generator=generator, **f)

        amp, phase = u(self.amplitude, tasks, 1, 1), u(self.phase, tasks, 1, 1)
        x = u(self.x_range, tasks, self.shots + self.queries, 1)
        y = amp * torch.sin(x - phase)
        return x[:, : self.shots], y[:, : self.shots], x[:, self.shots :], y[:, self.shots :]
