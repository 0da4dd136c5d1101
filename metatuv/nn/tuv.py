"""W = T·U·V layers (Lee & Choi 2018, arXiv:1801.05558; derivation in docs/derivation.md).

Only U (and the bias) is adapted per task. One SGD step of size α on U moves W by −α·TTᵀ·(∂L/∂W)·VᵀV,
i.e. vec(ΔW) = −α (VᵀV ⊗ TTᵀ) vec(∂L/∂W): a Kronecker-factored preconditioner learned through T and V.

The layers are subclasses of the torch layers they replace (``TUVLinear`` is an ``nn.Linear``, ``TUVConv2d`` an
``nn.Conv2d``, …) whose ``weight`` is computed, W = T·U·V; the stored parameters are ``U``, ``T``, ``V``, ``bias``
(and MT-net's ``mask_logit``), named as in every earlier checkpoint. Writing into ``weight`` lands in U:
U ← T⁻¹·W·V⁻¹ (``nn.init.*_(layer.weight)``, ``layer.weight = w``, ``layer.weight.copy_(w)``, a plain state dict).
``compose`` / ``solve_U`` and the write-back live in ``weightview.py``, the in-place conversion in ``convert.py``;
every name stays importable from here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metatuv.nn.convert import _convert
from metatuv.nn.weightview import _load_plain_weight, _WeightView, compose, solve_U

__all__ = ["TUVLayer", "TUVLinear", "TUVConv1d", "TUVConv2d", "TUVConv3d", "compose", "tuvify"]


class TUVLayer(nn.Module):
    """Shared part of TUV layers: parameters ``T`` (m×m), ``U`` (weight-shaped), ``V`` (n×n), ``bias``.

    ``use_T=False`` / ``use_V=False`` make that factor the identity with no parameter (T-net: T only;
    MAML: neither). m = out features/channels, n = in features/channels (per group for a grouped conv: V is
    shared by the groups, T mixes all output channels). ``bias_inside_T`` (Lee & Choi's code): y = T(U·V·x + b),
    so the effective bias is T·b and an inner step on b moves it by −α·TTᵀ·∂L/∂(Tb); default y = T·U·V·x + b.
    """

    T: Tensor | None
    V: Tensor | None
    bias: Tensor | None
    mask_logit: Tensor | None
    bias_inside_T: bool = False

    def _init_factors(
        self,
        m: int,
        n: int,
        use_T: bool,
        use_V: bool,
        bias: bool,
        factory: dict,
        use_mask: bool,
        bias_inside_T: bool,
    ) -> None:
        self.T = nn.Parameter(torch.eye(m, **factory)) if use_T else None
        self.V = nn.Parameter(torch.eye(n, **factory)) if use_V else None
        # MT-net: one logit per output unit (row of U / output channel); 0 = on with probability 1/2
        self.mask_logit = nn.Parameter(torch.zeros(m, **factory)) if use_mask else None
        self.register_parameter("bias", nn.Parameter(torch.zeros(m, **factory)) if bias else None)
        self.bias_inside_T = bias_inside_T
        # default init of the matching torch layer, applied to U (so W = U at T = V = I)
        nn.init.kaiming_uniform_(self.U, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.U[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)
        self._register_load_state_dict_pre_hook(_load_plain_weight, with_module=True)

    @property
    def weight(self) -> Tensor:
        """W = T·U·V (convolutions: T mixes output channels, V input channels, per kernel tap).

        In eager code the tensor writes back into U when written in place (nn.init, ``copy_``, ``[...] =``).
        """
        W = compose(self.T, self.U, self.V)
        plain = type(W) in (torch.Tensor, nn.Parameter)  # not a fake, proxy or other subclass
        if not plain or torch.compiler.is_compiling() or torch._C._functorch.is_functorch_wrapped_tensor(W):
            return W
        return _WeightView.wrap(W, self)

    @weight.setter
    def weight(self, value: Tensor) -> None:
        self._write_weight(value)

    def register_parameter(self, name: str, param: nn.Parameter | None) -> None:
        """``layer.weight = nn.Parameter(w)`` writes w into U (U ← T⁻¹·w·V⁻¹); other names as in nn.Module."""
        if name == "weight" and "U" in self.__dict__.get("_parameters", {}):
            if param is None:
                raise ValueError(
                    f"{type(self).__name__}.weight = None: a TUV layer's weight is T·U·V; it cannot be removed."
                )
            self._write_weight(param)
            return
        super().register_parameter(name, param)

    @torch.no_grad()
    def _write_weight(self, W: Tensor) -> None:
        """U ← T⁻¹·W·V⁻¹, so that T·U·V = W (T and V are kept); one clear error if W cannot be represented."""
        self.U.copy_(solve_U(self.T, W, self.V, self.U.shape, type(self).__name__, self.U.dtype))

    def effective_bias(self) -> Tensor | None:
        """The bias the layer adds: b, or T·b with ``bias_inside_T``."""
        b = self.bias
        if b is not None and self.bias_inside_T and self.T is not None:
            b = self.T @ b
        return b

    def extra_repr(self) -> str:
        flags = {k: getattr(self, k) is not None for k in ("T", "V", "bias", "mask_logit")}
        inside = ", bias_inside_T=True" if self.bias_inside_T else ""
        return f"U={tuple(self.U.shape)}, " + ", ".join(f"{k}={v}" for k, v in flags.items()) + inside


class TUVLinear(TUVLayer, nn.Linear):
    """y = x·Wᵀ + b with W = T·U·V; T: (out, out), U: (out, in), V: (in, in). An ``nn.Linear``."""

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
        *,
        bias_inside_T: bool = False,
    ) -> None:
        nn.Module.__init__(self)
        factory = {"device": device, "dtype": dtype}
        self.in_features, self.out_features = in_features, out_features
        self.U = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self._init_factors(out_features, in_features, use_T, use_V, bias, factory, use_mask, bias_inside_T)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, compose(self.T, self.U, self.V), self.effective_bias())


_CONV_ATTRS = (
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "transposed",
    "output_padding",
    "groups",
    "padding_mode",
    "_reversed_padding_repeated_twice",
)


class _TUVConvNd(TUVLayer):
    """N-d convolution with W = T·U·V; T: (out, out), U: (out, in/groups, *kernel), V: (in/groups, in/groups)."""

    _plain: type[nn.modules.conv._ConvNd]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        bias: bool = True,
        use_T: bool = True,
        use_V: bool = True,
        dilation=1,
        use_mask: bool = False,
        device=None,
        dtype=None,
        *,
        groups: int = 1,
        padding_mode: str = "zeros",
        bias_inside_T: bool = False,
    ) -> None:
        nn.Module.__init__(self)
        factory = {"device": device, "dtype": dtype}
        # the plain layer's own argument handling (tuples, 'same' padding, padding modes), on the meta device
        ref = self._plain(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            False,
            padding_mode,
            device="meta",
        )
        for k in _CONV_ATTRS:
            setattr(self, k, getattr(ref, k))
        self.U = nn.Parameter(torch.empty(ref.weight.shape, **factory))
        self._init_factors(out_channels, in_channels // groups, use_T, use_V, bias, factory, use_mask, bias_inside_T)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, compose(self.T, self.U, self.V), self.effective_bias())


class TUVConv1d(_TUVConvNd, nn.Conv1d):
    """1-D convolution with W = T·U·V. An ``nn.Conv1d``."""

    _plain = nn.Conv1d


class TUVConv2d(_TUVConvNd, nn.Conv2d):
    """2-D convolution with W = T·U·V; T: (out, out), U: (out, in/groups, kh, kw), V: (in/groups, in/groups)."""

    _plain = nn.Conv2d


class TUVConv3d(_TUVConvNd, nn.Conv3d):
    """3-D convolution with W = T·U·V. An ``nn.Conv3d``."""

    _plain = nn.Conv3d


_TUV_OF: dict[type, type] = {nn.Linear: TUVLinear, nn.Conv1d: TUVConv1d, nn.Conv2d: TUVConv2d, nn.Conv3d: TUVConv3d}


def _tuv_class(cls: type) -> type:
    """The TUV class for a torch layer class; a subclass of nn.Linear / nn.ConvNd gets a TUV subclass of its own,
    whose methods are the subclass's first (its ``forward`` calling ``super().forward`` reaches the TUV one)."""
    if cls not in _TUV_OF:
        base = next(b for b in (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d) if issubclass(cls, b))
        _TUV_OF[cls] = type(f"TUV{cls.__name__}", (cls, _TUV_OF[base]), {})  # __module__: this one, the caller
    return _TUV_OF[cls]


def tuvify(
    model: nn.Module, use_T: bool = True, use_V: bool = True, use_mask: bool = False, *, bias_inside_T: bool = False
) -> nn.Module:
    """Turn every nn.Linear / nn.Conv1d / nn.Conv2d / nn.Conv3d in ``model`` into its TUV form W = T·U·V by changing
    that layer's class in place, and return ``model`` itself (the same object, never a copy).

    ``model`` may itself be such a layer: ``tuvify(lin) is lin``, and ``lin`` is now a ``TUVLinear`` (still an
    ``nn.Linear``). U is the layer's own weight Parameter and T, V start at the identity, so outputs are unchanged.
    Each layer stays the same object (with its hooks and attributes), so a layer registered under two names is
    converted once and stays tied. Left as they are: layers that are TUV layers already, and layers whose weight is
    frozen (``requires_grad=False``; ``fast_names`` skips frozen parameters, so such a layer neither adapts nor is
    meta-learned; a frozen bare layer comes back unconverted). ``use_mask`` adds MT-net mask logits (they only act
    in the inner loop); ``bias_inside_T``: y = T(U·V·x + b) as in Lee & Choi's code (see TUVLayer); refused for a
    layer subclass with its own ``forward`` (which keeps running after conversion, adding b itself).
    """
    kw = {"use_T": use_T, "use_V": use_V, "use_mask": use_mask, "bias_inside_T": bias_inside_T}
    plain = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    todo = [  # modules() yields a module registered under two names once
        m for m in model.modules() if isinstance(m, plain) and not isinstance(m, TUVLayer) and m.weight.requires_grad
    ]
    for m in todo:  # checked before anything is converted
        if bias_inside_T and type(m).forward not in [p.forward for p in plain]:  # it would add the raw b, not T·b
            raise ValueError(
                f"tuvify(bias_inside_T=True): {type(m).__name__} has its own forward, which would add the bias b "
                "instead of T·b; use bias_inside_T=False for a model with such layers."
            )
    for m in todo:
        _convert(m, _tuv_class(type(m)), **kw)
    return model
