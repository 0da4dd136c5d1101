"""The inner step rule shared by every preset and backend: θ' = θ − Δ with

    Δ_{n,k} = α_{n,k} ⊙ C_n(m_n ⊙ g_n)

- m_n: MT-net mask (Lee & Choi 2018): per task, one hard straight-through Gumbel-softmax sample per output
  unit, m = 1[σ((ζ + ℓ)/τ) > ½] with ℓ ~ Logistic (the difference of two Gumbels: a two-class
  Gumbel-softmax over (on, off) with logits (ζ, 0)); its gradient is that of σ((ζ + ℓ)/τ). It multiplies
  the rows of U's gradient (output units / channels) and the bias gradient.
- C_n: Meta-Curvature (Park & Oliva 2019): G ↦ M_o·G·M_i (and ×₃ M_f over the kernel taps of a conv),
  learned, initialized to the identity; applied to plain weights, unlike TUV's reparameterized TTᵀ·G·VᵀV.
- C_n (MetaKFO, Arnold, Iqbal & Sha 2021; learn2learn's KroneckerTransform(KroneckerLinear, psd=True)):
  G ↦ (AᵀA)·G·(BᵀB) with A, B learned, initialized to the identity; positive semi-definite factors. As in
  learn2learn, a conv weight (o, i, kh, kw) is transformed per output channel as an (i, kh·kw) matrix.
- α_{n,k}: the fixed inner lr, or learned: Meta-SGD (Li et al. 2017; one rate per parameter entry) or LSLR
  (MAML++, Antoniou et al. 2019; one rate per parameter tensor and inner step; test-time steps beyond the
  trained ones reuse the last trained step's rate).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metatuv.inner import Params, StepRule
from metatuv.nn import TUVLayer

LR_MODES = ("fixed", "metasgd", "lslr")


def _key(name: str) -> str:
    return name.replace(".", "__")  # ParameterDict keys may not contain dots


def mask_sample(logit: Tensor, noise: Tensor, temperature: float) -> Tensor:
    """Hard straight-through sample of a two-class Gumbel-softmax: forward 0/1, backward σ'."""
    soft = torch.sigmoid((logit + noise) / temperature)
    hard = (soft > 0.5).to(soft.dtype)
    return hard - soft.detach() + soft


