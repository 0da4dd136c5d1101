"""T and V from training statistics (Desjardins et al. 2015, Natural Neural Networks; K-FAC, Martens & Grosse 2015).

With W = T·U·V an SGD step on U moves W by −α·TTᵀ·G·VᵀV. Choosing

    TTᵀ = (Γ + λI)⁻¹,  VᵀV = (A + λI)⁻¹,   A = E[x xᵀ] (layer input),  Γ = E[δ δᵀ] (gradient at the layer output)

makes that step the K-FAC natural-gradient step vec(ΔW) = −α ((A + λI)⁻¹ ⊗ (Γ + λI)⁻¹) vec(G). We take the
symmetric roots T = (Γ + λI)^(−1/2), V = (A + λI)^(−1/2) and re-solve U = T⁻¹·W·V⁻¹ = (Γ + λI)^(1/2)·W·(A + λI)^(1/2)
(square roots from one symmetric eigendecomposition each; no inverse is formed), so the layer's function is unchanged.

Conv1d/2d/3d: V mixes input channels and T output channels (n×n, m×m), so A and Γ are *channel* covariances averaged
over samples and spatial positions, not patch covariances (those would be n·k²×n·k², the shape of no factor here).
A grouped conv's V (n/g × n/g) is shared by its g groups: A is the mean of the g within-group channel covariances.
δ is the per-sample gradient (the batch-mean loss's gradient × batch size): the empirical Fisher.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from metatuv.nn.tuv import TUVLayer

MODES = ("learned", "statistics", "statistics_init")


def _channel_cov(t: Tensor, dim: int, groups: int = 1) -> Tensor:
    """E[z zᵀ] over every dim but the channel one, ``dim``: a Linear's features are its last dim ((B, c) or
    (B, …, c)), a Conv1d/2d/3d's channels dim 1 ((B, c, *spatial)) → (c, c); with ``groups`` > 1 the mean of the g
    diagonal blocks, (c/g, c/g): a grouped conv's V is shared by its groups."""
    z = t.movedim(dim, 0).reshape(t.shape[dim], -1)
    cov = z @ z.T / z.shape[1]
    if groups == 1:
        return cov
    n = t.shape[dim] // groups
    return torch.stack([cov[g * n : (g + 1) * n, g * n : (g + 1) * n] for g in range(groups)]).mean(0)


class StatisticsTracker:
    """Running averages of A and Γ for every TUV layer of ``model`` (EMA with ``decay``; first value as is)."""

    def __init__(self, model: nn.Module, decay: float = 0.95) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"StatisticsTracker: decay={decay} must be in [0, 1).")
        self.model, self.decay = model, decay
        self.layers = {n: m for n, m in model.named_modules() if isinstance(m, TUVLayer)}
        self.A: dict[str, Tensor] = {}
        self.G: dict[str, Tensor] = {}

    def _update(self, store: dict[str, Tensor], name: str, value: Tensor) -> None:
        old = store.get(name)
        store[name] = value if old is None else self.decay * old + (1 - self.decay) * value

    def state_dict(self) -> dict[str, dict[str, Tensor]]:
        return {"A": dict(self.A), "G": dict(self.G)}

    def load_state_dict(self, state: dict[str, dict[str, Tensor]]) -> None:
        self.A, self.G = dict(state["A"]), dict(state["G"])

    def observe(self, loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor) -> None:
        """One forward/backward pass of the model's own parameters on (x, y), recording A and Γ per layer (a layer
        used several times in the pass, e.g. tied: the mean over its uses, then one running-average update)."""
        handles, batch = [], x.shape[0]
        seen_A: dict[str, list[Tensor]] = {}
        seen_G: dict[str, list[Tensor]] = {}

        def hook(name: str):
            def forward_hook(module: nn.Module, inputs: tuple[Tensor], output: Tensor) -> None:
                dim = -1 if isinstance(module, nn.Linear) else 1
                seen_A.setdefault(name, []).append(_channel_cov(inputs[0].detach(), dim, getattr(module, "groups", 1)))
                output.register_hook(
                    lambda g: seen_G.setdefault(name, []).append(_channel_cov(g.detach() * batch, dim))
                )

            return forward_hook

        for name, layer in self.layers.items():
            handles.append(layer.register_forward_hook(hook(name)))
        try:
            params = [p for p in self.model.parameters() if p.requires_grad]
            torch.autograd.grad(loss_fn(self.model(x), y), params, allow_unused=True)
        finally:
            for h in handles:
                h.remove()
        for store, seen in ((self.A, seen_A), (self.G, seen_G)):
            for name, values in seen.items():
                self._update(store, name, torch.stack(values).mean(0))


def _roots(S: Tensor, damping: float, normalize: bool) -> tuple[Tensor, Tensor]:
    """((S + λI)^(−1/2), (S + λI)^(1/2)) for symmetric PSD S from one eigendecomposition (eigenvalues clamped at 0).

    ``normalize`` rescales S + λI by c = mean((eig + λ)⁻¹) so that (S + λI)⁻¹ has mean eigenvalue 1: the step keeps
    the K-FAC direction but not its overall size, which otherwise follows the scale of the loss.
    """
    evals, Q = torch.linalg.eigh(S)
    d = evals.clamp_min(0) + damping  # eigenvalues of S + λI
    if normalize:
        d = d * d.reciprocal().mean()
    return (Q * d.rsqrt()) @ Q.T, (Q * d.sqrt()) @ Q.T


@torch.no_grad()
def set_from_statistics(layer: TUVLayer, A: Tensor, G: Tensor, damping: float = 1e-3, normalize: bool = False) -> None:
    """T ← (Γ + λI)^(−1/2), V ← (A + λI)^(−1/2), U ← (Γ + λI)^(1/2)·W·(A + λI)^(1/2): W = T·U·V is unchanged.

    A factor the layer does not have (use_T / use_V False) stays the identity. ``normalize``: see ``_roots``.
    """
    if damping <= 0:
        raise ValueError(f"set_from_statistics: damping={damping} must be > 0 (try 1e-3).")
    if getattr(layer, "bound", None) is not None or getattr(layer, "bias_inside_T", False):
        raise ValueError(  # bounded T, V are computed (a write would vanish); a bias inside T would move with T
            f"set_from_statistics: {type(layer).__name__} with bounded factors or bias_inside_T cannot take T and V "
            "from statistics; use model.bound=none and model.bias_inside_T=false with metric=statistics."
        )
    W = layer.weight
    U = W
    if layer.T is not None:
        inv_root, root = _roots(G, damping, normalize)
        layer.T.copy_(inv_root)
        U = torch.einsum("oa,a...->o...", root, U)
    if layer.V is not None:
        inv_root, root = _roots(A, damping, normalize)
        layer.V.copy_(inv_root)
        U = torch.einsum("oa...,ai->oi...", U, root) if U.dim() > 2 else U @ root
    layer.U.copy_(U)


def reestimate(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    data: Iterable[tuple[Tensor, Tensor]],
    damping: float = 1e-3,
    tracker: StatisticsTracker | None = None,
    normalize: bool = False,
) -> StatisticsTracker:
    """Observe (x, y) batches, then re-set every TUV layer's T, V and U from the (running) statistics."""
    tracker = tracker or StatisticsTracker(model)
    for x, y in data:
        tracker.observe(loss_fn, x, y)
    for name, layer in tracker.layers.items():
        if name not in tracker.A:
            raise ValueError(f"reestimate: layer {name!r} saw no data; pass at least one (x, y) batch.")
        set_from_statistics(layer, tracker.A[name], tracker.G[name], damping, normalize)
    return tracker
