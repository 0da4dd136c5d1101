"""metatuv-report: the table, the across-seed CI, the plots, and its one-line errors."""

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from metatuv.report import load_jobs, main, report, summarize

BIN = Path(sys.executable).parent
PNG = b"\x89PNG\r\n\x1a\n"


def table_rows(text: str) -> tuple[list[str], list[list[str]]]:
    """(header, body rows) of the first Markdown table in ``text``."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return cells[0], cells[2:]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A real 2×2 multirun: model=maml,tuv × inner.lr=0.01,0.04, 3 meta-steps, 10 test tasks."""
    out = tmp_path_factory.mktemp("sweep")
    cmd = [
        str(BIN / "metatuv-train"),
        "-m",
        "model=maml,tuv",
        "inner.lr=0.01,0.04",
        "outer.steps=3",
        "eval.tasks=10",
        "eval.baseline=false",
        "progress=false",
        "logger=none",
        f"hydra.sweep.dir={out}",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def test_report_on_a_real_sweep(sweep, tmp_path):
    r = subprocess.run(
        [str(BIN / "metatuv-report"), str(sweep), "--out", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]
    text = (tmp_path / "report.md").read_text()
    head, rows = table_rows(text)
    assert head[:3] == ["model", "inner.lr", "jobs"] and head[3].startswith("meta-test MSE")
    assert [row[:3] for row in rows] == [["maml", "0.01", "1"], ["maml", "0.04", "1"], ["tuv", "0.01", "1"]] + [
        ["tuv", "0.04", "1"]
    ]
    for job in sweep.glob("*/results.json"):
        res = json.loads(job.read_text())
        ov = dict(o.split("=", 1) for o in yaml.safe_load((job.parent / ".hydra/overrides.yaml").read_text()))
        (row,) = [row for row in rows if row[:2] == [ov["model"], ov["inner.lr"]]]
        assert res["preset"] == ov["model"]
        assert row[3] == f"{res['test']:.4f} ± {res['test_ci95']:.4f}"  # one job: the task-level CI
    assert "task-level 95% CI over its 10 meta-test tasks" in text
    assert head[0] in r.stdout and rows[0][3] in r.stdout  # the table is printed too
    for name in ("report.md", "learning_curves.png", "lr_sensitivity.png"):
        assert f"written to {tmp_path / name}" in r.stdout
    for name in ("learning_curves.png", "lr_sensitivity.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
    assert not (sweep / "report.md").exists()  # --out respected


def fake_job(folder: Path, overrides: list[str], test: float, ci: float, losses: list[float], lr: float) -> None:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"inner": {"lr": lr}, "eval": {"tasks": 600}}))
    res = {"benchmark": "sinusoid", "preset": overrides[0].split("=")[1], "metric": "MSE", "meta_steps": len(losses)}
    (folder / "results.json").write_text(json.dumps(res | {"test": test, "test_ci95": ci}))
    (folder / "history.json").write_text(json.dumps({"step": list(range(len(losses))), "loss": losses}))


FAKE = {  # (model, lr): test MSE of seeds 0 and 1
    ("maml", "0.1"): (1.0, 3.0),
    ("maml", "0.02"): (2.0, 2.5),
    ("tuv", "0.1"): (0.5, 0.75),
}


@pytest.fixture
def fake_sweep(tmp_path) -> Path:
    n = 0
    for (model, lr), tests in FAKE.items():
        for seed, test in enumerate(tests):
            losses = [float(300 - k) for k in range(300)]  # long enough to be smoothed
            fake_job(tmp_path / f"{n}", [f"model={model}", f"inner.lr={lr}", f"seed={seed}"], test, 9.9, losses, lr)
            n += 1
    return tmp_path


