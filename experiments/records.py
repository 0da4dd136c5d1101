"""Per-run meta-test scores kept in git, one ``records.json`` per study, so that seeds run in different sessions add
up: the run folders (``experiments/*/runs/``: checkpoints, wandb files) stay out of git and do not outlive a machine.

A record is one evaluation of one run: the run's identity (``preset``, ``seed`` and the study's own fields such as
``shots``, ``alpha`` or ``meta_batch``), ``meta_steps``, ``test_steps``, ``tasks``; values ``mean``, ``ci95``,
``train_seconds``.
``sync`` merges the stored records with the runs found now (a run found now replaces its stored record).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

from omegaconf import OmegaConf

from metatuv.report import mean_ci

VALUES = ("mean", "ci95", "train_seconds", "note")  # everything else identifies a record


def run_scores(results: Path) -> list[dict]:
    """The records of one run folder: results.json (its config's test steps) and every metatuv-eval result of the
    test split beside it (eval-test-<steps>steps-<tasks>tasks.json)."""
    r = json.loads(results.read_text())
    cfg = OmegaConf.load(results.parent / ".hydra" / "config.yaml")
    run = {
        "preset": r["preset"],
        "seed": int(cfg.seed),
        "meta_steps": r["meta_steps"],
        "train_seconds": r["train_seconds"],
    }
    backtrack = int(OmegaConf.select(cfg, "model.backtrack", default=0) or 0)  # metatuv.inner.backtrack
    evals = [(int(cfg.inner.test_steps), int(cfg.eval.tasks), r["test"], r["test_ci95"], backtrack)]
    for f in sorted(results.parent.glob("eval-test-*steps-*tasks.json")):
        e = json.loads(f.read_text())
        evals.append((e["inner_steps"], e["tasks"], e["mean"], e["ci95"], e.get("backtrack", 0)))

    def nan(v: float | None) -> float:  # a diverged score is null in results.json (status "diverged"); NaN here
        return math.nan if v is None else v

    out = [{**run, "test_steps": s, "tasks": n, "mean": nan(m), "ci95": nan(c)} for s, n, m, c, _ in evals]
    for record, (*_, bt) in zip(out, evals, strict=True):
        if bt:  # only then: records of plain steps keep the keys they had before the option existed
            record["backtrack"] = bt
    return out


def key(record: dict) -> tuple:
    return tuple(sorted((k, v) for k, v in record.items() if k not in VALUES))


def sync(study: Path, pattern: str, fields: Callable[[Path], dict], name: str = "records.json") -> list[dict]:
    """``study/<name>`` (default records.json) merged with ``study/runs/<pattern>`` (results.json files;
    ``fields(path)`` gives the study's identity fields of a run from its path); writes the merged list back and
    returns it."""
    path = study / name
    merged = {key(r): r for r in (json.loads(path.read_text()) if path.exists() else [])}
    for results in sorted((study / "runs").glob(pattern)):
        for record in run_scores(results):
            record = {**fields(results), **record}
            merged[key(record)] = record
    records = sorted(merged.values(), key=lambda r: [str(v) for v in key(r)])
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")
    return records


def seed_stat(values: list[float], cis: list[float], seeds: list[int]) -> tuple[float, float, list[int]]:
    """(mean, 95% CI, diverged seeds): ``metatuv.report.mean_ci`` over the seeds with a finite score (over tasks for
    one, across seeds for several); the seeds whose score is NaN (some test task diverged) listed, not averaged."""
    finite = [(v, c) for v, c in zip(values, cis, strict=True) if not math.isnan(v)]
    diverged = sorted(s for s, v in zip(seeds, values, strict=True) if math.isnan(v))
    if not finite:
        return math.nan, math.nan, diverged
    mean, ci = mean_ci([v for v, _ in finite], [c for _, c in finite])
    return mean, ci, diverged


def stat_text(stat: tuple[float, float, list[int]] | None, digits: int = 3) -> str:
    """ "0.123 ± 0.010", "0.123 ± 0.010 (seed 2: NaN)", "diverged (NaN)" or "—" (no run)."""
    if stat is None:
        return "—"
    mean, ci, diverged = stat
    if math.isnan(mean):
        return "diverged (NaN)"
    spec = f".{digits}f" if abs(mean) < 1e3 else ".2e"  # a finite but exploded mean stays readable
    text = f"{mean:{spec}} ± {ci:{spec}}"
    if diverged:
        text += f" (seed{'s' if len(diverged) > 1 else ''} {', '.join(map(str, diverged))}: NaN)"
    return text
