"""Learning-rate sensitivity table and plot (issue 10, study 2). Run from the repository root:

    python experiments/lr_sensitivity/summarize.py   # writes experiments/lr_sensitivity/results.md, mse_vs_alpha.png

alpha = 0.04, 0.1 from records.json and experiments/lr_sensitivity/runs/lr<alpha>/<preset>/seed<s>/, alpha = 0.01
from the sinusoid table's 10-shot records (same config); see experiments/records.py. Meta-test MSE over 600 tasks
after 10 and after 1 inner step (mean ± 95% CI). A seed whose score is NaN (a test task diverged) is named in the
cell, not averaged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from metatuv.figure import figure

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
from records import seed_stat, stat_text, sync  # noqa: E402

PRESETS = ("maml", "metasgd", "tnet", "mtnet", "tuv", "mtuv")
ALPHAS = (0.01, 0.04, 0.1)


def scores() -> dict[tuple[str, float, int], list[tuple[float, float, int]]]:
    """{(preset, alpha, test steps): [(mean, ci, seed), ...]} over 600 tasks: alpha 0.04 and 0.1 from this study's
    records.json (updated with runs/lr<alpha>/<preset>/seed<s>/), alpha 0.01 from the sinusoid table's 10-shot
    records (experiments/records.py)."""
    out: dict[tuple[str, float, int], list[tuple[float, float, int]]] = {}
    mine = sync(HERE, "lr*/*/seed*/results.json", lambda f: {"alpha": float(f.parts[-4].removeprefix("lr"))})
    sinusoid = json.loads((HERE.parent / "sinusoid" / "records.json").read_text())
    for r in mine + [{**r, "alpha": 0.01} for r in sinusoid if r["shots"] == 10]:
        if r["tasks"] == 600:
            out.setdefault((r["preset"], r["alpha"], r["test_steps"]), []).append((r["mean"], r["ci95"], r["seed"]))
    return out


def table(steps: int, found: dict) -> tuple[list[str], dict]:
    stats: dict[tuple[str, float], tuple[float, float, list[int]]] = {}
    for p in PRESETS:
        for a in ALPHAS:
            if cell := found.get((p, a, steps)):
                stats[(p, a)] = seed_stat([m for m, _, _ in cell], [c for _, c, _ in cell], [s for _, _, s in cell])
    lines = [
        f"**{steps} inner step{'s' if steps > 1 else ''} at meta-test**",
        "",
        "| preset | " + " | ".join(f"α = {a}" for a in ALPHAS) + " | worst / best |",
        "|---|" + "---:|" * (len(ALPHAS) + 1),
    ]
    for p in PRESETS:
        cells = [stat_text(stats.get((p, a))) for a in ALPHAS]
        found_all = all((p, a) in stats for a in ALPHAS)
        means = [stats[(p, a)][0] for a in ALPHAS if (p, a) in stats]
        diverged = found_all and any(stats[(p, a)][2] for a in ALPHAS)
        if not found_all:
            ratio = "—"
        elif any(m != m for m in means):
            ratio = "∞ (NaN)"
        else:
            ratio = f"{max(means) / min(means):.2f}" + (" (finite seeds; ∞ with NaN)" if diverged else "")
        lines.append(f"| {p} | " + " | ".join(cells) + f" | {ratio} |")
    return lines, stats


def main() -> None:
    found = scores()
    seeds = sorted({seed for cell in found.values() for _, _, seed in cell})
    lines = [
        f"Sinusoid 10-shot, seeds {seeds}, meta-test MSE over 600 tasks, mean ± 95% CI (over tasks for one seed,",
        "across seeds for several); last column: worst / best MSE over the three α (1 = insensitive).",
        "α is the training and test step size (for metasgd: the initial rates).",
        "",
    ]
    all_stats = {}
    for steps in (10, 1):
        part, all_stats[steps] = table(steps, found)
        lines += part + [""]
    (HERE / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))

    fig = figure((10, 3.8), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, steps in zip(axes, (1, 10), strict=True):
        stats = all_stats[steps]
        for i, p in enumerate(PRESETS):
            pts = [(a, stats[(p, a)]) for a in ALPHAS if (p, a) in stats and stats[(p, a)][0] == stats[(p, a)][0]]
            if pts:
                xs, ss = zip(*pts, strict=True)
                ax.errorbar(
                    xs, [x[0] for x in ss], yerr=[x[1] for x in ss], marker="o", capsize=3, label=p, color=f"C{i}"
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.minorticks_off()
        ax.set_xticks(ALPHAS, [str(a) for a in ALPHAS])
        ax.set_xlabel("inner step size α")
        ax.set_title(f"{steps} test step{'s' if steps > 1 else ''} (missing point = diverged)")
    axes[0].set_ylabel("meta-test MSE (600 tasks)")
    axes[0].legend()
    fig.savefig(HERE / "mse_vs_alpha.png", dpi=90)


if __name__ == "__main__":
    main()
