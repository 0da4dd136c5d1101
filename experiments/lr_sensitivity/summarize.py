"""Learning-rate sensitivity table and plot (issue 10, study 2). Run from the repository root:

    python experiments/lr_sensitivity/summarize.py   # writes experiments/lr_sensitivity/results.md, mse_vs_alpha.png

alpha = 0.04, 0.1 from experiments/lr_sensitivity/runs/lr<alpha>/<preset>/seed<s>/, alpha = 0.01 from the sinusoid
table's 10-shot runs (same config). Meta-test MSE over 600 tasks after 10 and after 1 inner step (mean ± 95% CI).
"""

from __future__ import annotations

import json
from pathlib import Path

from metatuv.figure import figure
from metatuv.report import mean_ci

HERE = Path(__file__).parent
PRESETS = ("maml", "metasgd", "tnet", "mtnet", "tuv", "mtuv")
ALPHAS = (0.01, 0.04, 0.1)


def runs_for(alpha: float, preset: str) -> list[Path]:
    if alpha == 0.01:
        return sorted((HERE.parent / "sinusoid" / "runs" / "10shot" / preset).glob("seed*/results.json"))
    return sorted((HERE / "runs" / f"lr{alpha}" / preset).glob("seed*/results.json"))


def score(result: Path, steps: int) -> tuple[float, float] | None:
    """(mean, ci) after ``steps`` test steps: results.json for 10, eval-test-1steps-600tasks.json for 1."""
    if steps == 10:
        r = json.loads(result.read_text())
        return r["test"], r["test_ci95"]
    one = result.with_name("eval-test-1steps-600tasks.json")
    if not one.exists():
        return None
    e = json.loads(one.read_text())
    return e["mean"], e["ci95"]


def table(steps: int) -> tuple[list[str], dict]:
    stats: dict[tuple[str, float], tuple[float, float, int]] = {}
    for p in PRESETS:
        for a in ALPHAS:
            found = [x for f in runs_for(a, p) if (x := score(f, steps)) is not None]
            if found:
                mean, ci = mean_ci([m for m, _ in found], [c for _, c in found])
                stats[(p, a)] = (mean, ci, len(found))
    lines = [
        f"**{steps} inner step{'s' if steps > 1 else ''} at meta-test**",
        "",
        "| preset | " + " | ".join(f"α = {a}" for a in ALPHAS) + " | worst / best |",
        "|---|" + "---:|" * (len(ALPHAS) + 1),
    ]
    for p in PRESETS:
        cells, means = [], []
        for a in ALPHAS:
            st = stats.get((p, a))
            cells.append("—" if st is None else ("diverged (NaN)" if st[0] != st[0] else f"{st[0]:.3f} ± {st[1]:.3f}"))
            if st is not None:
                means.append(st[0])
        ok = len(means) == len(ALPHAS) and all(m == m for m in means)
        ratio = f"{max(means) / min(means):.2f}" if ok else ("∞ (NaN)" if len(means) == len(ALPHAS) else "—")
        lines.append(f"| {p} | " + " | ".join(cells) + f" | {ratio} |")
    return lines, stats


def main() -> None:
    lines = [
        "Sinusoid 10-shot, seed 0, meta-test MSE over 600 tasks, mean ± 95% CI; last column: worst / best MSE over",
        "the three α (1 = insensitive). α is the training and test step size (for metasgd: the initial rates).",
        "",
    ]
    all_stats = {}
    for steps in (10, 1):
        part, all_stats[steps] = table(steps)
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
