"""Naive per-preset references for the meta-gradient, sharing no code with metatuv (issue 19).

Everything is recomputed here from the equations, with plain torch ops on a dict of tensors: the forward pass of
the MLP and of the conv4 net (W = T·U·V, the bounded factors' soft spectral clip, batch norm, the losses), every
preset's inner update rule, the inner loop (one task after another, support gradients by
``torch.autograd.grad(create_graph=True)``), the mean query loss and its gradient over every meta-parameter.
The only things taken from the library are data: the meta-parameters' values, keyed by the learner's parameter
names (the checkpoint keys, e.g. ``model.0.U``, ``rule.lrs.0__U``), and the MT-net mask noise the learner draws
(``learner.sample_extras``), which is an input of the meta-loss like the tasks themselves.

Update rules (metatuv/meta/presets.py, metatuv/meta/rule.py; G = ∂L/∂W, g = ∂L/∂θ, θ' = θ − Δ):

    maml           Δ = α·g                      every U, bias and batch-norm γ, β (W = U)
    fomaml         Δ = α·g, g detached           (first order)
    metasgd        Δ = α_θ ⊙ g                  one learned rate per entry
    lslr           Δ = α_{θ,k}·g                one learned rate per tensor and inner step k
    anil           Δ = α·g                      the head's U and bias only
    metacurvature  Δ = α·M_o·G·M_i (×₃ M_f over a conv's kernel taps), weights only (biases, γ, β: α·g)
    tnet           W = T·U, Δ_U = α·∂L/∂U
    mtnet          tnet, Δ = α·m ⊙ g on U's rows and the bias, m = hard straight-through σ((ζ + ℓ)/τ)
    tuv            W = T·U·V, Δ_U = α·∂L/∂U
    mtuv           tuv with the mask of mtnet
    tuv_bounded    tuv with T = T̃·c·tanh(‖T̃‖₂/c)/‖T̃‖₂ (V alike), c = b^¼, b = max_step / α (metatuv/nn/bounded.py)
    kfo            Δ = α·(AᵀA)·G·(BᵀB); a conv weight per output channel as an (in, kh·kw) matrix

The architectures are those of ``metatuv.nn.mlp`` (Linear layers at module indices 0, 2, 4, …, ReLU between) and
``metatuv.nn.conv4`` with ``pool="stride"`` (blocks conv3×3 stride 2 padding 1 → transductive batch norm → ReLU at
indices (0, 1), (3, 4), (6, 7), (9, 10); flatten; Linear at 13).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

Params = dict[str, Tensor]
BN_EPS = 1e-5  # metatuv.nn.BatchNorm's default
STATIC = ("T", "V", "T_raw", "V_raw", "mask_logit")  # meta-only model parameters: never adapted in the inner loop


# ---------------------------------------------------------------- the weights


def left(M: Tensor, X: Tensor) -> Tensor:
    """M·X, contracting X's first index (a conv weight (o, i, kh, kw) as an o × (i·kh·kw) matrix)."""
    return (M @ X.reshape(X.shape[0], -1)).reshape(M.shape[0], *X.shape[1:])


def right(X: Tensor, M: Tensor) -> Tensor:
    """X·M, contracting X's second index (a conv weight's input channels)."""
    if X.dim() == 2:
        return X @ M
    return (X.permute(0, 2, 3, 1) @ M).permute(0, 3, 1, 2)


def soft_clip(raw: Tensor, c: float) -> Tensor:
    """T = T̃·c·tanh(‖T̃‖₂/c)/‖T̃‖₂, ‖·‖₂ the largest singular value."""
    s = torch.linalg.svdvals(raw)[0]
    return raw * (c * torch.tanh(s / c) / s)


def weight(p: Params, layer: str, factors: str, c: float = 0.0) -> Tensor:
    """The layer's W: U (factors ""), T·U ("T"), T·U·V ("TV"), or T·U·V with soft-clipped T, V ("TV_bounded")."""
    W = p[f"model.{layer}.U"]
    if factors == "TV_bounded":
        T, V = soft_clip(p[f"model.{layer}.T_raw"], c), soft_clip(p[f"model.{layer}.V_raw"], c)
        return right(left(T, W), V)
    if "T" in factors:
        W = left(p[f"model.{layer}.T"], W)
    if "V" in factors:
        W = right(W, p[f"model.{layer}.V"])
    return W


# ---------------------------------------------------------------- the networks and losses


