"""metatuv-report's figures: learning curves (meta-training loss vs step) and inner-lr sensitivity.

Rows (``metatuv.report.Row``) come from ``metatuv.report.summarize``; each figure is written with ``save_figure``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.ticker import MaxNLocator, NullFormatter

from metatuv.figure import figure
from metatuv.files import save_figure

if TYPE_CHECKING:
    from metatuv.report import Row

LR = "inner.lr"
SMOOTH_ABOVE = 50  # steps; longer curves are drawn as a moving average over ~2% of their length (>= 5 steps)


def _scale(metric: str) -> tuple[float, str]:
    return (100.0, "%") if metric == "accuracy" else (1.0, "")


def _metrics(rows: list[Row]) -> list[str]:
    return sorted({j.results["metric"] for r in rows for j in r.jobs})


def mean_curve(row: Row) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, meta-training loss averaged over the row's jobs), cut to the shortest history; None without any."""
    hists = [j.history for j in row.jobs if j.history and j.history.get("loss")]
    if not hists:
        return None
    n = min(len(h["loss"]) for h in hists)
    loss = np.mean([np.asarray(h["loss"][:n], dtype=float) for h in hists], axis=0)
    steps = np.asarray(hists[0].get("step", range(n))[:n], dtype=float)
    return steps, loss


def smooth(steps: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Trailing moving average over ~2% of the curve when it has more than SMOOTH_ABOVE steps; (x, y, window)."""
    if len(loss) <= SMOOTH_ABOVE:
        return steps, loss, 1
    w = max(5, len(loss) // 50)
    return steps[w - 1 :], np.convolve(loss, np.ones(w) / w, mode="valid"), w


def plot_learning_curves(keys: list[str], rows: list[Row], path: Path) -> Path:
    """Meta-training loss vs step, one line per configuration (mean over seeds); log-y for MSE."""
    fig = figure((7, 4.5))
    ax = fig.add_subplot()
    windows, drawn, positive = set(), 0, True
    for r in rows:
        curve = mean_curve(r)
        if curve is None:
            continue
        x, y, w = smooth(*curve)
        windows.add(w)
        positive &= bool((y[np.isfinite(y)] > 0).all())
        ax.plot(x, y, lw=1.2, label=f"{r.label(keys)} (n={r.n})" if r.n > 1 else r.label(keys))
        drawn += 1
    if drawn == 0:
        ax.text(0.5, 0.5, "no history.json in any job", ha="center", va="center", transform=ax.transAxes)
    if _metrics(rows) == ["MSE"] and positive and drawn:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("meta-step")
    ax.set_ylabel("meta-training loss")
    title = "meta-training loss (mean over seeds)"
    if windows - {1}:
        title += f", moving average over {'/'.join(str(w) for w in sorted(windows - {1}))} steps"
    ax.set_title(title, fontsize=10)
    if drawn:
        ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    return path


def _lr_of(row: Row, index: int) -> float:
    """inner.lr of a row: the resolved config's value, else the override string as a float."""
    cfg = row.jobs[0].config or {}
    lr = (cfg.get("inner") or {}).get("lr")
    if lr is None:
        try:
            lr = float(row.values[index])
        except ValueError:
            raise ValueError(
                f"inner.lr={row.values[index]!r} in {row.jobs[0].folder} is not a number and its .hydra/config.yaml "
                "has no inner.lr; pass plain numbers, e.g. inner.lr=0.01,0.04."
            ) from None
    return float(lr)


def plot_lr_sensitivity(keys: list[str], rows: list[Row], path: Path) -> Path:
    """Meta-test metric vs inner.lr (log-x), one line per preset (per value of the other swept keys), CI bars."""
    i = keys.index(LR)
    others = [k for k in keys if k != LR]
    groups: dict[tuple[str, ...], list[Row]] = {}
    for r in rows:
        groups.setdefault(tuple(v for k, v in zip(keys, r.values, strict=True) if k != LR), []).append(r)
    metrics = _metrics(rows)
    pct, unit = _scale(metrics[0]) if len(metrics) == 1 else (1.0, "")
    fig = figure((6, 4.2))
    ax = fig.add_subplot()
    lrs = set()
    for values, group in groups.items():
        pts = sorted(((_lr_of(r, i), r.stat("test")) for r in group), key=lambda p: p[0])
        lrs.update(lr for lr, _ in pts)
        bad = [lr for lr, s in pts if s is None or not math.isfinite(s[0])]
        pts = [(lr, s) for lr, s in pts if lr not in bad]
        label = ", ".join(f"{k}={v}" for k, v in zip(others, values, strict=True))
        label = label or group[0].jobs[0].results.get("preset", "")
        if bad:
            label += f" (no finite value at α={', '.join(f'{lr:g}' for lr in bad)})"
        x = [lr for lr, _ in pts]
        y = [pct * s[0] for _, s in pts]
        err = [0.0 if math.isnan(s[1]) else pct * s[1] for _, s in pts]
        ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=3, lw=1.2, label=label)
    ax.set_xscale("log")
    ax.set_xticks(sorted(lrs), [f"{lr:g}" for lr in sorted(lrs)])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("inner-loop step size α (inner.lr)")
    ax.set_ylabel(f"meta-test {'/'.join(metrics)}{' (%)' if unit else ''}")
    ax.set_title("inner-lr sensitivity (mean ± 95% CI)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    return path
