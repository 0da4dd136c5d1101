"""PNG pictures of a TUV layer's learned metric: heatmaps of T and V and the spectra of TTᵀ and VᵀV."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from metatuv.figure import figure
from metatuv.files import save_figure
from metatuv.metric.summary import factor_spectra, tuv_layers


@torch.no_grad()
def save_factor_figures(model: nn.Module, folder: Path, step: int) -> dict[str, Path]:
    """One PNG per TUV layer with T, V (heatmaps, absent factor = identity) and both spectra (log scale).

    Returns {layer name: path}; files are ``<folder>/<layer>-step<step>.png``. No pyplot state: safe on the logger's
    thread.
    """
    folder.mkdir(parents=True, exist_ok=True)
    spectra = factor_spectra(model)
    paths = {}
    for name, layer in tuv_layers(model).items():
        label = name or "layer"
        fig = figure((12, 3.6))
        axes = fig.subplots(1, 3, gridspec_kw={"left": 0.03, "right": 0.98, "bottom": 0.15, "top": 0.82, "wspace": 0.3})
        for ax, key in zip(axes[:2], ("T", "V"), strict=True):
            mat = getattr(layer, key)
            dim = layer.U.shape[0] if key == "T" else layer.U.shape[1]
            mat = torch.eye(dim) if mat is None else mat.detach().float().cpu()
            lim = mat.abs().max().item() or 1.0
            im = ax.imshow(mat.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_title(f"{key} ({dim}×{dim})")
            ax.set_xticks([])  # row/column indices carry no meaning; tick layout dominated the drawing time
            ax.set_yticks([])
            bar = fig.colorbar(im, ax=ax, fraction=0.046)
            bar.set_ticks([-lim, 0.0, lim])
            bar.ax.tick_params(labelsize=7)
            bar.ax.minorticks_off()
        ax = axes[2]
        for key, color, text in (("TT", "C0", "TTᵀ"), ("VV", "C1", "VᵀV")):
            evals = spectra[name][key].clamp_min(1e-12).flip(0).numpy()
            ax.semilogy(range(1, len(evals) + 1), evals, "o-", ms=3, color=color, label=f"eig {text}")
        ax.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax.minorticks_off()  # tick layout dominated the drawing time (no tight_layout either)
        ax.set_xlabel("index (descending)")
        ax.set_title("spectra")
        ax.legend()
        fig.suptitle(f"{label}, meta-step {step}")
        path = folder / f"{label}-step{step}.png"
        save_figure(fig, path, dpi=80)  # atomic: a kill while drawing leaves no half PNG
        paths[name] = path
    return paths
