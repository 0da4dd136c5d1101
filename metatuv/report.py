"""metatuv-report: summarize a metatuv-train multirun (a Hydra sweep folder) as a table and two plots.

    metatuv-train -m model=maml,tuv inner.lr=0.01,0.04 seed=0,1 hydra.sweep.dir=sweeps/lr
    metatuv-report sweeps/lr                 # writes report.md, learning_curves.png, lr_sensitivity.png there
    metatuv-report sweeps/lr --out figures/  # or into another folder

Jobs are the folders holding a results.json (searched recursively, so any hydra.sweep.subdir works). A job's
identity (its overrides and resolved config) is what the run itself stored in results.json when it finished, not
.hydra/, which Hydra rewrites before the app runs, also when the app then refuses the rerun (a checkpoint of another
config): a job whose .hydra/overrides.yaml disagrees with its results.json is left out of the table and named in a
warning line. (results.json files from before this field fall back on .hydra/.) A diverged job (status
"diverged", its score null) makes its row read "diverged (k of n)": it is never averaged with finite scores.
The swept keys are the override keys whose values differ between jobs;
one row per configuration (the swept keys except seed). Meta-test: one job, the task-level 95% CI from
results.json; several seeds, their mean ± 1.96·s/√n across seeds. The learning curves are the meta-training
loss (history.json) averaged over seeds; lr_sensitivity.png (meta-test metric vs inner.lr, one line per preset)
is drawn when inner.lr is swept.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from metatuv.files import write_text
from metatuv.keys import MOVED
from metatuv.report_plots import (  # noqa: F401 (re-exported: experiments use them)
    LR,
    SMOOTH_ABOVE,
    _metrics,
    _scale,
    mean_curve,
    plot_learning_curves,
    plot_lr_sensitivity,
    smooth,
)

SEED = "seed"
MISSING = "—"  # a key some jobs do not override


@dataclass
class Job:
    """One job of the sweep: its folder, overrides {key: value string}, results.json, history.json, config."""

    folder: Path
    overrides: dict[str, str]
    results: dict
    history: dict | None = None
    config: dict | None = None
    conflict: str | None = None  # why the job is left out (its .hydra/ disagrees with what the run wrote)


@dataclass
class Row:
    """One configuration: the swept values (seed excluded) and its jobs, with the meta-test mean ± 95% CI."""

    values: tuple[str, ...]
    jobs: list[Job] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.jobs)

    def diverged(self, key: str = "test") -> int:
        """How many of the row's jobs have a non-finite (diverged) results[key]."""
        return sum(diverged(j, key) for j in self.jobs)

    def stat(self, key: str = "test") -> tuple[float, float] | None:
        """Mean ± 95% CI of results[key]: task-level CI for one job, 1.96·s/√n across jobs for several; None when
        a job lacks it or diverged (a diverged score is never averaged)."""
        if self.diverged(key):
            return None
        return mean_ci([j.results.get(key) for j in self.jobs], [j.results.get(f"{key}_ci95") for j in self.jobs])

    def label(self, keys: list[str]) -> str:
        pairs = [f"{k}={v}" for k, v in zip(keys, self.values, strict=True)]
        return ", ".join(pairs) or self.jobs[0].results.get("preset", "all jobs")


def diverged(job: Job, key: str = "test") -> bool:
    """results[key] recorded as diverged: null in a results.json with status "diverged", or a non-finite number
    (results.json files written before the status field held a bare NaN)."""
    if key not in job.results:
        return False
    v = job.results[key]
    if v is None:
        return job.results.get("status") == "diverged" or key in job.results.get("diverged", [])
    return isinstance(v, (int, float)) and not math.isfinite(v)


def mean_ci(values: list[float | None], cis: list[float | None]) -> tuple[float, float] | None:
    """One value: (value, its own CI). Several: (mean, 1.96·s/√n), s the sample std (metatuv.meta.evaluation's
    mean_ci95, the one mean ± CI of the package). None if any is missing."""
    if not values or any(v is None for v in values):
        return None
    if len(values) == 1:
        return float(values[0]), float("nan") if cis[0] is None else float(cis[0])
    import torch  # (only here: the report reads JSON files otherwise)

    from metatuv.meta.evaluation import mean_ci95

    return mean_ci95(torch.tensor([float(v) for v in values], dtype=torch.float64))  # a NaN (diverged) propagates