class InnerRule(nn.Module):
    """Holds the rule's own meta parameters (learned rates, curvature) and builds each task's step rule."""

    def __init__(
        self,
        model: nn.Module,
        fast_names: list[str],
        lr: float,
        steps: int,
        lr_mode: str = "fixed",
        curvature: bool = False,
        mask_temperature: float = 1.0,
        kfo: bool = False,
    ) -> None:
        super().__init__()
        if lr_mode not in LR_MODES:
            raise ValueError(f"unknown lr_mode={lr_mode!r}; choose one of {list(LR_MODES)}.")
        if mask_temperature <= 0:
            raise ValueError(f"mask_temperature={mask_temperature} must be > 0 (default 1.0).")
        params = dict(model.named_parameters())
        self.lr, self.lr_mode, self.temperature = lr, lr_mode, mask_temperature
        self.lrs = nn.ParameterDict()
        if lr_mode == "metasgd":
            for n in fast_names:
                self.lrs[_key(n)] = nn.Parameter(torch.full_like(params[n].detach(), lr))
        elif lr_mode == "lslr":
            for n in fast_names:
                self.lrs[_key(n)] = nn.Parameter(torch.full((max(steps, 1),), lr, dtype=params[n].dtype))
        self.curvature = nn.ParameterDict()
        if curvature:
            for n in fast_names:
                p = params[n]
                if p.dim() < 2:
                    continue
                f = {"dtype": p.dtype, "device": p.device}
                self.curvature[_key(n) + "_o"] = nn.Parameter(torch.eye(p.shape[0], **f))
                self.curvature[_key(n) + "_i"] = nn.Parameter(torch.eye(p.shape[1], **f))
                if p.dim() == 4:
                    self.curvature[_key(n) + "_f"] = nn.Parameter(torch.eye(p.shape[2] * p.shape[3], **f))
        self.kfo = nn.ParameterDict()
        if kfo and curvature:
            raise ValueError("InnerRule: kfo=True and curvature=True are two gradient transforms; choose one.")
        if kfo:
            for n in fast_names:
                p = params[n]
                if p.dim() < 2:
                    continue
                a, b = (p.shape[0], p.shape[1]) if p.dim() == 2 else (p.shape[1], p.shape[2] * p.shape[3])
                f = {"dtype": p.dtype, "device": p.device}
                self.kfo[_key(n) + "_l"] = nn.Parameter(torch.eye(a, **f))
                self.kfo[_key(n) + "_r"] = nn.Parameter(torch.eye(b, **f))
        # MT-net: layer prefix -> the fast parameters its mask gates (U rows and bias)
        fast_set = set(fast_names)
        self.masked: dict[str, list[str]] = {}
        for prefix, module in model.named_modules():
            if isinstance(module, TUVLayer) and module.mask_logit is not None:
                dot = f"{prefix}." if prefix else ""
                self.masked[dot + "mask_logit"] = [dot + k for k in ("U", "bias") if dot + k in fast_set]
        self._units = {name: params[name].shape[0] for name in self.masked}

    def mask_noise(self, tasks: int, generator: torch.Generator | None, like: Tensor) -> dict[str, Tensor]:
        """Logistic noise per task and masked unit: {mask_logit name: (tasks, units)}; {} without masks."""
        noise = {}
        for name, units in self._units.items():
            u = torch.rand(tasks, units, generator=generator, device=like.device, dtype=like.dtype)
            u = u.clamp(1e-6, 1 - 1e-6)
            noise[name] = torch.log(u) - torch.log1p(-u)
        return noise

    def masks(self, params: Params, noise: dict[str, Tensor]) -> dict[str, Tensor]:
        """One task's hard masks, per gated fast parameter, shaped to broadcast over it."""
        out = {}
        for logit_name, gated in self.masked.items():
            m = mask_sample(params[logit_name], noise[logit_name], self.temperature)  # (units,)
            for n in gated:
                out[n] = m.view(-1, *([1] * (params[n].dim() - 1)))
        return out

    def _kfo(self, name: str, g: Tensor) -> Tensor:
        """(AᵀA)·G·(BᵀB); a conv G (o, i, kh, kw) as o matrices (i, kh·kw)."""
        k = _key(name)
        A, B = self.kfo[k + "_l"], self.kfo[k + "_r"]
        L, R = A.T @ A, B.T @ B
        if g.dim() == 2:
            return L @ g @ R
        return (L @ g.flatten(2) @ R).view_as(g)

    def _curve(self, name: str, g: Tensor) -> Tensor:
        k = _key(name)
        if k + "_l" in self.kfo:
            return self._kfo(name, g)
        if k + "_o" not in self.curvature:
            return g
        Mo, Mi = self.curvature[k + "_o"], self.curvature[k + "_i"]
        if g.dim() == 2:
            return Mo @ g @ Mi
        g = torch.einsum("oa,abkl,bi->oikl", Mo, g, Mi)
        Mf = self.curvature[k + "_f"]
        return (g.flatten(2) @ Mf.T).view_as(g)

    def _rate(self, name: str, k: int) -> Tensor | float:
        if self.lr_mode == "fixed":
            return self.lr
        rate = self.lrs[_key(name)]
        return rate if self.lr_mode == "metasgd" else rate[min(k, rate.numel() - 1)]

    def make_rule(self, params: Params, noise: dict[str, Tensor]) -> StepRule:
        masks = self.masks(params, noise) if self.masked else {}

        def rule(k: int, grads: Params) -> Params:
            out = {}
            for n, g in grads.items():
                if n in masks:
                    g = masks[n] * g
                out[n] = self._rate(n, k) * self._curve(n, g)
            return out

        return rule
