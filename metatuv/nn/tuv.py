"""W = T·U·V layers (Lee & Choi 2018, arXiv:1801.05558; seed text in ../shared/seed).

Only U (and the bias) is adapted per task. One SGD step of size α on U moves W by −α·TTᵀ·(∂L/∂W)·VᵀV,
i.e. vec(ΔW) = −α (VᵀV ⊗ TTᵀ) vec(∂L/∂W): a Kronecker-factored preconditioner learned through T and V.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TUVLayer", "TUVLinear", "TUVConv2d", "tuvify"]


class TUVLayer(nn.Module):
    """Shared part of TUV layers: parameters ``T`` (m×m), ``U`` (weight-shaped), ``V`` (n×n), ``bias``.

    ``use_T=False`` / ``use_V=False`` make that factor the identity with no parameter (T-net: T only;
    MAML: neither). m = out features/channels, n = in features/channels.
    """

    T: Tensor | None
    V: Tensor | None
    bias: Tensor | None
    mask_logit: Tensor | None

    def _init_factors(
        self, m: int, n: int, use_T: bool, use_V: bool, bias: bool, factory: dict, use_mask: bool = False
    ) -> None:
        self.T = nn.Parameter(torch.eye(m, **factory)) if use_T else None
        self.V = nn.Parameter(torch.eye(n, **factory)) if use_V else None
        # MT-net: one logit per output unit (row of U / output channel); 0 = on with probability 1/2
        self.mask_logit = nn.Parameter(torch.zeros(m, **factory)) if use_mask else None
        self.bias = nn.Parameter(torch.zeros(m, **factory)) if bias else None
        # default init of the matching torch layer, applied to U (so W = U at T = V = I)
        nn.init.kaiming_uniform_(self.U, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.U[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    @property
    def weight(self) -> Tensor:
        """W = T·U·V (Conv2d: T mixes output channels, V input channels, per kernel tap)."""
        return compose(self.T, self.U, self.V)

    def extra_repr(self) -> str:
        flags = {k: getattr(self, k) is not None for k in ("T", "V", "bias", "mask_logit")}
        return f"U={tuple(self.U.shape)}, " + ", ".join(f"{k}={v}" for k, v in flags.items())


def compose(T: Tensor | None, U: Tensor, V: Tensor | None) -> Tensor:
    """W = T·U·V for U of shape (m, n) or (m, n, kh, kw); a missing factor is the identity."""
    W = U
    if U.dim() == 2:
        if T is not None:
            W = T @ W
        if V is not None:
            W = W @ V
        return W
    if T is not None:  # (m, m) x (m, n, kh, kw)
        W = torch.einsum("oa,aikl->oikl", T, W)
    if V is not None:  # (m, n, kh, kw) x (n, n)
        W = torch.einsum("oakl,ai->oikl", W, V)
    return W


class TUVLinear(TUVLayer):
    """y = x·Wᵀ + b with W = T·U·V; T: (out, out), U: (out, in), V: (in, in)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        use_T: bool = True,
        use_V: bool = True,
        use_mask: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.in_features, self.out_features = in_features, out_features
        self.U = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self._init_factors(out_features, in_features, use_T, use_V, bias, factory, use_mask)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


class TUVConv2d(TUVLayer):
    """2-D convolution with W = T·U·V; T: (out, out), U: (out, in, kh, kw), V: (in, in)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        bias: bool = True,
        use_T: bool = True,
        use_V: bool = True,
        dilation: int | tuple[int, int] = 1,
        use_mask: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.dilation = (kh, kw), stride, padding, dilation
        self.U = nn.Parameter(torch.empty(out_channels, in_channels, kh, kw, **factory))
        self._init_factors(out_channels, in_channels, use_T, use_V, bias, factory, use_mask)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)


def _convert(layer: nn.Module, use_T: bool, use_V: bool, use_mask: bool) -> TUVLayer:
    factory = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    has_bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        new: TUVLayer = TUVLinear(layer.in_features, layer.out_features, has_bias, use_T, use_V, use_mask, **factory)
    else:
        if layer.groups != 1 or layer.padding_mode != "zeros":
            raise ValueError(
                f"tuvify: Conv2d with groups={layer.groups}, padding_mode={layer.padding_mode!r} is not "
                "supported (T and V mix all channels); use groups=1 and padding_mode='zeros'."
            )
        new = TUVConv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            has_bias,
            use_T,
            use_V,
            layer.dilation,
            use_mask,
            **factory,
        )
    with torch.no_grad():  # construction-time copy, not part of any graph
        new.U.copy_(layer.weight)
        if has_bias:
            new.bias.copy_(layer.bias)
    return new


def tuvify(model: nn.Module, use_T: bool = True, use_V: bool = True, use_mask: bool = False) -> nn.Module:
    """Replace every nn.Linear / nn.Conv2d in ``model`` (in place) by its TUV form with U = old weight.

    T and V start at the identity, so the model's outputs are unchanged. ``use_mask`` adds MT-net mask
    logits (they only act in the inner loop). Returns ``model``.
    """
    if isinstance(model, nn.Linear | nn.Conv2d):
        return _convert(model, use_T, use_V, use_mask)
    for name, child in model.named_children():
        if isinstance(child, nn.Linear | nn.Conv2d):
            setattr(model, name, _convert(child, use_T, use_V, use_mask))
        else:
            tuvify(child, use_T, use_V, use_mask)
    return model
