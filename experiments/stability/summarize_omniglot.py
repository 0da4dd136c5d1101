"""Stability study, Omniglot part (issue 20): meta-test accuracy per preset over 3 seeds, plain and backtracked.

    python experiments/stability/summarize_omniglot.py  # runs/omniglot/ -> records_omniglot.json, omniglot.md

One row per (setting, preset, test-time step rule): accuracy over the same 600 test episodes at 10 test steps, mean ±
95% CI across seeds (``records.seed_stat``; over episodes for a single seed), the seeds' own scores, the seeds whose
score is NaN (diverged), the training time and the largest effective step per layer at the end of training
(α·λmax(TTᵀ)·λmax(VᵀV) from the run's metrics.jsonl; kfo: α·λmax(AᵀA)·λmax(BᵀB) from its checkpoint).
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from records import seed_stat, stat_text, sync  # noqa: E402
from summarize import kfo_max_steps, last_max_steps  # noqa: E402

PATH = re.compile(r"omniglot/(\d+)w(\d+)s/steps(\d+)/mb(\d+)/([a-z_]+)/seed(\d+)")


def fields(results: Path) -> dict:
    m = PATH.search(str(results.parent))
    if m is None:
        raise ValueError(f"{results}: not under runs/omniglot/<W>w<K>s/steps*/mb*/<preset>/seed*/")
    return {
        "ways": int(m[1]),
        "shots": int(m[2]),
        "meta_batch": int(m[4]),
        "note": "max_step " + (last_max_steps(results.parent) or kfo_max_steps(results.parent)),
    }


def setting_of(r: dict) -> tuple:
    return r["ways"], r["shots"], r["meta_steps"], r["meta_batch"], r["test_steps"]


def main() -> None:
    records = sync(HERE, "omniglot/*w*s/steps*/mb*/*/seed*/results.json", fields, name="records_omniglot.json")
    rows: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        rows[(*setting_of(r), r["preset"], bool(r.get("backtrack")))].append(r)
    lines = ["# Stability: Omniglot meta-test accuracy, plain and backtracked test-time steps", ""]
    for setting in sorted({k[:5] for k in rows}):
        ways, shots, steps, mb, ts = setting
        lines += [
            f"## {ways}-way {shots}-shot, {steps} meta-steps, meta-batch {mb}, {ts} test steps, 600 test episodes",
            "",
            "| preset | test-time steps | accuracy (mean ± 95% CI over seeds) | per seed | train time / run |",
            "|---|---|---|---|---:|",
        ]
        for key in sorted(k for k in rows if k[:5] == setting):
            rs = sorted(rows[key], key=lambda r: r["seed"])
            stat = seed_stat([100 * r["mean"] for r in rs], [100 * r["ci95"] for r in rs], [r["seed"] for r in rs])
            seeds = " / ".join(f"{100 * r['mean']:.1f}" for r in rs)
            minutes = sum(r["train_seconds"] for r in rs) / len(rs) / 60
            rule = "backtracked" if key[6] else "plain"
            lines.append(f"| {key[5]} | {rule} | {stat_text(stat, 1)} % | {seeds} | {minutes:.1f} min |")
        lines += ["", "Largest effective step per layer at the end of training:", ""]
        for r in sorted(records, key=lambda r: (r["preset"], r["seed"])):
            if setting_of(r) == setting and not r.get("backtrack") and r.get("note", "").strip() != "max_step":
                lines.append(f"- {r['preset']} seed {r['seed']}: {r['note']}")
        lines.append("")
    (HERE / "omniglot.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
