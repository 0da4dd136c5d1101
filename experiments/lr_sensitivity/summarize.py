"""Learning-rate sensitivity table and plot (issue 10, study 2). Run from the repository root:

    python experiments/lr_sensitivity/summarize.py   # writes experiments/lr_sensitivity/results.md, mse_vs_alpha.png

alpha = 0.04, 0.1 from experiments/lr_sensitivity/runs/lr<alpha>/<preset>/seed<s>/, alpha = 0.01 from the sinusoid
table's 10-shot runs (same config). Meta-test MSE over 600 tasks after 10 inner steps (mean ± 95% CI).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from metatuv.report import mean_ci  # noqa: E402

HERE = Path(__file__).parent
PRESETS = ("maml", "metasgd", "tnet", "mtnet", "tuv", "mtuv")
ALPHAS = (0.01, 0.04, 0.1)


def runs_for(alpha: float, preset: str) -> list[Path]:
    if alpha == 0.01:
        return sorted((HERE.parent / "sinusoid" / "runs" / "10shot" / preset).glob("seed*/results.json"))
    return sorted((HERE / "runs" / f"lr{alpha}" / preset).glob("seed*/results.json"))


def main() -> None:
    stats: dict[tuple[str, float], tuple[float, float, int]] = {}
    for p in PRESETS:
        for a in ALPHAS:
            rs = [json.loads(f.read_text()) for f in runs_for(a, p)]
            if rs:
                mean, ci = mean_ci([r["test"] for r in rs], [r["test_ci95"] for r in rs])
                stats[(p, a)] = (mean, ci, len(rs))
    lines = [
        "Sinusoid 10-shot, meta-test MSE over 600 tasks after 10 inner steps, mean ± 95% CI; last column: worst / best",
        "MSE over the three alphas (1 = insensitive; NaN = diverged at some alpha).",
        "",
        "| preset | " + " | ".join(f"α = {a}" for a in ALPHAS) + " | worst / best |",
        "|---|" + "---:|" * (len(ALPHAS) + 1),
    ]
    for p in PRESETS:
        cells, means = [], []
        for a in ALPHAS:
            s = stats.get((p, a))
            cells.append("—" if s is None else ("diverged (NaN)" if s[0] != s[0] else f"{s[0]:.3f} ± {s[1]:.3f}"))
            if s is not None:
                means.append(s[0])
        ratio = f"{max(means) / min(means):.2f}" if len(means) == len(ALPHAS) else "—"
        lines.append(f"| {p} | " + " | ".join(cells) + f" | {ratio} |")
    seeds = sorted({s[2] for s in stats.values()})
    lines += ["", f"Seeds per cell: {seeds}."]
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    fig, ax = plt.subplots(figsize=(6, 4))
    for p in PRESETS:
        pts = [(a, stats[(p, a)]) for a in ALPHAS if (p, a) in stats and stats[(p, a)][0] == stats[(p, a)][0]]
        if pts:
            xs, ss = zip(*pts, strict=True)
            ax.errorbar(xs, [s[0] for s in ss], yerr=[s[1] for s in ss], marker="o", capsize=3, label=p)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(ALPHAS, [str(a) for a in ALPHAS])
    ax.set_xlabel("inner step size α")
    ax.set_ylabel("meta-test MSE (10 steps, 600 tasks)")
    ax.set_title("sinusoid 10-shot: sensitivity to α")
    ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "mse_vs_alpha.png", dpi=90)


if __name__ == "__main__":
    main()