def parse_overrides(lines: list[str], where: Path) -> dict[str, str]:
    """Hydra override strings (``model=maml``, ``+a.b=1``, ``~c``) as {key: value}; a key that moved since the job ran
    (``logger.eval_every`` → ``monitor.eval_every``, metatuv.keys.MOVED) under its new name, so old and new jobs of one
    configuration share a row."""
    if not isinstance(lines, list):
        raise ValueError(f"{where} is not a YAML list of overrides (got {type(lines).__name__}); is it Hydra's?")
    out = {}
    for line in lines:
        key, sep, value = str(line).partition("=")
        deleted = key.startswith("~")
        key = key.lstrip("+~")
        key = MOVED.get(key, key)
        out[key] = "(deleted)" if deleted and not sep else value
    return out


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); rerun that job or delete its folder.") from None


def load_jobs(sweep_dir: Path) -> list[Job]:
    """Every folder under ``sweep_dir`` holding a results.json, with its overrides, history and resolved config."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        what = "is not a folder" if sweep_dir.exists() else "does not exist"
        raise FileNotFoundError(
            f"{sweep_dir} {what}; pass the hydra.sweep.dir of a `metatuv-train -m ...` run (it holds multirun.yaml)."
        )
    found = sorted(sweep_dir.rglob("results.json"), key=lambda p: _natural(str(p.parent.relative_to(sweep_dir))))
    if not found:
        raise FileNotFoundError(
            f"no results.json under {sweep_dir}; run `metatuv-train -m ... hydra.sweep.dir={sweep_dir}` first "
            "(or pass the folder such a run wrote)."
        )
    jobs = []
    for path in found:
        folder = path.parent
        results = _read_json(path)
        for key in ("test", "metric"):
            if key not in results:
                raise ValueError(f"{path} has no {key!r}; it is not a metatuv-train results.json (rerun that job).")
        ov = folder / ".hydra" / "overrides.yaml"
        hydra_ov = parse_overrides(yaml.safe_load(ov.read_text()) or [], ov) if ov.is_file() else None
        own = results.get("overrides")  # what the run that wrote results.json was started with
        if own is None and hydra_ov is None:
            raise FileNotFoundError(
                f"job {folder} has results.json but no .hydra/overrides.yaml, so its swept values are unknown; "
                "rerun it with `metatuv-train -m ...` or move it out of the sweep folder."
            )
        overrides = parse_overrides(own, path) if own is not None else hydra_ov
        conflict = None
        if own is not None and hydra_ov is not None and hydra_ov != overrides:
            diff = [k for k in sorted(overrides.keys() | hydra_ov.keys()) if overrides.get(k) != hydra_ov.get(k)]
            said = ", ".join(f"{k}={hydra_ov.get(k, MISSING)}" for k in diff)
            was = ", ".join(f"{k}={overrides.get(k, MISSING)}" for k in diff)
            conflict = (
                f"job {folder}: .hydra/overrides.yaml says {said} but its results.json was written by a run with "
                f"{was} (a later rerun there was refused?); left out of the table: rerun that configuration in a "
                "fresh hydra.sweep.dir, or delete the folder"
            )
        hist_path, cfg_path = folder / "history.json", folder / ".hydra" / "config.yaml"
        history = _read_json(hist_path) if hist_path.is_file() else None
        config = results.get("config")
        if config is None and own is None:  # results.json from before the identity fields
            config = yaml.safe_load(cfg_path.read_text()) if cfg_path.is_file() else None
        jobs.append(Job(folder, overrides, results, history, config, conflict))
    return jobs


def _natural(s: str) -> tuple:
    """Sort key: numbers as numbers (0.01 < 0.04 < 0.1, 2 < 10), then strings; missing values last."""
    if s == MISSING:
        return (2, "")
    try:
        return (0, float(s))
    except ValueError:
        return (1, s)


def swept_keys(jobs: list[Job]) -> list[str]:
    """Override keys whose value differs between jobs (a key absent from some jobs counts), in command-line order."""
    keys: list[str] = []
    for job in jobs:
        keys += [k for k in job.overrides if k not in keys]
    return [k for k in keys if len({job.overrides.get(k, MISSING) for job in jobs}) > 1]


def summarize(jobs: list[Job]) -> tuple[list[str], list[Row]]:
    """(swept keys except seed, one Row per configuration sorted by those keys)."""
    keys = [k for k in swept_keys(jobs) if k != SEED]
    rows: dict[tuple[str, ...], Row] = {}
    for job in jobs:
        values = tuple(job.overrides.get(k, MISSING) for k in keys)
        rows.setdefault(values, Row(values)).jobs.append(job)
    return keys, sorted(rows.values(), key=lambda r: tuple(_natural(v) for v in r.values))


def _fmt(stat: tuple[float, float] | None, metric: str) -> str:
    if stat is None:
        return MISSING
    pct, unit = _scale(metric)
    return f"{pct * stat[0]:.4f}{unit} ± {pct * stat[1]:.4f}{unit}"


def markdown_table(keys: list[str], rows: list[Row], seeds_swept: bool) -> str:
    """The Markdown table (one row per configuration) and its footnote saying which 95% CI is used."""
    metrics = _metrics(rows)
    one_metric = len(metrics) == 1
    baseline = any("baseline" in j.results for r in rows for j in r.jobs)
    test_head = f"meta-test {metrics[0]}" if one_metric else "meta-test"
    head = [*keys, "seeds" if seeds_swept else "jobs", f"{test_head} (95% CI)"]
    if baseline:
        head.append("baseline (95% CI)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(r: Row, key: str, metric: str) -> str:
        k = r.diverged(key)
        return f"diverged ({k} of {r.n})" if k else _fmt(r.stat(key), metric)

    for r in rows:
        metric = r.jobs[0].results["metric"]
        test = cell(r, "test", metric) + ("" if one_metric else f" ({metric})")
        cells = [*(v.replace("|", "\\|") for v in r.values), str(r.n), test]
        if baseline:
            cells.append(cell(r, "baseline", metric))
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    if any(r.n == 1 for r in rows):
        tasks = sorted({str((j.config or {}).get("eval", {}).get("tasks", "?")) for r in rows for j in r.jobs})
        notes.append(
            f"rows with one job: the task-level 95% CI over its {'/'.join(tasks)} meta-test tasks (results.json)"
        )
    if any(r.n > 1 for r in rows):
        unit = "seeds" if seeds_swept else "jobs"
        notes.append(f"rows with n > 1 {unit}: mean over {unit} ± 1.96·s/√n, s the sample std across {unit}")
    if any(m == "accuracy" for m in metrics):
        notes.append("accuracy in %")
    text = "\n".join(lines) + "\n\n" + "95% CI: " + "; ".join(notes) + ".\n"
    for key in ("test", "baseline"):
        bad = [str(j.folder) for r in rows for j in r.jobs if diverged(j, key)]
        if bad:
            what = "meta-test" if key == "test" else "baseline"
            text += f"DIVERGED: non-finite {what} score (not averaged) in {len(bad)} job(s): {', '.join(bad)}.\n"
    return text


def report(sweep_dir: Path, out: Path | None = None) -> dict:
    """Write report.md, learning_curves.png and (inner.lr swept) lr_sensitivity.png; returns table and paths."""
    sweep_dir = Path(sweep_dir)
    found = load_jobs(sweep_dir)
    jobs = [j for j in found if j.conflict is None]
    flagged = [j.conflict for j in found if j.conflict is not None]
    if not jobs:
        raise ValueError(f"every job under {sweep_dir} is flagged; {flagged[0]}.")
    keys, rows = summarize(jobs)
    out = sweep_dir if out is None else Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(keys, rows, seeds_swept=SEED in swept_keys(jobs))
    table += "".join(f"FLAGGED: {c}.\n" for c in flagged)
    text = f"# metatuv sweep {sweep_dir.resolve()}\n\n{len(jobs)} jobs, {len(rows)} configurations.\n\n{table}"
    paths = {"report": out / "report.md"}
    write_text(paths["report"], text)
    paths["learning_curves"] = plot_learning_curves(keys, rows, out / "learning_curves.png")
    if LR in keys:
        paths["lr_sensitivity"] = plot_lr_sensitivity(keys, rows, out / "lr_sensitivity.png")
    missing = [str(j.folder) for j in jobs if not (j.history and j.history.get("loss"))]
    return {"table": table, "keys": keys, "rows": rows, "paths": paths, "no_history": missing, "flagged": flagged}


def main(argv: list[str] | None = None) -> None:
    """Console script ``metatuv-report``."""
    p = argparse.ArgumentParser(
        prog="metatuv-report", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("sweep_dir", type=Path, help="the multirun folder (hydra.sweep.dir of a metatuv-train -m run)")
    p.add_argument("--out", type=Path, default=None, help="where to write the report (default: the sweep folder)")
    a = p.parse_args(argv)
    try:
        r = report(a.sweep_dir, a.out)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise SystemExit(f"metatuv-report: {e}") from None
    print(r["table"], end="")
    for folder in r["no_history"]:
        print(f"metatuv-report: no history.json in {folder}; left out of the learning curves", file=sys.stderr)
    for path in r["paths"].values():
        print(f"written to {path}")


if __name__ == "__main__":
    main()
