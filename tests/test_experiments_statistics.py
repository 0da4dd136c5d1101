"""experiments/statistics/summarize.py: runs on disk and the kept records.json merge into records.json and one table;
several seeds of a cell are averaged and counted, a diverged score is named, not averaged."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "statistics" / "summarize.py"


@pytest.fixture
def summarize(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("statistics_summarize", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "HERE", tmp_path)
    return module


def write_run(study: Path, bench: str, folder: str, seed: int, test: float | None, ci: float | None, unit: str):
    """A run folder as metatuv-train leaves it: results.json and the composed .hydra/config.yaml."""
    run = study / "runs" / bench / folder
    (run / ".hydra").mkdir(parents=True, exist_ok=True)
    preset, mode = folder.split("-", 1)
    results = {"benchmark": bench, "preset": preset, "metric_mode": mode, "metric": unit, "meta_steps": 4000}
    results |= {"train_seconds": 40.0 + seed, "test": test, "test_ci95": ci}
    (run / "results.json").write_text(json.dumps(results))
    (run / ".hydra" / "config.yaml").write_text(f"seed: {seed}\ninner:\n  test_steps: 10\neval:\n  tasks: 600\n")


def test_records_merge_and_table(summarize, tmp_path):
    kept = {"benchmark": "omniglot", "metric": "learned", "score": "accuracy", "preset": "maml", "seed": 0}
    kept |= {"meta_steps": 1000, "train_seconds": 918.0, "test_steps": 3, "tasks": 600, "mean": 0.8946, "ci95": 0.0068}
    (tmp_path / "records.json").write_text(json.dumps([kept]))
    write_run(tmp_path, "sinusoid", "tuv-statistics_init", 0, 0.03, 0.004, "MSE")
    summarize.main()
    write_run(tmp_path, "sinusoid", "tuv-statistics_init", 1, 0.05, 0.006, "MSE")  # seed 1 replaces the folder
    summarize.main()

    records = json.loads((tmp_path / "records.json").read_text())
    assert len(records) == 3 and kept in records  # the kept record and both seeds (each run found once, then kept)
    assert {(r["seed"], r["metric"], r["score"]) for r in records if r["benchmark"] == "sinusoid"} == {
        (0, "statistics_init", "MSE"),
        (1, "statistics_init", "MSE"),
    }
    lines = (tmp_path / "results.md").read_text().splitlines()
    assert lines[2] == "| omniglot | maml | learned | 1000 | 918 | acc % 89.46 ± 0.68 |"
    ci = 1.96 * math.sqrt(((0.03 - 0.04) ** 2 + (0.05 - 0.04) ** 2) / 1) / math.sqrt(2)
    assert lines[3] == f"| sinusoid | tuv | statistics_init | 4000 | 40 | MSE 0.04 ± {ci:.2g} (2 seeds) |"
    assert len(lines) == 4


def test_diverged_seed_is_named(summarize, tmp_path):
    write_run(tmp_path, "sinusoid", "tuv-statistics", 0, None, None, "MSE")  # NaN at meta-test: null in results
    summarize.main()
    assert (tmp_path / "results.md").read_text().splitlines()[2].endswith("| diverged (NaN) |")
    write_run(tmp_path, "sinusoid", "tuv-statistics", 1, 0.5, 0.05, "MSE")
    summarize.main()
    assert (tmp_path / "results.md").read_text().splitlines()[2].endswith("| MSE 0.5 ± 0.05 (seed 0: NaN) |")


def test_no_records_stops(summarize):
    with pytest.raises(SystemExit, match="run experiments/statistics/run.sh"):
        summarize.main()
