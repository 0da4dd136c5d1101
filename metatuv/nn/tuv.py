"""W = T·U·V layers (Lee & Choi 2018, arXiv:1801.05558; seed text in ../shared/seed).

Only U (and the bias) is adapted per task. One SGD step of size α on U moves W by −α·TTᵀ·(∂L/∂W)·VᵀV,
i.e. vec(ΔW) = −α (VᵀV ⊗ TTᵀ) vec(∂L/∂W): a Kronecker-factored preconditioner learned through T and V.

The layers are subclasses of the torch layers they replace (``TUVLinear`` is an ``nn.Linear``, ``TUVConv2d`` an
``nn.Conv2d``, …) whose ``weight`` is computed, W = T·U·V; the stored parameters are ``U``, ``T``, ``V``, ``bias``
(and MT-net's ``mask_logit``), named as in every earlier checkpoint. Writing into ``weight`` lands in U:
U ← T⁻¹·W·V⁻¹ (``nn.init.*_(layer.weight)``, ``layer.weight = w``, ``layer.weight.copy_(w)``, a plain state dict).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TUVLayer", "TUVLinear", "TUVConv1d", "TUVConv2d", "TUVConv3d", "compose", "tuvify"]

# in-place Tensor methods / nn.init functions that do not write the values (writing them back would round U)
_NOT_WRITES = frozenset({"requires_grad_", "share_memory_", "detach_", "retain_grad", "record_stream"})
_INPLACE_DUNDERS = frozenset(
    {"__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__ipow__", "__imatmul__"}
)
_ALIASES = frozenset(
    {"detach", "view", "view_as", "reshape", "flatten", "t", "transpose", "permute", "select", "narrow", "__getitem__"}
)


class _WeightView(torch.Tensor):
    """What ``layer.weight`` returns in eager code: W = T·U·V, whose in-place writes are written back into U.

    Every other operation returns plain tensors; ``.data`` / ``.detach()`` / views keep the write-back, as they
    would alias a plain layer's weight.
    """

    _owner: TUVLayer
    _base_view: _WeightView | None

    @staticmethod
    def wrap(W: Tensor, owner: TUVLayer, base: _WeightView | None = None) -> _WeightView:
        with torch._C.DisableTorchFunctionSubclass():
            out = W.as_subclass(_WeightView)
        out._owner, out._base_view = owner, base
        return out

    def __repr__(self, **kw) -> str:
        with torch._C.DisableTorchFunctionSubclass():
            return self.as_subclass(torch.Tensor).__repr__(**kw)

    def set_(self, *args, **kwargs) -> _WeightView:  # not routed through __torch_function__: write back here
        with torch._C.DisableTorchFunctionSubclass():
            torch.Tensor.set_(self, *args, **kwargs)
            root = self if self._base_view is None else self._base_view
            root._owner._write_weight(root.as_subclass(torch.Tensor))
        return self

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        first = args[0] if args else next(iter(kwargs.values()), None)  # nn.init passes tensor=... by keyword
        target = first if isinstance(first, _WeightView) else None
        if isinstance(kwargs.get("out"), _WeightView):
            target, name = kwargs["out"], "out="
        writes = name in _INPLACE_DUNDERS or name == "out=" or (name.endswith("_") and not name.endswith("__"))
        writes = writes or (name == "__set__" and getattr(func, "__self__", None) is torch.Tensor.data)  # .data = w
        if target is not None and writes and name not in _NOT_WRITES:
            root = target if target._base_view is None else target._base_view
            with torch._C.DisableTorchFunctionSubclass():
                root._owner._write_weight(root.as_subclass(torch.Tensor))
            return out
        is_data = name == "__get__" and getattr(func, "__self__", None) is torch.Tensor.data
        if target is not None and isinstance(out, Tensor) and (is_data or name in _ALIASES):
            root = target if target._base_view is None else target._base_view
            return _WeightView.wrap(out, target._owner, root)
        return out


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
        use_mask: bool = False,
        bias_inside_T: bool = False,
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
        self.U.copy_(solve_U(self.T, W, self.V, self.U.shape, type(self).__name__))

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


def compose(T: Tensor | None, U: Tensor, V: Tensor | None) -> Tensor:
    """W = T·U·V for U of shape (m, n) or (m, n, *kernel); a missing factor is the identity."""
    W = U
    if U.dim() == 2:
        if T is not None:
            W = T @ W
        if V is not None:
            W = W @ V
        return W
    if U.dim() == 4:  # the conv2d path as it always was (bit-identical meta-gradients)
        if T is not None:  # (m, m) x (m, n, kh, kw)
            W = torch.einsum("oa,aikl->oikl", T, W)
        if V is not None:  # (m, n, kh, kw) x (n, n)
            W = torch.einsum("oakl,ai->oikl", W, V)
        return W
    if T is not None:
        W = torch.einsum("oa,a...->o...", T, W)
    if V is not None:
        W = torch.einsum("oa...,ai->oi...", W, V)
    return W


def solve_U(T: Tensor | None, W: Tensor, V: Tensor | None, shape: torch.Size, who: str = "TUV layer") -> Tensor:
    """U = T⁻¹·W·V⁻¹ (the U with compose(T, U, V) = W); raises one line if T or V cannot be inverted accurately."""
    W = torch.as_tensor(W)
    if tuple(W.shape) != tuple(shape):
        raise ValueError(f"{who}.weight: got shape {tuple(W.shape)}, expected {tuple(shape)}.")
    W = W.detach()
    dtype = torch.promote_types(W.dtype, T.dtype if T is not None else V.dtype if V is not None else W.dtype)
    W = W.to(dtype)
    U = W
    err = torch.tensor(float("inf"))
    try:
        if T is not None:
            U = torch.linalg.solve(T.detach().to(dtype), U.reshape(U.shape[0], -1)).reshape(U.shape)
        if V is not None:
            Vinv = torch.linalg.inv(V.detach().to(dtype))
            U = U @ Vinv if U.dim() == 2 else torch.einsum("oa...,ai->oi...", U, Vinv)
        if T is None and V is None:
            return U
        err = (compose(T, U, V) - W).norm() / W.norm().clamp_min(torch.finfo(dtype).tiny)
    except torch.linalg.LinAlgError:
        pass
    if not torch.isfinite(err) or err > torch.finfo(dtype).eps ** 0.5:
        raise ValueError(
            f"{who}.weight = W: T or V is (nearly) singular, so U = T⁻¹·W·V⁻¹ misses W by {err.item():.1e} "
            "(relative); reset T and V to the identity (nn.init.eye_) before writing the weight."
        )
    return U


def _load_plain_weight(module: TUVLayer, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
    """A plain layer's ``weight`` (and ``bias``) in a state dict: U = T⁻¹·W·V⁻¹ with the layer's T and V.

    T, V and mask logits absent from that state dict keep the layer's current values; with ``bias_inside_T`` the
    stored bias becomes T⁻¹·b, so the loaded layer computes W·x + b exactly.
    """
    key = prefix + "weight"
    if key not in state_dict:
        return
    if prefix + "U" in state_dict:
        errors.append(f"state dict holds both {key!r} and {prefix + 'U'!r}; keep only one of them.")
        return
    T = state_dict.get(prefix + "T", module.T)
    V = state_dict.get(prefix + "V", module.V)
    name = prefix.rstrip(".") or type(module).__name__
    state_dict[prefix + "U"] = solve_U(T, state_dict.pop(key), V, module.U.shape, name).to(module.U.dtype)
    for k in ("T", "V", "mask_logit"):
        if getattr(module, k) is not None and prefix + k not in state_dict:
            state_dict[prefix + k] = getattr(module, k).detach()
    b = state_dict.get(prefix + "bias")
    if module.bias_inside_T and T is not None and b is not None:
        state_dict[prefix + "bias"] = torch.linalg.solve(T.detach().to(b.dtype), b)


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
    """The TUV class for a torch layer class; a subclass of nn.Linear / nn.ConvNd gets a TUV subclass of its own."""
    if cls not in _TUV_OF:
        base = next(b for b in (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d) if issubclass(cls, b))
        _TUV_OF[cls] = type(f"TUV{cls.__name__}", (_TUV_OF[base], cls), {"__module__": __name__})
    return _TUV_OF[cls]


def _convert(layer: nn.Module, use_T: bool, use_V: bool, use_mask: bool, bias_inside_T: bool) -> TUVLayer:
    """Turn ``layer`` into its TUV form in place (same object, class, hooks and attributes): U is its weight.

    The old ``weight`` Parameter object becomes U and ``bias`` stays the same object, so optimizers, ties and
    ``requires_grad`` carry over; T and V are new identities, the MT-net logits zeros.
    """
    W = layer.weight
    if isinstance(W, nn.parameter.UninitializedParameter):
        raise ValueError(f"tuvify: {type(layer).__name__} is not initialized yet (lazy); run one forward pass first.")
    # Draw the random numbers a fresh TUV layer's init used to draw (the old conversion built one, then copied the
    # weight in), so seeded runs keep the same stream as before.
    nn.init.kaiming_uniform_(torch.empty(W.shape, dtype=W.dtype, device=W.device), a=math.sqrt(5))
    old = layer._parameters
    if old.get("bias") is not None:
        nn.init.uniform_(torch.empty(W.shape[0], dtype=W.dtype, device=W.device), -1.0, 1.0)
    bias = old.pop("bias", None)
    del old["weight"]
    layer.__class__ = _tuv_class(type(layer))
    factory = {"device": W.device, "dtype": W.dtype}
    m, n = W.shape[0], W.shape[1]
    new = {
        "U": W,
        "T": nn.Parameter(torch.eye(m, **factory)) if use_T else None,
        "V": nn.Parameter(torch.eye(n, **factory)) if use_V else None,
        "mask_logit": nn.Parameter(torch.zeros(m, **factory)) if use_mask else None,
    }
    for k, v in new.items():  # U, T, V, mask_logit, bias: the parameter order of earlier checkpoints
        if v is not None:
            old[k] = v
        else:
            layer.__dict__[k] = None
    old["bias"] = bias
    layer.bias_inside_T = bias_inside_T
    layer._register_load_state_dict_pre_hook(_load_plain_weight, with_module=True)
    return layer


def tuvify(
    model: nn.Module, use_T: bool = True, use_V: bool = True, use_mask: bool = False, *, bias_inside_T: bool = False
) -> nn.Module:
    """Turn every nn.Linear / nn.Conv1d / nn.Conv2d / nn.Conv3d of ``model`` into its TUV form, in place: W = T·U·V.

    U is the layer's own weight Parameter and T, V start at the identity, so outputs are unchanged. Each layer
    stays the same object (still an ``nn.Linear`` / ``nn.ConvNd``, with its hooks and attributes), so a layer
    registered under two names is converted once and stays tied. A layer whose weight is frozen
    (``requires_grad=False``) is left as it is, not converted; ``fast_names`` skips frozen parameters, so it
    neither adapts nor is meta-learned. ``use_mask`` adds MT-net mask logits (they only act in the inner loop);
    ``bias_inside_T``: y = T(U·V·x + b) as in Lee & Choi's code (see TUVLayer). Returns ``model``.
    """
    kw = {"use_T": use_T, "use_V": use_V, "use_mask": use_mask, "bias_inside_T": bias_inside_T}
    for module in list(model.modules()):  # modules() yields a module registered under two names once
        if isinstance(module, TUVLayer) or not isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
            continue
        if not module.weight.requires_grad:
            continue
        _convert(module, **kw)
    return model
