"""T and V from training statistics vs meta-learned vs MAML (issue 7): one table of every run.

    python experiments/statistics/summarize.py   # reads runs/ and records.json, writes records.json and results.md

Scores from records.json (kept in git) updated with runs/<benchmark>/<preset>-<metric>/results.json
(experiments/records.py). A row is (benchmark, preset, metric mode, meta-steps): its meta-test mean ± 95% CI over
600 tasks for one seed, across seeds for several (the cell then says how many).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from records import seed_stat, sync  # noqa: E402

HEADER = [
    "| benchmark | preset | metric | meta-steps | train s | meta-test (mean ± 95% CI) |",
    "|---|---|---|---|---|---|",
]


def run_fields(results: Path) -> dict:
    """The study's identity of a run, from its results.json: benchmark, metric mode (where T and V come from) and
    the score's unit ("MSE" or "accuracy")."""
    r = json.loads(results.read_text())
    return {"benchmark": r["benchmark"], "metric": r.get("metric_mode", "learned"), "score": r["metric"]}


def cell(records: list[dict], several_test_steps: bool) -> str:
    """'acc % 92.74 ± 0.53' (accuracy in %, MSE as is); seeds and test steps named when they need saying."""
    unit, scale = ("MSE", 1) if records[0]["score"] == "MSE" else ("acc %", 100)
    mean, ci, diverged = seed_stat(
        [r["mean"] for r in records], [r["ci95"] for r in records], [r["seed"] for r in records]
    )
    text = "diverged (NaN)" if math.isnan(mean) else f"{unit} {scale * mean:.4g} ± {scale * ci:.2g}"
    if len(records) - len(diverged) > 1:  # the seeds averaged
        text += f" ({len(records) - len(diverged)} seeds)"
    if diverged and not math.isnan(mean):
        text += f" (seed{'s' if len(diverged) > 1 else ''} {', '.join(map(str, diverged))}: NaN)"
    if several_test_steps:
        text += f" at {records[0]['test_steps']} test steps"
    return text


def table(records: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = {}  # (benchmark, preset, metric, meta-steps, test steps) -> its seeds
    for r in records:
        groups.setdefault((r["benchmark"], r["preset"], r["metric"], r["meta_steps"], r["test_steps"]), []).append(r)
    test_steps: dict[tuple, set] = {}
    for k in groups:
        test_steps.setdefault(k[:4], set()).add(k[4])
    rows = list(HEADER)
    for (bench, preset, metric, steps, _), rs in sorted(groups.items()):
        secs = [r["train_seconds"] for r in rs if r.get("train_seconds") is not None]
        train = f"{sum(secs) / len(secs):.0f}" if secs else "—"
        text = cell(rs, len(test_steps[(bench, preset, metric, steps)]) > 1)
        rows.append(f"| {bench} | {preset} | {metric} | {steps} | {train} | {text} |")
    return "\n".join(rows)


def main() -> None:
    records = sync(HERE, "*/*/results.json", run_fields)
    if not records:
        raise SystemExit(f"{HERE}: no records.json and no runs/*/*/results.json: run experiments/statistics/run.sh")
    text = table(records)
    print(text)
    (HERE / "results.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
