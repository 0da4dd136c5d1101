"""Models of the papers, built with TUV layers through ``tuvify``."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from metatuv.nn.tuv import tuvify


def mlp(sizes: Sequence[int] = (1, 40, 40, 1), use_T: bool = True, use_V: bool = True) -> nn.Sequential:
    """MLP with ReLU between TUV linear layers; sinusoid regression uses 1-40-40-1 (Finn et al. 2017)."""
    if len(sizes) < 2:
        raise ValueError(f"mlp: sizes={list(sizes)} needs at least input and output sizes, e.g. [1, 40, 40, 1].")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return tuvify(nn.Sequential(*layers), use_T=use_T, use_V=use_V)
