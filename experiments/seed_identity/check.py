"""The seed's claim on a trained model (issue 10, study 4): one inner SGD step of size α on U moves W = T·U·V by

    ΔW = −α·TTᵀ·(∂L/∂W)·VᵀV,   vec(ΔW) = −α (VᵀV ⊗ TTᵀ) vec(∂L/∂W)   (column-stacking vec; seed, Eq. 2)

Measured: ΔW from metatuv's own inner loop (``MetaLearner.adapt_task``, 1 step, float64). Predicted: ∂L/∂W from
an independent plain network (``nn.Linear`` layers holding W = T·U·V as leaves, autograd), both the matrix form
and the dense Kronecker form. Also plots the learned spectra of TTᵀ and VᵀV per layer. Run from the repo root:

    python experiments/seed_identity/check.py experiments/sinusoid/runs/10shot/tuv/seed0 [more run folders]

Writes experiments/seed_identity/results.md (appends one table per run) and spectra-<K>shot-<preset>.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from metatuv.build import build_learner  # noqa: E402
from metatuv.checkpoint import load_checkpoint  # noqa: E402
from metatuv.metric.factors import dense_preconditioner, factors  # noqa: E402
from metatuv.metric.summary import tuv_layers  # noqa: E402
from metatuv.nn.tuv import TUVLinear, compose  # noqa: E402
from metatuv.runstate import CHECKPOINT, stored_config  # noqa: E402

HERE = Path(__file__).parent


def plain_gradients(model: nn.Sequential, xs: torch.Tensor, ys: torch.Tensor) -> dict[str, torch.Tensor]:
    """∂L_support/∂W per TUV layer, from a plain copy of the network whose Linear layers hold W = T·U·V."""
    layers, weights = [], {}
    for name, module in model.named_children():
        if isinstance(module, TUVLinear):
            plain = nn.Linear(module.in_features, module.out_features, dtype=module.U.dtype)
            plain.weight = nn.Parameter(module.weight.detach().clone())
            plain.bias = nn.Parameter(module.bias.detach().clone())
            weights[name] = plain.weight
            module = plain
        elif any(True for _ in module.parameters()):
            raise ValueError(f"layer {name} ({type(module).__name__}) has parameters; this check covers MLPs only.")
        layers.append(module)
    loss = nn.functional.mse_loss(nn.Sequential(*layers)(xs), ys)
    grads = torch.autograd.grad(loss, list(weights.values()))
    return dict(zip(weights, grads, strict=True))


def check(run: Path) -> tuple[str, dict]:
    state, _ = load_checkpoint(run / CHECKPOINT)
    cfg = stored_config(state["config"])  # keys added since the run filled in
    if cfg.benchmark.name not in ("sinusoid", "polynomial"):
        raise ValueError(f"{run}: benchmark {cfg.benchmark.name}; this check covers the regression MLPs.")
    setup, preset, learner = build_learner(cfg)
    learner.load_state_dict(state["learner"])
    learner.double()
    alpha = float(cfg.inner.lr)
    xs, ys, *_ = next(setup.test())  # first meta-test batch of the run's test stream
    xs, ys = xs[0].double(), ys[0].double()  # one task's support set
    params = learner.params()
    with torch.no_grad():
        fast = learner.adapt_task(params, xs, ys, steps=1)
    grads = plain_gradients(learner.model, xs, ys)
    rows, spectra = [], {}
    for name, layer in tuv_layers(learner.model).items():
        U1 = fast[f"{name}.U"]
        dW = (compose(layer.T, U1, layer.V) - layer.weight).detach()  # measured, through metatuv's inner loop
        left, right = (f.detach() for f in factors(layer))
        G = grads[name]
        pred = -alpha * left @ G @ right
        kron = (-alpha * dense_preconditioner(layer).detach() @ G.T.reshape(-1)).reshape(G.shape[1], G.shape[0]).T
        scale = pred.abs().max().item()
        spectra[name] = (torch.linalg.eigvalsh(left).flip(0), torch.linalg.eigvalsh(right).flip(0))
        rows.append(
            f"| {name} | {tuple(G.shape)} | {layer.weight.abs().max().item():.3f} | {scale:.3e} | "
            f"{(dW - pred).abs().max().item():.1e} | {(dW - pred).abs().max().item() / scale:.1e} | "
            f"{(dW - kron).abs().max().item() / scale:.1e} | {(-alpha * G - dW).abs().max().item() / scale:.2f} |"
        )
    title = f"{cfg.benchmark.shots}shot-{preset.name}"
    table = "\n".join(
        [
            f"### {run} ({preset.name}, {cfg.benchmark.shots}-shot, meta-step {state['step']}, α = {alpha})",
            "",
            "| layer | W shape | max\\|W\\| | max\\|ΔW\\| | matrix form: max error | same / max\\|ΔW\\| "
            "| Kronecker form: same | plain-SGD step −αG: same |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
            *rows,
        ]
    )
    return title, {"table": table, "spectra": spectra}


def plot(title: str, spectra: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, len(spectra), figsize=(4 * len(spectra), 3.4), squeeze=False)
    for ax, (name, (tt, vv)) in zip(axes[0], spectra.items(), strict=True):
        ax.semilogy(range(1, len(tt) + 1), tt.clamp_min(1e-12).numpy(), "o-", ms=3, label="eig TTᵀ")
        ax.semilogy(range(1, len(vv) + 1), vv.clamp_min(1e-12).numpy(), "s-", ms=3, label="eig VᵀV")
        ax.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax.set_title(f"layer {name}: TTᵀ {len(tt)}×{len(tt)}, VᵀV {len(vv)}×{len(vv)}")
        ax.set_xlabel("index (descending)")
        ax.legend()
    fig.suptitle(f"learned spectra, {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path, nargs="+", help="metatuv-train run folders (a TUV preset on sinusoid)")
    p.add_argument("--out", type=Path, default=HERE)
    a = p.parse_args()
    tables = []
    for run in a.runs:
        title, r = check(run)
        plot(title, r["spectra"], a.out / f"spectra-{title}.png")
        print(r["table"], "\n")
        tables.append(r["table"])
    (a.out / "results.md").write_text("\n\n".join(tables) + "\n")


if __name__ == "__main__":
    main()
