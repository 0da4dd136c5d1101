"""Collect experiments/statistics/runs/*/*/results.json into one markdown table (printed and saved)."""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
rows = [
    "| benchmark | preset | metric | meta-steps | train s | meta-test (mean ± 95% CI) |",
    "|---|---|---|---|---|---|",
]
for f in sorted((HERE / "runs").glob("*/*/results.json")):
    r = json.loads(f.read_text())
    unit = "MSE" if r["metric"] == "MSE" else "acc %"
    scale = 1 if unit == "MSE" else 100
    rows.append(
        f"| {r['benchmark']} | {r['preset']} | {r.get('metric_mode', 'learned')} | {r['meta_steps']} | "
        f"{r['train_seconds']:.0f} | {unit} {scale * r['test']:.4g} ± {scale * r['test_ci95']:.2g} |"
    )
table = "\n".join(rows)
print(table)
(HERE / "results.md").write_text(table + "\n")
