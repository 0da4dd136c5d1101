"""Models of the papers, built with TUV layers through ``tuvify``."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from metatuv.nn.norm import BatchNorm
from metatuv.nn.tuv import tuvify

POOLS = ("stride", "max")  # conv4 downsampling: stride-2 convs (Omniglot) | 2×2 max-pool (mini-ImageNet)


def mlp(
    sizes: Sequence[int] = (1, 40, 40, 1),
    use_T: bool = True,
    use_V: bool = True,
    use_mask: bool = False,
    bias_inside_T: bool = False,
) -> nn.Sequential:
    """MLP with ReLU between TUV linear layers; sinusoid regression uses 1-40-40-1 (Finn et al. 2017)."""
    if len(sizes) < 2:
        raise ValueError(f"mlp: sizes={list(sizes)} needs at least input and output sizes, e.g. [1, 40, 40, 1].")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return tuvify(nn.Sequential(*layers), use_T=use_T, use_V=use_V, use_mask=use_mask, bias_inside_T=bias_inside_T)


def conv4(
    ways: int,
    in_channels: int = 1,
    hidden: int = 64,
    image_size: int = 28,
    pool: str = "stride",
    use_T: bool = True,
    use_V: bool = True,
    use_mask: bool = False,
    bias_inside_T: bool = False,
) -> nn.Sequential:
    """The 4-block conv net of MAML / MT-net: [conv3×3 → BatchNorm → ReLU (→ max-pool)] ×4 → linear.

    Omniglot: hidden=64, 28×28×1, ``pool="stride"`` (stride-2 convs, Finn et al.); mini-ImageNet: hidden=32,
    84×84×3, ``pool="max"`` (2×2 max-pool after each block). Batch norm is the primitive-op one (exact under vmap).
    """
    if pool not in POOLS:
        raise ValueError(f"conv4: pool={pool!r}; use 'stride' (Omniglot) or 'max' (mini-ImageNet).")
    layers: list[nn.Module] = []
    c, hw = in_channels, image_size
    for _ in range(4):
        stride = 2 if pool == "stride" else 1
        layers += [nn.Conv2d(c, hidden, 3, stride=stride, padding=1), BatchNorm(hidden), nn.ReLU()]
        if pool == "max":
            layers.append(nn.MaxPool2d(2))
        hw = (hw + 1) // 2 if pool == "stride" else hw // 2  # (28 → 14 → 7 → 4 → 2) or (84 → 42 → 21 → 10 → 5)
        c = hidden
    if hw < 1:
        raise ValueError(f"conv4: image_size={image_size} is too small for 4 downsampling blocks; use >= 16.")
    layers += [nn.Flatten(), nn.Linear(hidden * hw * hw, ways)]
    return tuvify(nn.Sequential(*layers), use_T=use_T, use_V=use_V, use_mask=use_mask, bias_inside_T=bias_inside_T)
