"""The in-place conversion behind ``tuvify``: a plain torch layer becomes its TUV form, same object.

W = T·U·V with U the layer's own weight Parameter and T = V = I, so the layer computes what it did before.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from metatuv.nn.weightview import _load_plain_weight


def _convert(layer: nn.Module, cls: type, use_T: bool, use_V: bool, use_mask: bool, bias_inside_T: bool) -> nn.Module:
    """Turn ``layer`` into its TUV form ``cls`` in place (same object, hooks and attributes): U is its weight.

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
    layer.__class__ = cls
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
