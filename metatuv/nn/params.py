"""Split a model's parameters into fast (adapted per task) and static (held fixed in the inner loop).

fast   = U and bias of every TUV layer, plus every parameter of non-TUV modules (norm affine, plain layers:
         the MAML convention, everything adapts); a frozen parameter (requires_grad=False) is never fast;
static = T, V (and any other meta-only parameter such as MT-net mask logits or learned inner lrs).
The outer loop meta-learns *all* trainable parameters: static ones and the initial values of the fast ones.
"""

from __future__ import annotations

from torch import Tensor, nn

from metatuv.nn.tuv import TUVLayer

FAST_TUV_NAMES = ("U", "bias")


def fast_names(model: nn.Module, head_only: bool = False) -> list[str]:
    """Names (as in ``model.named_parameters()``) of the parameters the inner loop adapts.

    ``head_only`` (ANIL): only the last TUV layer's U and bias.
    """
    if head_only:
        heads = [n for n, m in model.named_modules() if isinstance(m, TUVLayer)]
        if not heads:
            raise ValueError("fast_names(head_only=True): the model has no TUV layer; tuvify it first.")
        dot = f"{heads[-1]}." if heads[-1] else ""
        head = model.get_submodule(heads[-1])
        return [dot + k for k in FAST_TUV_NAMES if getattr(head, k) is not None and getattr(head, k).requires_grad]
    names = []
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        for p_name, p in module.named_parameters(recurse=False):
            if p.requires_grad and (not isinstance(module, TUVLayer) or p_name in FAST_TUV_NAMES):
                names.append(prefix + p_name)
    return names


def fast_parameters(model: nn.Module, head_only: bool = False) -> list[nn.Parameter]:
    """The parameters the inner loop adapts (``fast_names``' order): hand these to learn2learn / higher / an optimizer.

    Adapting only these (U and biases of TUV layers) is what makes T and V a preconditioner; T and V still get
    meta-gradients through the adapted weights (README, "Recipes").
    """
    named = dict(model.named_parameters(remove_duplicate=False))
    return [named[n] for n in fast_names(model, head_only)]


def split_params(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(fast, static) dicts of the model's parameters; static also holds the buffers."""
    fast_set = set(fast_names(model))
    params = dict(model.named_parameters())
    fast = {n: p for n, p in params.items() if n in fast_set}
    static = {n: p for n, p in params.items() if n not in fast_set}
    static.update(dict(model.named_buffers()))
    return fast, static