def test_mean_and_ci_across_seeds(fake_sweep, capsys):
    keys, rows = summarize(load_jobs(fake_sweep))
    assert keys == ["model", "inner.lr"]  # seed is swept but not a column
    assert [r.values for r in rows] == [("maml", "0.02"), ("maml", "0.1"), ("tuv", "0.1")]  # numeric order
    for r in rows:
        tests = FAKE[r.values]
        mean, ci = r.stat()
        assert r.n == 2 and mean == pytest.approx(statistics.fmean(tests))
        assert ci == pytest.approx(1.96 * statistics.stdev(tests) / math.sqrt(2))  # not the task CI 9.9
    assert rows[1].stat() == pytest.approx((2.0, 1.96 * math.sqrt(2) / math.sqrt(2)))

    main([str(fake_sweep)])
    out = capsys.readouterr().out
    head, body = table_rows(out)
    assert head[:3] == ["model", "inner.lr", "seeds"]
    assert body[1] == ["maml", "0.1", "2", "2.0000 ± 1.9600"]
    assert "mean over seeds ± 1.96·s/√n" in out and "task-level" not in out
    assert (fake_sweep / "report.md").read_text().count("| maml |") == 2
    for name in ("learning_curves.png", "lr_sensitivity.png"):
        assert (fake_sweep / name).read_bytes()[:8] == PNG


def test_no_lr_plot_when_inner_lr_not_swept(tmp_path, capsys):
    fake_job(tmp_path / "a", ["model=maml", "inner.lr=0.01"], 1.0, 0.1, [2.0, 1.0], 0.01)
    fake_job(tmp_path / "b", ["model=tuv", "inner.lr=0.01"], 0.5, 0.2, [2.0, 0.5], 0.01)
    main([str(tmp_path)])
    head, body = table_rows(capsys.readouterr().out)
    assert head[:2] == ["model", "jobs"] and body == [["maml", "1", "1.0000 ± 0.1000"], ["tuv", "1", "0.5000 ± 0.2000"]]
    assert (tmp_path / "learning_curves.png").exists() and not (tmp_path / "lr_sensitivity.png").exists()


def test_error_missing_folder(tmp_path):
    with pytest.raises(SystemExit, match=r"metatuv-report: .*nope does not exist; pass the hydra.sweep.dir"):
        main([str(tmp_path / "nope")])


def test_error_no_results(tmp_path):
    (tmp_path / "0").mkdir()
    with pytest.raises(SystemExit, match=r"no results.json under .*; run `metatuv-train -m \.\.\."):
        main([str(tmp_path)])


def test_error_job_without_overrides(fake_sweep):
    (fake_sweep / "3" / ".hydra" / "overrides.yaml").unlink()
    with pytest.raises(SystemExit, match=r"job .*3 has results.json but no .hydra/overrides.yaml"):
        main([str(fake_sweep)])


def test_help_and_no_hydra_runtime():
    code = "import sys, metatuv.report; assert not [m for m in sys.modules if m.split('.')[0] == 'hydra'], 'hydra'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([str(BIN / "metatuv-report"), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "hydra.sweep.dir" in r.stdout and "--out" in r.stdout


def test_a_refused_rerun_is_flagged_not_labelled(tmp_path):
    """The issue's two sweeps: the second one's tnet jobs land in folders 2 and 3, which hold tuv's finished runs;
    the app refuses them, Hydra has already rewritten their .hydra/. The report must not show tuv's numbers as tnet."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    sweep_dir = tmp_path / "S"
    for models in ("maml,tuv", "maml,tnet,tuv"):
        cmd = [str(BIN / "metatuv-train"), "-m", f"model={models}", "inner.lr=0.01,0.04", "debug=default"]
        r = subprocess.run([*cmd, f"hydra.sweep.dir={sweep_dir}"], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode != 0 and "checkpoint.pt was written by a run with model.name='tuv'" in r.stderr
    for job, said in (("2", "model=tnet"), ("3", "model=tnet")):  # Hydra's record of the refused rerun
        assert said in (sweep_dir / job / ".hydra" / "overrides.yaml").read_text().replace("- ", "")
    r = subprocess.run([str(BIN / "metatuv-report"), str(sweep_dir)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    text = (sweep_dir / "report.md").read_text()
    head, rows = table_rows(text)
    assert [row[:3] for row in rows] == [
        ["maml", "0.01", "1"],
        ["maml", "0.04", "1"],
        ["tuv", "0.01", "1"],
        ["tuv", "0.04", "1"],
    ]  # no tnet row: tnet never finished anywhere
    for row, job in zip(rows, ("0", "1", "4", "5"), strict=True):  # each row from the run that produced it
        res = json.loads((sweep_dir / job / "results.json").read_text())
        assert res["preset"] == row[0] and f"inner.lr={row[1]}" in res["overrides"]
        assert row[3] == f"{res['test']:.4f} ± {res['test_ci95']:.4f}"
    for job, lr in (("2", "0.01"), ("3", "0.04")):
        line = (
            f"FLAGGED: job {sweep_dir / job}: .hydra/overrides.yaml says model=tnet but its results.json was written "
            "by a run with model=tuv (a later rerun there was refused?); left out of the table"
        )
        assert line in text and line in r.stdout
        assert json.loads((sweep_dir / job / "results.json").read_text())["overrides"][1] == f"inner.lr={lr}"
    assert "4 jobs, 4 configurations." in text


def own_job(folder: Path, own: list[str], hydra: list[str], test: float | None, status: str = "ok") -> None:
    """A job folder as the app writes it: results.json with its own identity; .hydra/ as Hydra last wrote it."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(hydra))
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"inner": {"lr": 123.0}, "eval": {"tasks": 7}}))
    res = {"status": status, "preset": own[0].split("=")[1], "metric": "MSE", "test": test, "test_ci95": 0.1}
    if status == "diverged":
        res |= {"test_ci95": None, "diverged": ["test"]}
    res |= {"overrides": own, "config": {"inner": {"lr": float(own[1].split("=")[1])}, "eval": {"tasks": 600}}}
    (folder / "results.json").write_text(json.dumps(res))


