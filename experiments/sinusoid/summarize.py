"""Sinusoid table (issue 10, study 1) from experiments/sinusoid/runs/<K>shot/<preset>/seed<s>/. Run from the repo root:

    python experiments/sinusoid/summarize.py     # writes experiments/sinusoid/results.md and mse_vs_shots.png

Scores come from records.json (kept in git, one record per run and test-step count) updated with the runs found
under runs/<K>shot/<preset>/seed<s>/ (experiments/records.py): seeds run in different sessions add up.

Meta-test MSE over 600 tasks after 10 inner steps (results.json, Lee & Choi's protocol) and after 1 step
(eval-test-1steps-600tasks.json, the Meta-SGD paper's); mean ± 95% CI: over tasks for one seed, across seeds
(1.96·s/√n) for several. A seed whose score is NaN (a test task diverged) is named in the cell, not averaged.
"""

from __future__ import annotations

import sys
from pathlib import Path

from metatuv.figure import figure

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
from records import seed_stat, stat_text, sync  # noqa: E402

PRESETS = ("maml", "metasgd", "tnet", "mtnet", "tuv", "mtuv")
SHOTS = (5, 10, 20)
# Published, 1 inner step at test: Meta-SGD paper (Li et al. 2017, arXiv:1707.09835) Table 1, 5-shot, as quoted in
# PaddlePaddle/PARL benchmark/torch/maml++/README.md. 10/20-shot values could not be verified (see README.md).
PUBLISHED_1STEP = {("maml", 5): "1.13 ± 0.18", ("metasgd", 5): "0.90 ± 0.16"}


def load() -> dict[tuple[str, int, int], dict]:
    """{(preset, shots, test steps): {"values": [...], "cis": [...], "seeds": [...], "seconds": [...]}} from
    records.json, updated with the runs under runs/ (experiments/records.py)."""
    table: dict[tuple[str, int, int], dict] = {}
    for r in sync(HERE, "*shot/*/seed*/results.json", lambda f: {"shots": int(f.parts[-4].removesuffix("shot"))}):
        if r["tasks"] != 600:
            continue
        cell = table.setdefault(
            (r["preset"], r["shots"], r["test_steps"]), {"values": [], "cis": [], "seeds": [], "seconds": []}
        )
        cell["values"].append(r["mean"])
        cell["cis"].append(r["ci95"])
        cell["seeds"].append(r["seed"])
        if r.get("train_seconds") is not None:
            cell["seconds"].append(r["train_seconds"])
    return table


def stat(cell: dict | None) -> tuple[float, float, list[int]] | None:
    return None if cell is None else seed_stat(cell["values"], cell["cis"], cell["seeds"])


def fmt(cell: dict | None) -> str:
    return stat_text(stat(cell))


def main() -> None:
    table = load()
    seeds = sorted({s for c in table.values() for s in c["seeds"]})
    lines = [f"Seeds: {seeds}. Meta-test MSE over 600 tasks, mean ± 95% CI.", ""]
    for steps in (10, 1):
        lines += [
            f"**{steps} inner step{'s' if steps > 1 else ''} at meta-test**"
            + (" (Lee & Choi's protocol)" if steps == 10 else " (the Meta-SGD paper's protocol)"),
            "",
            "| preset | " + " | ".join(f"{k}-shot" for k in SHOTS) + (" | published 5-shot |" if steps == 1 else " |"),
            "|---|" + "---:|" * len(SHOTS) + ("---:|" if steps == 1 else ""),
        ]
        for p in PRESETS:
            row = f"| {p} | " + " | ".join(fmt(table.get((p, k, steps))) for k in SHOTS) + " |"
            if steps == 1:
                row += f" {PUBLISHED_1STEP.get((p, 5), '—')} |"
            lines.append(row)
        lines.append("")
    secs = [s for c in table.values() for s in c["seconds"]]
    if secs:
        lines.append(f"Meta-training time per run: {min(secs):.0f}–{max(secs):.0f} s (60,000 meta-steps).")
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    fig = figure((10, 3.8), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, steps in zip(axes, (1, 10), strict=True):
        for p in PRESETS:
            pts = [(k, stat(c)) for k in SHOTS if (c := table.get((p, k, steps)))]
            pts = [(k, s) for k, s in pts if s[0] == s[0]]  # no point where every seed diverged (NaN)
            if pts:
                ks, stats = zip(*pts, strict=True)
                color = f"C{PRESETS.index(p)}"  # the same color for a preset in both panels
                ax.errorbar(
                    ks, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o", capsize=3, label=p, color=color
                )
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(SHOTS, [str(k) for k in SHOTS])
        ax.set_yscale("log")
        ax.set_xlabel("shots K")
        ax.set_title(f"{steps} inner step{'s' if steps > 1 else ''} at meta-test")
    axes[0].set_ylabel("meta-test MSE (600 tasks)")
    axes[0].legend()
    fig.savefig(HERE / "mse_vs_shots.png", dpi=90)


if __name__ == "__main__":
    main()
