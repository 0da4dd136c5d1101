"""Omniglot 5-way / 20-way 1-shot table and training curves (issue 10, study 5). Run from the repository root:

    python experiments/omniglot/summarize.py   # writes experiments/omniglot/results.md and loss_curves.png

Scores from records.json (kept in git) updated with runs/<setting>/<preset>/seed<s>/ (experiments/records.py);
the curves from the run folders' history.json (meta-training query loss per meta-step), when they are on disk.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from metatuv.figure import figure
from metatuv.report import mean_ci, smooth

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
from records import sync  # noqa: E402

PRESETS = ("maml", "tnet", "mtnet", "tuv")
SETTINGS = ("5w1s", "20w1s")
# Lee & Choi 2018 (arXiv:1801.05558) Table 2, 40,000 meta-steps; MAML's row is Finn et al.'s. Checked against
# secondary sources that quote the paper (the T-net row could not be checked, so it is not shown).
PUBLISHED = {("maml", "5w1s"): "98.7 ± 0.4", ("mtnet", "5w1s"): "99.5 ± 0.3"}
PUBLISHED |= {("maml", "20w1s"): "95.8 ± 0.3", ("mtnet", "20w1s"): "96.2 ± 0.4"}


def run_fields(results: Path) -> dict:
    """The study's identity of a run: its setting (folder) and meta-batch (config)."""
    cfg = OmegaConf.load(results.parent / ".hydra" / "config.yaml")
    return {"setting": results.parts[-4], "meta_batch": int(cfg.outer.meta_batch)}


def main() -> None:
    records = sync(HERE, "*w1s/*/seed*/results.json", run_fields)
    lines = [
        "Meta-test accuracy (%) over 600 episodes, 10 inner steps, mean ± 95% CI (over episodes for one seed, across",
        "seeds for several). Published: 40,000 meta-steps (Lee & Choi 2018, Table 2).",
        "",
        "| setting | preset | meta-steps | meta-batch | seeds | train time / run | accuracy | published |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    groups: dict[tuple, list[dict]] = {}  # (setting, preset, meta-steps, meta-batch) -> seeds
    for r in records:
        if (r["test_steps"], r["tasks"]) == (10, 600):
            groups.setdefault((r["setting"], r["preset"], r["meta_steps"], r["meta_batch"]), []).append(r)
    order = {k: i for i, k in enumerate(SETTINGS + PRESETS)}
    for (setting, p, steps, batch), rs in sorted(
        groups.items(), key=lambda g: (order[g[0][0]], order[g[0][1]], g[0][2:])
    ):
        mean, ci = mean_ci([100 * r["mean"] for r in rs], [100 * r["ci95"] for r in rs])
        secs = [r["train_seconds"] for r in rs if r.get("train_seconds") is not None]
        time = f"{sum(secs) / len(secs) / 60:.0f} min" if secs else "—"
        lines.append(
            f"| {setting} | {p} | {steps:,} | {batch} | {len(rs)} | {time} | {mean:.1f} ± {ci:.1f} | "
            f"{PUBLISHED.get((p, setting), '—')} |"
        )
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    histories = sorted((HERE / "runs").glob("*w1s/*/seed0/history.json"))
    if not histories:
        return
    fig = figure((10, 3.8), layout="constrained")
    axes = dict(zip(SETTINGS, fig.subplots(1, 2), strict=True))
    for h in histories:
        setting, preset = h.parts[-4], h.parts[-3]
        loss = np.asarray(json.loads(h.read_text())["loss"])
        steps, curve, width = smooth(np.arange(len(loss)), loss)
        axes[setting].plot(steps, curve, label=preset, color=f"C{PRESETS.index(preset)}", lw=1)
    for setting, ax in axes.items():
        ax.set_title(f"Omniglot {setting}, seed 0")
        ax.set_xlabel("meta-step")
        ax.set_yscale("log")
        if ax.lines:
            ax.legend()
    axes[SETTINGS[0]].set_ylabel("query loss (trailing mean, ~2% of the run)")
    fig.savefig(HERE / "loss_curves.png", dpi=90)


if __name__ == "__main__":
    main()
