"""W = T·U·V as a tensor: ``compose``, its inverse ``solve_U`` and the weight view whose in-place writes land in U.

A TUV layer's ``weight`` is computed, W = T·U·V; writing into it (nn.init, ``copy_``, ``[...] =``, ``.data = w``,
``set_``, a plain layer's state dict) sets U ← T⁻¹·W·V⁻¹ with T and V kept, so that T·U·V = W.
The layers are in ``metatuv/nn/tuv.py``; the derivation is in ``docs/derivation.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from metatuv.nn.tuv import TUVLayer

__all__ = ["compose", "solve_U"]

# in-place Tensor methods / nn.init functions that do not write the values (writing them back would round U)
_NOT_WRITES = frozenset({"requires_grad_", "share_memory_", "detach_", "retain_grad", "record_stream"})
_INPLACE_DUNDERS = frozenset(
    {"__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__ipow__", "__imatmul__"}
)
_ALIASES = frozenset(
    {"detach", "view", "view_as", "reshape", "flatten", "unflatten", "t", "transpose", "swapaxes", "swapdims",
     "permute", "movedim", "moveaxis", "adjoint", "select", "narrow", "diagonal", "unsqueeze", "squeeze", "unfold",
     "view_as_real", "as_strided", "__getitem__"}
)  # fmt: skip
# properties returning an alias of a real tensor (``weight.T.mul_(2)`` writes the weight, as in a plain layer)
_ALIAS_PROPERTIES = (torch.Tensor.data, torch.Tensor.T, torch.Tensor.mT, torch.Tensor.H, torch.Tensor.mH)


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
        alias_property = name == "__get__" and getattr(func, "__self__", None) in _ALIAS_PROPERTIES  # .data, .T, ...
        if target is not None and isinstance(out, Tensor) and (alias_property or name in _ALIASES):
            root = target if target._base_view is None else target._base_view
            return _WeightView.wrap(out, target._owner, root)
        return out


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


def solve_U(T: Tensor | None, W: Tensor, V: Tensor | None, shape: torch.Size, who: str, dtype: torch.dtype) -> Tensor:
    """U = T⁻¹·W·V⁻¹ (the U with compose(T, U, V) = W), solved in the promoted dtype of W, T and V (at least float32:
    LU has no half-precision CPU kernel) and returned in ``dtype`` (the layer's U); raises one line naming ``who``
    (the layer) if T·U·V with that U misses W by more than √eps of ``dtype`` (T or V nearly singular)."""
    W = torch.as_tensor(W)
    if tuple(W.shape) != tuple(shape):
        raise ValueError(f"{who}.weight: got shape {tuple(W.shape)}, expected {tuple(shape)}.")
    work = torch.promote_types(W.dtype, torch.float32)
    for f in (T, V):
        work = work if f is None else torch.promote_types(work, f.dtype)
    W, T, V = (None if f is None else f.detach().to(work) for f in (W, T, V))  # a float64 W into float32 factors
    U = W
    err = torch.tensor(float("inf"))
    try:
        if T is not None:
            U = torch.linalg.solve(T, U.reshape(U.shape[0], -1)).reshape(U.shape)
        if V is not None:
            Vinv = torch.linalg.inv(V)
            U = U @ Vinv if U.dim() == 2 else torch.einsum("oa...,ai->oi...", U, Vinv)
        U = U.to(dtype)  # what the layer will hold: the check below is on it
        if T is None and V is None:
            return U
        err = (compose(T, U.to(work), V) - W).norm() / W.norm().clamp_min(torch.finfo(work).tiny)
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

    T, V and mask logits absent from that state dict keep the layer's current values (a bounded layer's raw
    parameters likewise: T and V are then its computed factors); with ``bias_inside_T`` the
    stored bias becomes T⁻¹·b, so the loaded layer computes W·x + b exactly.
    """
    key = prefix + "weight"
    if key not in state_dict:
        return
    if prefix + "U" in state_dict:
        errors.append(f"state dict holds both {key!r} and {prefix + 'U'!r}; keep only one of them.")
        return
    bounded = getattr(module, "bound", None) is not None  # T and V computed from raw parameters (nn/bounded.py)
    raw = [prefix + k for k, _ in module.named_parameters(recurse=False) if k not in ("U", "bias", "mask_logit")]
    if bounded and any(k in state_dict for k in raw):  # T and V would come from the loaded raw values: refused
        errors.append(
            f"state dict holds {key!r} and the bounded layer's raw factors "
            f"({', '.join(k for k in raw if k in state_dict)}); load either a plain layer's state dict ({key!r}, "
            f"bias) or a bounded model's own ({prefix + 'U'!r} and raw factors)."
        )
        return
    T = state_dict.get(prefix + "T", module.T)
    V = state_dict.get(prefix + "V", module.V)
    name = prefix.rstrip(".") or type(module).__name__
    state_dict[prefix + "U"] = solve_U(T, state_dict.pop(key), V, module.U.shape, name, module.U.dtype)
    for k, p in module.named_parameters(recurse=False):  # T, V, mask_logit (bounded layers: T_raw, V_raw, ...)
        if k not in ("U", "bias") and prefix + k not in state_dict:
            state_dict[prefix + k] = p.detach()
    b = state_dict.get(prefix + "bias")
    if module.bias_inside_T and T is not None and b is not None:
        state_dict[prefix + "bias"] = torch.linalg.solve(T.detach(), b.to(T.dtype))  # in the layer's precision
