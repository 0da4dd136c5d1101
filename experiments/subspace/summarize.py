"""Subspace dimension against task complexity (issue 10, study 3). Run from the repository root:

    python experiments/subspace/summarize.py   # writes experiments/subspace/results.md and mask_vs_order.png

Reads experiments/subspace/runs/order<o>/<preset>/seed<s>/results.json: the MT-net mask on-fractions per layer
("hard": units with P(on) > 1/2; "expected": mean P(on)) and the meta-test MSE (10 steps, 600 tasks).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from metatuv.figure import figure

HERE = Path(__file__).parent
PRESETS = ("mtnet", "mtuv")
ORDERS = (0, 1, 2)


def main() -> None:
    found: dict[tuple[str, int], list[dict]] = {}
    for f in sorted((HERE / "runs").glob("order*/*/seed*/results.json")):
        order, preset = int(f.parts[-4].removeprefix("order")), f.parts[-3]
        found.setdefault((preset, order), []).append(json.loads(f.read_text()))
    lines = [
        "Polynomial regression, 10-shot. Mask on-fraction per layer (hard: P(on) > 1/2; expected: mean P(on)),",
        "mean over seeds (± the standard deviation across seeds); meta-test MSE over 600 tasks after 10 steps, mean",
        "over seeds.",
        "",
        "| preset | order | seeds | layer 0 hard / exp. | layer 2 hard / exp. | layer 4 hard / exp. | MSE |",
        "|---|---:|---:|---|---|---|---:|",
    ]
    series: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    for p in PRESETS:
        for o in ORDERS:
            rs = found.get((p, o))
            if not rs:
                continue
            cells = []
            for layer in ("0", "2", "4"):
                hard = float(np.mean([r["mask_fractions"][layer]["hard"] for r in rs]))
                exps = [r["mask_fractions"][layer]["expected"] for r in rs]
                exp, sd = float(np.mean(exps)), float(np.std(exps, ddof=1)) if len(exps) > 1 else 0.0
                cells.append(f"{hard:.3f} / {exp:.3f}" + (f" ± {sd:.3f}" if len(exps) > 1 else ""))
                series.setdefault((p, layer, "hard"), []).append((o, hard))
                series.setdefault((p, layer, "expected"), []).append((o, exp))
            mse = np.mean([r["test"] for r in rs])
            lines.append(f"| {p} | {o} | {len(rs)} | " + " | ".join(cells) + f" | {mse:.3g} |")
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    fig = figure((10, 3.8), layout="constrained")
    axes = fig.subplots(1, len(PRESETS), sharey=True)
    for ax, p in zip(axes, PRESETS, strict=True):
        for i, layer in enumerate(("0", "2", "4")):
            for kind, style in (("hard", "o-"), ("expected", "s--")):
                pts = series.get((p, layer, kind), [])
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    ax.plot(xs, ys, style, color=f"C{i}", label=f"layer {layer} ({kind})")
        ax.set_xticks(ORDERS)
        ax.set_xlabel("polynomial order")
        ax.set_title(p)
    axes[0].set_ylabel("mask on-fraction")
    axes[-1].legend(fontsize=7)
    fig.savefig(HERE / "mask_vs_order.png", dpi=90)


if __name__ == "__main__":
    main()
