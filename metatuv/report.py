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

import numpy as np
import yaml
from matplotlib.ticker import MaxNLocator, NullFormatter

from metatuv.figure import figure
from metatuv.files import save_figure, write_text

SEED = "seed"
LR = "inner.lr"
Z95 = 1.96
SMOOTH_ABOVE = 50  # steps; longer curves are drawn as a moving average over ~2% of their length (>= 5 steps)
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
    """One value: (value, its own CI). Several: (mean, 1.96·s/√n), s the sample std. None if any is missing."""
    if not values or any(v is None for v in values):
        return None
    if len(values) == 1:
        return float(values[0]), float("nan") if cis[0] is None else float(cis[0])
    v = np.asarray(values, dtype=float)  # NaN (a diverged job) propagates to the row
    return float(v.mean()), float(Z95 * v.std(ddof=1) / math.sqrt(len(v)))


def parse_overrides(lines: list[str], where: Path) -> dict[str, str]:
    """Hydra override strings (``model=maml``, ``+a.b=1``, ``~c``) as {key: value}."""
    if not isinstance(lines, list):
        raise ValueError(f"{where} is not a YAML list of overrides (got {type(lines).__name__}); is it Hydra's?")
    out = {}
    for line in lines:
        key, sep, value = str(line).partition("=")
        deleted = key.startswith("~")
        key = key.lstrip("+~")
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


def _scale(metric: str) -> tuple[float, str]:
    return (100.0, "%") if metric == "accuracy" else (1.0, "")


def _fmt(stat: tuple[float, float] | None, metric: str) -> str:
    if stat is None:
        return MISSING
    pct, unit = _scale(metric)
    return f"{pct * stat[0]:.4f}{unit} ± {pct * stat[1]:.4f}{unit}"


def _metrics(rows: list[Row]) -> list[str]:
    return sorted({j.results["metric"] for r in rows for j in r.jobs})


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


def mean_curve(row: Row) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, meta-training loss averaged over the row's jobs), cut to the shortest history; None without any."""
    hists = [j.history for j in row.jobs if j.history and j.history.get("loss")]
    if not hists:
        return None
    n = min(len(h["loss"]) for h in hists)
    loss = np.mean([np.asarray(h["loss"][:n], dtype=float) for h in hists], axis=0)
    steps = np.asarray(hists[0].get("step", range(n))[:n], dtype=float)
    return steps, loss


def smooth(steps: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Trailing moving average over ~2% of the curve when it has more than SMOOTH_ABOVE steps; (x, y, window)."""
    if len(loss) <= SMOOTH_ABOVE:
        return steps, loss, 1
    w = max(5, len(loss) // 50)
    return steps[w - 1 :], np.convolve(loss, np.ones(w) / w, mode="valid"), w


def plot_learning_curves(keys: list[str], rows: list[Row], path: Path) -> Path:
    """Meta-training loss vs step, one line per configuration (mean over seeds); log-y for MSE."""
    fig = figure((7, 4.5))
    ax = fig.add_subplot()
    windows, drawn, positive = set(), 0, True
    for r in rows:
        curve = mean_curve(r)
        if curve is None:
            continue
        x, y, w = smooth(*curve)
        windows.add(w)
        positive &= bool((y[np.isfinite(y)] > 0).all())
        ax.plot(x, y, lw=1.2, label=f"{r.label(keys)} (n={r.n})" if r.n > 1 else r.label(keys))
        drawn += 1
    if drawn == 0:
        ax.text(0.5, 0.5, "no history.json in any job", ha="center", va="center", transform=ax.transAxes)
    if _metrics(rows) == ["MSE"] and positive and drawn:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("meta-step")
    ax.set_ylabel("meta-training loss")
    title = "meta-training loss (mean over seeds)"
    if windows - {1}:
        title += f", moving average over {'/'.join(str(w) for w in sorted(windows - {1}))} steps"
    ax.set_title(title, fontsize=10)
    if drawn:
        ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    return path


def _lr_of(row: Row, index: int) -> float:
    """inner.lr of a row: the resolved config's value, else the override string as a float."""
    cfg = row.jobs[0].config or {}
    lr = (cfg.get("inner") or {}).get("lr")
    if lr is None:
        try:
            lr = float(row.values[index])
        except ValueError:
            raise ValueError(
                f"inner.lr={row.values[index]!r} in {row.jobs[0].folder} is not a number and its .hydra/config.yaml "
                "has no inner.lr; pass plain numbers, e.g. inner.lr=0.01,0.04."
            ) from None
    return float(lr)


def plot_lr_sensitivity(keys: list[str], rows: list[Row], path: Path) -> Path:
    """Meta-test metric vs inner.lr (log-x), one line per preset (per value of the other swept keys), CI bars."""
    i = keys.index(LR)
    others = [k for k in keys if k != LR]
    groups: dict[tuple[str, ...], list[Row]] = {}
    for r in rows:
        groups.setdefault(tuple(v for k, v in zip(keys, r.values, strict=True) if k != LR), []).append(r)
    metrics = _metrics(rows)
    pct, unit = _scale(metrics[0]) if len(metrics) == 1 else (1.0, "")
    fig = figure((6, 4.2))
    ax = fig.add_subplot()
    lrs = set()
    for values, group in groups.items():
        pts = sorted(((_lr_of(r, i), r.stat("test")) for r in group), key=lambda p: p[0])
        lrs.update(lr for lr, _ in pts)
        bad = [lr for lr, s in pts if s is None or not math.isfinite(s[0])]
        pts = [(lr, s) for lr, s in pts if lr not in bad]
        label = ", ".join(f"{k}={v}" for k, v in zip(others, values, strict=True))
        label = label or group[0].jobs[0].results.get("preset", "")
        if bad:
            label += f" (no finite value at α={', '.join(f'{lr:g}' for lr in bad)})"
        x = [lr for lr, _ in pts]
        y = [pct * s[0] for _, s in pts]
        err = [0.0 if math.isnan(s[1]) else pct * s[1] for _, s in pts]
        ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=3, lw=1.2, label=label)
    ax.set_xscale("log")
    ax.set_xticks(sorted(lrs), [f"{lr:g}" for lr in sorted(lrs)])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("inner-loop step size α (inner.lr)")
    ax.set_ylabel(f"meta-test {'/'.join(metrics)}{' (%)' if unit else ''}")
    ax.set_title("inner-lr sensitivity (mean ± 95% CI)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    return path


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