@dataclass(frozen=True)
class Arch:
    """``mlp``: ``layers`` Linear module indices; ``conv4``: conv/norm index pairs then the head."""

    kind: str  # mlp | conv4
    layers: tuple[str, ...]  # every weight layer, the head last
    norms: tuple[str, ...] = ()  # conv4: the batch norm after each conv


def mlp_arch(depth: int) -> Arch:
    """metatuv.nn.mlp with ``depth`` Linear layers."""
    return Arch("mlp", tuple(str(2 * j) for j in range(depth)))


CONV4 = Arch("conv4", ("0", "3", "6", "9", "13"), ("1", "4", "7", "10"))


def batch_norm(x: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
    """Transductive batch norm: the batch's own statistics, no running ones."""
    return F.batch_norm(x, None, None, gamma, beta, training=True, eps=BN_EPS)


def network(p: Params, arch: Arch, factors: str, c: float, x: Tensor) -> Tensor:
    if arch.kind == "mlp":
        for j, layer in enumerate(arch.layers):
            x = x @ weight(p, layer, factors, c).T + p[f"model.{layer}.bias"]
            if j < len(arch.layers) - 1:
                x = torch.relu(x)
        return x
    for conv, norm in zip(arch.layers[:-1], arch.norms, strict=True):
        x = F.conv2d(x, weight(p, conv, factors, c), p[f"model.{conv}.bias"], stride=2, padding=1)
        x = torch.relu(batch_norm(x, p[f"model.{norm}.weight"], p[f"model.{norm}.bias"]))
    head = arch.layers[-1]
    return x.reshape(x.shape[0], -1) @ weight(p, head, factors, c).T + p[f"model.{head}.bias"]


def mse(pred: Tensor, y: Tensor) -> Tensor:
    return ((pred - y) ** 2).mean()


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    logp = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -logp[torch.arange(len(y)), y].mean()


# ---------------------------------------------------------------- the update rules: Δ for one fast tensor


@dataclass
class Step:
    """What a rule sees at inner step ``k`` for fast parameter ``name``: its gradient ``g`` and the meta-parameters."""

    name: str  # e.g. model.3.U
    g: Tensor
    k: int
    p: Params
    lr: float
    masks: Params  # fast name -> this task's mask, shaped to broadcast over the tensor

    @property
    def key(self) -> str:  # the rule's ParameterDict key: the model's name with dots as "__"
        return self.name.removeprefix("model.").replace(".", "__")


def sgd(s: Step) -> Tensor:
    """Δ = α·g."""
    return s.lr * s.g


def meta_sgd(s: Step) -> Tensor:
    """Δ = α_θ ⊙ g (Li et al. 2017)."""
    return s.p[f"rule.lrs.{s.key}"] * s.g


def lslr(s: Step) -> Tensor:
    """Δ = α_{θ,k}·g (MAML++ LSLR)."""
    return s.p[f"rule.lrs.{s.key}"][s.k] * s.g


def meta_curvature(s: Step) -> Tensor:
    """Δ = α·M_o·G·M_i, and ×₃ M_f over a conv's kernel taps: (G ×₃ M_f)[o, i, j] = Σ_t M_f[j, t]·G[o, i, t]."""
    if s.g.dim() < 2:
        return s.lr * s.g
    M = {side: s.p[f"rule.curvature.{s.key}_{side}"] for side in ("o", "i")}
    G = right(left(M["o"], s.g), M["i"])
    if G.dim() == 4:
        o, i, kh, kw = G.shape
        Mf = s.p[f"rule.curvature.{s.key}_f"]
        G = torch.tensordot(G.reshape(o, i, kh * kw), Mf, dims=([2], [1])).reshape(o, i, kh, kw)
    return s.lr * G


def kfo(s: Step) -> Tensor:
    """Δ = α·(AᵀA)·G·(BᵀB); a conv weight (o, i, kh, kw) per output channel as an (i, kh·kw) matrix."""
    if s.g.dim() < 2:
        return s.lr * s.g
    A, B = s.p[f"rule.kfo.{s.key}_l"], s.p[f"rule.kfo.{s.key}_r"]
    L, R = A.T @ A, B.T @ B
    if s.g.dim() == 2:
        return s.lr * (L @ s.g @ R)
    o, i, kh, kw = s.g.shape
    return s.lr * torch.einsum("ab,obt,tu->oau", L, s.g.reshape(o, i, kh * kw), R).reshape(o, i, kh, kw)


def masked_sgd(s: Step) -> Tensor:
    """Δ = α·m ⊙ g on the masked U rows and biases (MT-net), α·g elsewhere."""
    m = s.masks.get(s.name)
    return s.lr * (s.g if m is None else m * s.g)


def mask(logit: Tensor, noise: Tensor, temperature: float) -> Tensor:
    """Forward 1[σ((ζ + ℓ)/τ) > ½], backward the gradient of σ((ζ + ℓ)/τ) (hard straight-through)."""
    soft = torch.sigmoid((logit + noise) / temperature)
    return soft + ((soft > 0.5).to(soft.dtype) - soft).detach()


# ---------------------------------------------------------------- the presets


@dataclass(frozen=True)
class Reference:
    factors: str  # "", "T", "TV", "TV_bounded"
    delta: Callable[[Step], Tensor]
    head_only: bool = False
    first_order: bool = False
    masked: bool = False


REFERENCES: dict[str, Reference] = {
    "maml": Reference("", sgd),
    "fomaml": Reference("", sgd, first_order=True),
    "metasgd": Reference("", meta_sgd),
    "lslr": Reference("", lslr),
    "anil": Reference("", sgd, head_only=True),
    "metacurvature": Reference("", meta_curvature),
    "tnet": Reference("T", sgd),
    "mtnet": Reference("T", masked_sgd, masked=True),
    "tuv": Reference("TV", sgd),
    "mtuv": Reference("TV", masked_sgd, masked=True),
    "tuv_bounded": Reference("TV_bounded", sgd),
    "kfo": Reference("", kfo),
}


def fast_names(ref: Reference, arch: Arch, p: Params) -> list[str]:
    """The tensors the inner loop adapts: every model tensor but T, V (raw) and mask logits; ANIL: the head's."""
    if ref.head_only:
        return [f"model.{arch.layers[-1]}.U", f"model.{arch.layers[-1]}.bias"]
    return [n for n in p if n.startswith("model.") and n.rsplit(".", 1)[1] not in STATIC]


def task_masks(ref: Reference, arch: Arch, p: Params, noise: Params, temperature: float) -> Params:
    """One task's masks over each masked layer's U rows and bias."""
    out = {}
    if ref.masked:
        for layer in arch.layers:
            m = mask(p[f"model.{layer}.mask_logit"], noise[f"model.{layer}.mask_logit"], temperature)
            out[f"model.{layer}.U"] = m.reshape(-1, *[1] * (p[f"model.{layer}.U"].dim() - 1))
            out[f"model.{layer}.bias"] = m
    return out


def meta_gradient(
    preset: str,
    arch: Arch,
    values: Params,
    batch: tuple[Tensor, Tensor, Tensor, Tensor],
    noise: Params,
    lr: float,
    steps: int,
    temperature: float = 1.0,
    max_step: float = 1.0,
) -> tuple[Tensor, Params]:
    """(mean query loss after ``steps`` inner steps, its gradient w.r.t. every entry of ``values``).

    ``values``: every meta-parameter by its learner name; ``noise``: the mask noise by mask-logit name,
    (tasks, units) each; ``max_step``: tuv_bounded's bound b = max_step / lr.
    """
    ref = REFERENCES[preset]
    p = {n: v.detach().clone().requires_grad_(True) for n, v in values.items()}
    c = (max_step / lr) ** 0.25
    loss_fn = mse if arch.kind == "mlp" else cross_entropy
    names = fast_names(ref, arch, p)
    losses = []
    for t in range(len(batch[0])):
        xs, ys, xq, yq = (b[t] for b in batch)
        masks = task_masks(ref, arch, p, {n: e[t] for n, e in noise.items()}, temperature)
        fast = {n: p[n] for n in names}
        for k in range(steps):
            support = loss_fn(network({**p, **fast}, arch, ref.factors, c, xs), ys)
            second = not ref.first_order  # fomaml: the support gradients are detached from the meta-graph
            grads = torch.autograd.grad(support, list(fast.values()), create_graph=second, retain_graph=True)
            grads = [g if second else g.detach() for g in grads]
            fast = {
                n: f - ref.delta(Step(n, g, k, p, lr, masks)) for (n, f), g in zip(fast.items(), grads, strict=True)
            }
        losses.append(loss_fn(network({**p, **fast}, arch, ref.factors, c, xq), yq))
    loss = torch.stack(losses).mean()
    grads = torch.autograd.grad(loss, list(p.values()), allow_unused=True)
    return loss.detach(), {
        n: g if g is not None else torch.zeros_like(v) for (n, v), g in zip(p.items(), grads, strict=True)
    }
