"""Meta-learner presets: which factors of W = T·U·V exist (and are meta-learned) in every layer.

maml: W = U; all weights adapt: θ' = θ − α∇θL (Finn et al. 2017).
tnet: W = T·U; U adapts, T meta-learned: W' = W − α·TTᵀ·G (Lee & Choi 2018, T-net).
tuv:  W = T·U·V; U adapts, T and V meta-learned: W' = W − α·TTᵀ·G·VᵀV (the seed).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    use_T: bool
    use_V: bool
    rule: str


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("maml", False, False, "W' = W - a*G"),
        Preset("tnet", True, False, "W' = W - a*TT^T*G"),
        Preset("tuv", True, True, "W' = W - a*TT^T*G*V^TV"),
    )
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)} (e.g. model=tuv).")
    return PRESETS[name]
