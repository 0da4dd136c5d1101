"""The metatuv-train entry point: composes its config, runs, prints MSE ± CI, writes its outputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from metatuv.meta import PRESETS
from metatuv.train import run

CONF = Path(__file__).resolve().parents[1] / "conf"


def small(cfg_overrides=()):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", ["outer.steps=20", "eval.tasks=20", "progress=false", *cfg_overrides])


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_run_every_preset(tmp_path, preset):
    results = run(small([f"model={preset}"]), tmp_path)
    assert results["preset"] == preset and results["meta_steps"] == 20
    assert results["test_mse"] > 0 and results["baseline_mse"] > 0
    assert (tmp_path / "model.pt").exists()
    if preset in ("mtnet", "mtuv"):
        assert set(results["mask_fractions"]) == {"0", "2", "4"}
    assert json.loads((tmp_path / "results.json").read_text())["test_mse"] == results["test_mse"]


def test_default_config_is_sinusoid_10_shot_tuv():
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config")
    assert (cfg.benchmark.name, cfg.benchmark.shots, cfg.model.name) == ("sinusoid", 10, "tuv")
    assert cfg.eval.tasks == 600


def test_unknown_preset_fails_with_one_clear_line(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'nope'; choose one of"):
        run(small(["model.name=nope"]), tmp_path)


def test_console_script_end_to_end(tmp_path):
    exe = Path(sys.executable).with_name("metatuv-train")
    cmd = [str(exe), "outer.steps=5", "eval.tasks=10", f"hydra.run.dir={tmp_path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "meta-test MSE over 10 tasks" in out.stdout and "baseline" in out.stdout
    assert (tmp_path / "results.json").exists()


@pytest.mark.parametrize("backend", ["higher", "learn2learn"])
def test_run_with_other_backends(tmp_path, backend):
    results = run(small([f"inner.backend={backend}", "model=mtuv", "inner.chunk_size=2"]), tmp_path)
    assert results["test_mse"] > 0
