"""Meta-learner presets, run side by side in one code base. Update rules (G = ∂L/∂W, g = ∂L/∂θ):

maml:          W = U, every weight adapts:            θ' = θ − α·g                    (Finn et al. 2017)
fomaml:        maml, first order (support gradients detached from the meta-graph)
metasgd:       W = U, learned per-entry rates:        θ' = θ − α_θ ⊙ g                (Li et al. 2017)
lslr:          W = U, learned per-layer per-step:     θ' = θ − α_{θ,k}·g              (MAML++ LSLR, Antoniou+ 2019)
anil:          W = U, only the head adapts:           θ'_head = θ_head − α·g_head     (Raghu et al. 2020)
metacurvature: W = U, learned gradient transform:     W' = W − α·M_o·G·M_i (×₃ M_f)   (Park & Oliva 2019)
tnet:          W = T·U, U adapts:                     W' = W − α·TTᵀ·G                (Lee & Choi 2018)
mtnet:         tnet + mask m on U's rows:             W' = W − α·T·(m ⊙ Tᵀ·G)         (Lee & Choi 2018)
tuv:           W = T·U·V, U adapts:                   W' = W − α·TTᵀ·G·VᵀV            (the seed)
mtuv:          tuv + mask m on U's rows:              W' = W − α·T·(m ⊙ Tᵀ·G·Vᵀ)·V
tuv_bounded:   tuv with λmax(VᵀV ⊗ TTᵀ) < b by construction: W' = W − α·TTᵀ·G·VᵀV, with the soft spectral
               clip T = T̃·c·tanh(‖T̃‖₂/c)/‖T̃‖₂ (V alike), c = b^¼, b = model.max_step / α (metatuv/nn/bounded.py);
               test-time steps backtracked, θ ← θ − s·Δ with the largest s ∈ {1, ½, …} not raising the support
               loss (model.backtrack = 8, metatuv/inner/backtrack.py)
kfo:           W = U, learned PSD Kronecker transform:  W' = W − α·(AᵀA)·G·(BᵀB)       (MetaKFO, Arnold+ 2021)

Every preset with a learned T or V takes ``model.bound=tanh|spectral|spectrum`` (``none`` for tuv_bounded gives tuv);
every preset takes ``model.backtrack=N`` (test-time steps; 0 = plain).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    use_T: bool = False
    use_V: bool = False
    use_mask: bool = False
    lr_mode: str = "fixed"  # fixed | metasgd | lslr
    curvature: bool = False
    head_only: bool = False
    first_order: bool = False  # forces first order when true
    bound: str = "none"  # none | tanh | spectral | spectrum (metatuv.nn.bounded); needs use_T or use_V
    kfo: bool = False  # MetaKFO: Δ = α·(AᵀA)·G·(BᵀB) on plain weights (metatuv.meta.rule)
    backtrack: int = 0  # test-time steps: halvings tried so the support loss never rises (metatuv.inner.backtrack)


FIELDS = tuple(name for name in Preset.__dataclass_fields__ if name != "name")  # what conf/model/<name>.yaml holds

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("maml"),
        Preset("fomaml", first_order=True),
        Preset("metasgd", lr_mode="metasgd"),
        Preset("lslr", lr_mode="lslr"),
        Preset("anil", head_only=True),
        Preset("metacurvature", curvature=True),
        Preset("tnet", use_T=True),
        Preset("mtnet", use_T=True, use_mask=True),
        Preset("tuv", use_T=True, use_V=True),
        Preset("mtuv", use_T=True, use_V=True, use_mask=True),
        Preset("tuv_bounded", use_T=True, use_V=True, bound="tanh", backtrack=8),
        Preset("kfo", kfo=True),
    )
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)} (e.g. model=tuv).")
    return PRESETS[name]
