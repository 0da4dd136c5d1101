"""Batch norm written from primitive ops, exact under torch.func.vmap at every derivative order.

torch's fused batch_norm gives silently wrong second-order gradients under vmap (pytorch/functorch#534),
so the models use this instead: y = (x − μ_B) / √(σ²_B + ε) · γ + β with transductive batch statistics
(μ_B, σ²_B over the task's own samples and positions, as MAML does; Finn et al. 2017). There are no running
statistics: train and test both normalize with the current task's batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class BatchNorm(nn.Module):
    """Transductive batch norm over dim 0 (and the spatial dims of 4-D inputs); γ, β adapt like weights."""

    def __init__(self, num_features: int, eps: float = 1e-5, device=None, dtype=None) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.weight = nn.Parameter(torch.ones(num_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() not in (2, 4) or x.shape[1] != self.num_features:
            raise ValueError(
                f"BatchNorm({self.num_features}): got input of shape {tuple(x.shape)}; expected (N, "
                f"{self.num_features}) or (N, {self.num_features}, H, W)."
            )
        dims = (0,) if x.dim() == 2 else (0, 2, 3)
        shape = (1, -1) if x.dim() == 2 else (1, -1, 1, 1)
        mean = x.mean(dim=dims, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)  # biased, as in training-mode batch norm
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight.view(shape) + self.bias.view(shape)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, transductive"
