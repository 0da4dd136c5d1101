"""Checkpoints: atomic, resumable bit-identically (also after SIGKILL), evaluated by metatuv-eval; typed schema."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from metatuv.checkpoint import CheckpointError, load_checkpoint, previous, save_checkpoint
from metatuv.evaluate import evaluate_checkpoint
from metatuv.evaluate import main as eval_main
from metatuv.train import CHECKPOINT, CONF_DIR, run

BIN = Path(sys.executable).parent


def cfg(steps, *overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", [f"outer.steps={steps}", "eval.tasks=10", "progress=false", "logger=none", *overrides])


def same_params(a: Path, b: Path) -> bool:
    sa, sb = torch.load(a / "model.pt"), torch.load(b / "model.pt")
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    "overrides",
    [
        ("model=mtuv", "metric=statistics", "metric.every=3"),
        ("model=metasgd", "outer.optimizer._target_=torch.optim.AdamW"),
    ],
)
def test_resume_is_bit_identical(tmp_path, overrides):
    """MT-net masks, statistics re-estimation, learned rates, AdamW: a run stopped at step 6 and resumed to 10
    ends with exactly the parameters, losses and test result of an uninterrupted 10-step run."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    whole.mkdir(), parts.mkdir()
    a = run(cfg(10, "checkpoint.every=4", *overrides), whole)
    run(cfg(6, "checkpoint.every=4", *overrides), parts)
    assert load_checkpoint(parts / CHECKPOINT)[0]["step"] == 6
    b = run(cfg(10, "checkpoint.every=4", *overrides), parts)
    assert same_params(whole, parts)
    assert a["test"] == b["test"] and a["final_train_loss"] == b["final_train_loss"]
    ha, hb = (json.loads((d / "history.json").read_text()) for d in (whole, parts))
    assert ha == hb and len(ha["loss"]) == 10


def test_resume_refuses_a_different_config(tmp_path):
    run(cfg(3), tmp_path)
    with pytest.raises(ValueError, match=r"inner.lr=0.01.*inner.lr=0.02.*hydra.run.dir"):
        run(cfg(5, "inner.lr=0.02"), tmp_path)
    run(cfg(5, "inner.lr=0.02", "checkpoint.resume=false"), tmp_path)  # explicit fresh start is fine


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / CHECKPOINT
    save_checkpoint(path, {"step": 1})

    def broken(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)[0]["step"] == 1  # the old checkpoint is intact


def test_sigkill_midway_then_restart_is_bit_identical(tmp_path):
    """Kill -9 a real metatuv-train process after a mid-run checkpoint, rerun the same command, compare."""
    args = ["model=mtuv", "outer.steps=120", "checkpoint.every=10", "eval.tasks=10", "progress=false", "logger=none"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    exe = str(BIN / "metatuv-train")
    done = subprocess.run([exe, *args, f"hydra.run.dir={whole}"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

    proc = subprocess.Popen([exe, *args, f"hydra.run.dir={killed}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (killed / CHECKPOINT).exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed; raise outer.steps"
    step = load_checkpoint(killed / CHECKPOINT)[0]["step"]
    assert 0 < step < 120 and not (killed / "results.json").exists()

    again = subprocess.run(
        [exe, *args, f"hydra.run.dir={killed}"], capture_output=True, text=True, env=env, timeout=600
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming from {killed / CHECKPOINT} at meta-step {step}/120" in again.stdout
    assert same_params(whole, killed)
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (whole, killed))
    assert ra["test"] == rb["test"]


def test_metatuv_eval_reproduces_the_run_and_writes_json(tmp_path, capsys):
    r = run(cfg(5, "model=tnet", "eval.tasks=25"), tmp_path)
    e = evaluate_checkpoint(tmp_path, tasks=25, progress=False)
    assert e["mean"] == pytest.approx(r["test"], rel=1e-6) and e["meta_step"] == 5
    e4 = evaluate_checkpoint(tmp_path / CHECKPOINT, tasks=25, steps=1, progress=False)
    assert e4["mean"] != e["mean"] and e4["inner_steps"] == 1
    eval_main([str(tmp_path), "--tasks", "30", "--allow-few", "--no-progress"])
    out = capsys.readouterr().out
    assert "MSE over 30 tasks, 10 inner steps" in out
    assert json.loads((tmp_path / "eval-test-10steps-30tasks.json").read_text())["tasks"] == 30


def test_metatuv_eval_bad_input(tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint at"):
        eval_main([str(tmp_path), "--allow-few", "--tasks", "5"])
    with pytest.raises(SystemExit):  # argparse: fewer than 600 tasks without --allow-few
        eval_main([str(tmp_path), "--tasks", "5"])
    run(cfg(2), tmp_path)
    with pytest.raises(ValueError, match="sinusoid has no class splits"):
        evaluate_checkpoint(tmp_path, tasks=5, split="val", progress=False)


@pytest.mark.parametrize(
    ("override", "message"),
    [("outer.stpes=3", "stpes"), ("inner.lr=fast", "inner.lr"), ("eval.baseline=maybe", "baseline")],
)
def test_schema_rejects_typos_and_wrong_types_at_composition(override, message):
    with pytest.raises(ConfigCompositionException, match=message):
        cfg(3, override)


def test_damaged_checkpoints_are_detected_and_the_previous_one_used(tmp_path, capsys):
    path = tmp_path / CHECKPOINT
    save_checkpoint(path, {"step": 1, "w": torch.arange(1000.0)})
    save_checkpoint(path, {"step": 2, "w": torch.arange(1000.0)})
    assert load_checkpoint(previous(path))[0]["step"] == 1
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # truncated
    state, used = load_checkpoint(path)
    assert state["step"] == 1 and used == previous(path)
    assert "truncated" in capsys.readouterr().out
    flipped = bytearray(good)
    flipped[-10] ^= 0xFF  # one corrupted byte
    path.write_bytes(bytes(flipped))
    previous(path).unlink()
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a metatuv checkpoint.*no checkpoint.prev.pt"):
        load_checkpoint(path)


def test_resume_from_a_corrupted_checkpoint_falls_back(tmp_path):
    run(cfg(8, "checkpoint.every=4"), tmp_path)  # checkpoints at steps 4 and 8
    path = tmp_path / CHECKPOINT
    path.write_bytes(path.read_bytes()[:-100])
    whole = tmp_path / "whole"
    whole.mkdir()
    a = run(cfg(12, "checkpoint.every=4"), whole)
    b = run(cfg(12, "checkpoint.every=4"), tmp_path)  # resumes from step 4
    assert a["test"] == b["test"] and same_params(whole, tmp_path)