def test_identity_and_config_come_from_results_json(tmp_path):
    own_job(tmp_path / "0", ["model=maml", "inner.lr=0.1"], ["model=maml", "inner.lr=0.1"], 1.0)
    own_job(tmp_path / "1", ["model=tuv", "inner.lr=0.1"], ["model=tnet", "inner.lr=0.1"], 2.0)
    own_job(tmp_path / "x", ["model=tuv", "inner.lr=0.2"], [], 3.0)
    (tmp_path / "x" / ".hydra" / "overrides.yaml").unlink()  # no .hydra/overrides.yaml: the run's own record suffices
    jobs = load_jobs(tmp_path)
    assert [j.conflict is None for j in jobs] == [True, False, True]
    assert jobs[0].config["eval"]["tasks"] == 600  # results.json's config, not .hydra/config.yaml's
    assert "says model=tnet but its results.json was written by a run with model=tuv" in jobs[1].conflict
    r = report(tmp_path)
    assert [row.values for row in r["rows"]] == [("maml", "0.1"), ("tuv", "0.2")]
    assert "task-level 95% CI over its 600 meta-test tasks" in r["table"]


def test_diverged_jobs_are_shown_and_never_averaged(tmp_path, capsys):
    own_job(tmp_path / "0", ["model=maml", "inner.lr=0.1", "seed=0"], ["model=maml", "inner.lr=0.1", "seed=0"], 1.0)
    own_job(
        tmp_path / "1",
        ["model=maml", "inner.lr=0.1", "seed=1"],
        ["model=maml", "inner.lr=0.1", "seed=1"],
        None,
        "diverged",
    )
    own_job(tmp_path / "2", ["model=tuv", "inner.lr=0.1", "seed=0"], ["model=tuv", "inner.lr=0.1", "seed=0"], 0.5)
    own_job(tmp_path / "3", ["model=tuv", "inner.lr=0.1", "seed=1"], ["model=tuv", "inner.lr=0.1", "seed=1"], 0.7)
    legacy = tmp_path / "4"  # a results.json from before the status field: a bare NaN
    fake_job(legacy, ["model=mtnet", "inner.lr=0.1", "seed=0"], float("nan"), float("nan"), [1.0, 2.0], 0.1)
    main([str(tmp_path)])
    out = capsys.readouterr().out
    head, body = table_rows(out)
    assert head[:2] == ["model", "seeds"]
    assert body == [
        ["maml", "2", "diverged (1 of 2)"],
        ["mtnet", "1", "diverged (1 of 1)"],
        ["tuv", "2", f"0.6000 ± {1.96 * statistics.stdev([0.5, 0.7]) / math.sqrt(2):.4f}"],
    ]
    assert f"DIVERGED: non-finite meta-test score (not averaged) in 2 job(s): {tmp_path / '1'}, {legacy}." in out
