"""Stability study (issue 20): diverged runs per cell and the largest effective step per layer at the end of training.

    python experiments/stability/summarize.py     # reads runs/ and records.json, writes records.json and results.md

A cell is (meta-steps, shots, α, preset, test steps); "diverged" counts the seeds whose 600-task mean is NaN/Inf
(at least one test task blew up), "failed" the runs whose meta-training stopped (no results.json). The note of each
record holds the run's last logged ``metric/<layer>/max_step`` = α·λmax(TTᵀ)·λmax(VᵀV) per layer
(kfo: α·λmax(AᵀA)·λmax(BᵀB) from the final checkpoint).
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from omegaconf import OmegaConf  # noqa: E402
from records import sync  # noqa: E402

from metatuv.meta.presets import PRESETS  # noqa: E402

PATH = re.compile(r"steps(\d+)/shots(\d+)/lr([0-9.]+)/([a-z_]+)/maxstep([0-9.]+)/seed(\d+)")


def last_max_steps(run: Path) -> str:
    """'0:0.019 2:0.18 4:0.099' from the run's last metrics.jsonl line with max_step values; '' without any."""
    found: dict[str, float] = {}
    path = run / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        d = json.loads(line)
        steps = {k.split("/")[1]: v for k, v in d.items() if k.endswith("/max_step")}
        if steps:
            found = steps
    order = sorted(found.items(), key=lambda kv: (len(kv[0]), kv[0]))  # layers 0, 3, 6, 9, 13 in model order
    return " ".join(f"{k}:{v:.3g}" for k, v in order)


def kfo_max_steps(run: Path) -> str:
    """kfo's largest effective step per layer, α·λmax(AᵀA)·λmax(BᵀB), from the run's final checkpoint."""
    import torch

    from metatuv.checkpoint import load_checkpoint

    state, _ = load_checkpoint(run / "checkpoint.pt")
    lr, w = float(state["config"]["inner"]["lr"]), state["learner"]
    out = []
    for k in sorted((k for k in w if k.startswith("rule.kfo.") and k.endswith("_l")), key=lambda k: (len(k), k)):
        A, B = w[k].double(), w[k[:-2] + "_r"].double()
        lam = torch.linalg.eigvalsh(A.T @ A)[-1] * torch.linalg.eigvalsh(B.T @ B)[-1]
        out.append(f"{k[len('rule.kfo.') :].split('__')[0]}:{lr * lam.item():.3g}")
    return " ".join(out)


def fields(results: Path) -> dict:
    m = PATH.search(str(results.parent))
    if m is None:
        raise ValueError(f"{results}: not under runs/steps*/shots*/lr*/<preset>/maxstep*/seed*/")
    cfg = OmegaConf.load(results.parent / ".hydra" / "config.yaml")
    bounded = (cfg.model.get("bound") or PRESETS[cfg.model.name].bound) != "none"
    return {
        "shots": int(m[2]),
        "alpha": float(m[3]),
        "max_step_bound": float(m[5]) if bounded else None,  # model.max_step; None: no bound
        "note": "max_step " + (last_max_steps(results.parent) or kfo_max_steps(results.parent)),
    }


def label(r: dict) -> str:
    """The preset, with its bound on the effective step when it has one and its test-time step rule:
    'tuv_bounded (max_step 1), backtracked' (metatuv.inner.backtrack, 8 halvings), 'tuv, backtracked ×2' (another
    number of halvings, the backtrack sweep) or 'tuv_bounded (max_step 1), plain'."""
    bound = f" (max_step {r['max_step_bound']:g})" if r.get("max_step_bound") is not None else ""
    n = r.get("backtrack", 0)
    rule = "plain" if not n else "backtracked" if n == 8 else f"backtracked ×{n}"
    return f"{r['preset']}{bound}, {rule}"


def failed_runs() -> list[str]:
    out = []
    for d in sorted((HERE / "runs").glob("steps*/shots*/lr*/*/maxstep*/seed*")):
        if d.is_dir() and not (d / "results.json").exists():
            out.append(str(d.relative_to(HERE)))
    return out


def main() -> None:
    records = sync(HERE, "steps*/shots*/lr*/*/maxstep*/seed*/results.json", fields)
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        cells[(r["meta_steps"], r["shots"], label(r), r["test_steps"], r["alpha"])].append(r)
    alphas = sorted({r["alpha"] for r in records})
    lines = ["# Stability: diverged runs per cell (sinusoid)", ""]
    for (steps, shots), group in sorted({(k[0], k[1]): None for k in cells}.items()):
        del group
        lines += [f"## {shots}-shot, {steps} meta-steps", ""]
        lines.append(
            "| preset, test-time steps | test steps | " + " | ".join(f"α = {a:g}" for a in alphas) + " | worst/best |"
        )
        lines.append("|---|---:|" + "---:|" * len(alphas) + "---:|")
        presets = sorted({k[2] for k in cells if k[:2] == (steps, shots)})
        for preset in presets:
            for ts in sorted({k[3] for k in cells if k[:3] == (steps, shots, preset)}):
                row, means = [], []
                for a in alphas:
                    rs = cells.get((steps, shots, preset, ts, a), [])
                    bad = sum(1 for r in rs if not math.isfinite(r["mean"]))
                    ok = [r["mean"] for r in rs if math.isfinite(r["mean"])]
                    mean = f"{sum(ok) / len(ok):.3g}" if ok else "—"
                    row.append(f"{mean} ({bad}/{len(rs)} diverged)" if rs else "")
                    means.append(sum(ok) / len(ok) if rs and ok and not bad else math.nan)
                # α sensitivity: worst over best seed-mean across α; only when every α has runs and none diverged
                ratio = f"{max(means) / min(means):.2f}" if means and all(math.isfinite(m) for m in means) else "—"
                lines.append(f"| {preset} | {ts} | " + " | ".join(row) + f" | {ratio} |")
        lines.append("")
        lines += [
            "Largest effective step per layer at the end of training, α·λmax(TTᵀ)·λmax(VᵀV) "
            "(kfo: α·λmax(AᵀA)·λmax(BᵀB)):",
            "",
        ]
        for r in sorted(records, key=lambda r: (label(r), r["alpha"], r["seed"])):
            one_per_run = r["test_steps"] == 10 and not r.get("backtrack")  # (the note is the run's, not the eval's)
            if (r["meta_steps"], r["shots"]) == (steps, shots) and one_per_run and r.get("note", "").strip():
                lines.append(f"- {label(r)} α = {r['alpha']:g}, seed {r['seed']}: {r['note']}")
        lines.append("")
    failed = failed_runs()
    if failed:
        lines += ["Runs whose meta-training stopped (no results.json): " + ", ".join(failed), ""]
    (HERE / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
