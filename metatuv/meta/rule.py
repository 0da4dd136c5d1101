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

Each factor is one transform of metatuv/inner/transforms.py; InnerRule holds their parameters and chains them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metatuv.inner import transforms as tf
from metatuv.inner.transforms import RATES, mask_sample
from metatuv.nn import TUVLayer

LR_MODES = RATES
__all__ = ["LR_MODES", "InnerRule", "mask_sample"]


def _key(name: str) -> str:
    return name.replace(".", "__")  # ParameterDict keys may not contain dots


class InnerRule(nn.Module):
    """Holds the rule's own meta parameters (learned rates, curvature, KFO factors); ``transform`` chains them."""

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
        self.fast_names = list(fast_names)
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
        return tf.logistic_noise(self._units, tasks, generator, like)

    def transform(self, model_prefix: str = "model.", prefix: str = "rule.") -> tf.Transform:
        """chain(mask, curvature or kfo, rate) reading its parameters from a dict by the owner's names:
        ``model_prefix`` + the model's mask-logit names, ``prefix`` + this module's parameter names (a
        MetaLearner's defaults: ``model.0.mask_logit``, ``rule.lrs.0__U``). Each task's ``extra`` holds the mask
        noise by model-relative logit name (``mask_noise``)."""
        steps = []
        if self.masked:
            gates = {model_prefix + logit: (logit, gated) for logit, gated in self.masked.items()}
            steps.append(tf.mask(gates, self.temperature))
        curve, kron, keys = {}, {}, {}
        for n in self.fast_names:
            k = _key(n)
            c = [f"{prefix}curvature.{k}{s}" for s in ("_o", "_i", "_f") if k + s in self.curvature]
            if c:
                curve[n] = tuple(c)
            if k + "_l" in self.kfo:
                kron[n] = (f"{prefix}kfo.{k}_l", f"{prefix}kfo.{k}_r")
            keys[n] = f"{prefix}lrs.{k}"
        if curve:
            steps.append(tf.curvature(curve))
        if kron:
            steps.append(tf.kfo(kron))
        steps.append(tf.rate(self.lr_mode, self.lr, keys))
        return tf.chain(*steps)
