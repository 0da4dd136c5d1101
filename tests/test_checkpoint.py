"""Checkpoints: atomic, resumable bit-identically (also after SIGKILL), evaluated by metatuv-eval; typed schema."""

import hashlib
import io
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

from metatuv.build import PRESET_FIELDS
from metatuv.checkpoint import (
    CheckpointError,
    UnsafeCheckpoint,
    damaged,
    load_checkpoint,
    previous,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from metatuv.checkpoint import main as ckpt_main
from metatuv.evaluate import evaluate_checkpoint
from metatuv.evaluate import main as eval_main
from metatuv.meta import PRESETS, get_preset
from metatuv.runstate import CHECKPOINT, upgrade_config
from metatuv.train import CONF_DIR, run

BIN = Path(sys.executable).parent


def cfg(steps, *overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", [f"outer.steps={steps}", "eval.tasks=10", "progress=false", "logger=none", *overrides])


def same_params(a: Path, b: Path) -> bool:
    sa, sb = torch.load(a / "model.pt", weights_only=True), torch.load(b / "model.pt", weights_only=True)
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


# ---- plain data only: weights_only=True, crafted and old-format files refused without running them ----


class Runs:
    """An object whose unpickling runs a shell command (what a crafted checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_checkpoint(path: Path, state, fmt: int) -> None:
    """A file with a valid-looking metatuv header and sha256 around a full pickle of ``state``."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    digest = hashlib.sha256(payload).hexdigest()
    path.write_bytes(f"metatuv-checkpoint {fmt} sha256={digest} bytes={len(payload)}\n".encode() + payload)


def test_checkpoint_and_model_load_with_weights_only(tmp_path):
    run(cfg(3, "model=mtuv", "metric=statistics", "metric.every=2"), tmp_path)
    payload = (tmp_path / CHECKPOINT).read_bytes().partition(b"\n")[2]
    state = torch.load(io.BytesIO(payload), weights_only=True)  # raises on anything but plain data
    assert state["step"] == 3 and isinstance(state["config"], dict) and state["config"]["model"]["name"] == "mtuv"
    assert isinstance(state["rng"]["numpy"]["keys"], torch.Tensor) and state["statistics"]["A"]
    assert torch.load(tmp_path / "model.pt", weights_only=True).keys() == state["learner"].keys()
    assert (tmp_path / CHECKPOINT).read_bytes().startswith(b"metatuv-checkpoint 2 ")


def test_rng_states_round_trip(tmp_path):
    import random

    import numpy as np

    state = rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    assert torch.equal(a[0], b[0]) and (a[1] == b[1]).all() and a[2:] == b[2:]


def crafted(tmp_path: Path, marker: Path, fmt: int = 2) -> Path:
    """A run folder whose checkpoint.pt (valid header, matching sha256) runs `touch marker` when unpickled."""
    run(cfg(2), tmp_path)
    state, _ = load_checkpoint(tmp_path / CHECKPOINT)
    state["learner"] = {"weight": Runs(marker)}
    write_checkpoint(tmp_path / CHECKPOINT, state, fmt)
    return tmp_path / CHECKPOINT


def test_crafted_checkpoint_is_refused_in_process(tmp_path):
    marker = tmp_path / "ran"
    path = crafted(tmp_path, marker)
    with pytest.raises(UnsafeCheckpoint, match=r"refused without being unpickled.*\n?") as err:
        load_checkpoint(path)  # no fallback on checkpoint.prev.pt either: the file is not damaged, it is foreign
    assert "posix.system" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UnsafeCheckpoint):
        run(cfg(4), tmp_path)
    with pytest.raises(SystemExit, match="refused without being unpickled"):
        eval_main([str(tmp_path), "--tasks", "5", "--allow-few", "--no-progress"])
    assert not marker.exists()
    torch.load(io.BytesIO(path.read_bytes().partition(b"\n")[2]), weights_only=False)  # the control: it does run
    assert marker.exists()


@pytest.mark.parametrize("entry", ["metatuv-eval", "metatuv-train"])
def test_crafted_checkpoint_never_runs_from_the_command_line(tmp_path, entry):
    """`metatuv-eval DIR` and a resuming `metatuv-train` refuse a crafted checkpoint with one line; no side effect."""
    marker = tmp_path / "ran"
    folder = tmp_path / "run"
    folder.mkdir()
    crafted(folder, marker)
    if entry == "metatuv-eval":
        cmd = [str(BIN / entry), str(folder), "--tasks", "5", "--allow-few", "--no-progress"]
    else:
        cmd = [str(BIN / entry), "outer.steps=4", "logger=none", "progress=false", f"hydra.run.dir={folder}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert "refused without being unpickled" in last and "posix.system" in last, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert not marker.exists()


def test_old_format_checkpoint_is_refused_then_upgraded_when_trusted(tmp_path, capsys):
    """A format-1 checkpoint (full pickle) is refused without unpickling; `--upgrade-trusted` converts one you
    wrote, and the run then resumes exactly."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    whole.mkdir(), parts.mkdir()
    run(cfg(6, "checkpoint.every=4"), whole)
    run(cfg(4, "checkpoint.every=4"), parts)
    path = parts / CHECKPOINT
    state, _ = load_checkpoint(path)
    n, p = state["rng"]["numpy"], state["rng"]["python"]  # as format 1 stored them: numpy / python tuples
    state["rng"]["numpy"] = (n["kind"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], 0.0)
    state["rng"]["python"] = (p["version"], tuple(p["internal"].tolist()), p["gauss"])
    write_checkpoint(path, state, fmt=1)
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    write_checkpoint(evil, {"step": 1, "x": Runs(marker)}, fmt=1)
    with pytest.raises(UnsafeCheckpoint, match="old-format metatuv checkpoint.*--upgrade-trusted"):
        load_checkpoint(evil)
    with pytest.raises(ValueError, match=r"old-format metatuv checkpoint \(format 1"):
        run(cfg(6, "checkpoint.every=4"), parts)
    assert not marker.exists()
    ckpt_main(["--upgrade-trusted", str(path)])
    assert "upgraded to checkpoint format 2" in capsys.readouterr().out
    run(cfg(6, "checkpoint.every=4"), parts)
    assert same_params(whole, parts)


# ---- fallback keeps the good copy ----


def test_a_damaged_checkpoint_is_never_rotated_over_the_good_previous_one(tmp_path):
    path = tmp_path / CHECKPOINT
    save_checkpoint(path, {"step": 1})
    save_checkpoint(path, {"step": 2})
    path.write_bytes(path.read_bytes()[:-3])  # damaged
    save_checkpoint(path, {"step": 3})
    assert load_checkpoint(path)[0]["step"] == 3
    assert load_checkpoint(previous(path))[0]["step"] == 1  # the damaged step-2 file did not become .prev


def test_resume_after_fallback_keeps_the_good_copy_and_names_it(tmp_path, capsys):
    run(cfg(8, "checkpoint.every=4"), tmp_path)  # checkpoint.pt at step 8, checkpoint.prev.pt at step 4
    path = tmp_path / CHECKPOINT
    path.write_bytes(path.read_bytes()[:-100])
    capsys.readouterr()
    run(cfg(8, "checkpoint.every=4"), tmp_path)  # resumes from step 4, then saves at step 8
    out = capsys.readouterr().out
    assert f"resuming from {previous(path)} at meta-step 4/8" in out and "truncated" in out
    assert f"moved the damaged {CHECKPOINT} aside to {damaged(path)}" in out
    assert damaged(path).exists()
    assert load_checkpoint(path)[0]["step"] == 8
    assert load_checkpoint(previous(path))[0]["step"] == 4  # still the good copy (not the damaged file)


def test_missing_checkpoint_resumes_from_the_previous_one(tmp_path, capsys):
    whole = tmp_path / "whole"
    whole.mkdir()
    a = run(cfg(12, "checkpoint.every=4"), whole)
    run(cfg(8, "checkpoint.every=4"), tmp_path)
    (tmp_path / CHECKPOINT).unlink()
    e = evaluate_checkpoint(tmp_path, tasks=5, progress=False)  # metatuv-eval uses it too, and says so
    assert e["meta_step"] == 4 and e["checkpoint"] == str(previous(tmp_path / CHECKPOINT))
    assert "is missing; using the previous checkpoint" in capsys.readouterr().out
    b = run(cfg(12, "checkpoint.every=4"), tmp_path)
    out = capsys.readouterr().out
    assert f"{tmp_path / CHECKPOINT} is missing; using the previous checkpoint" in out
    assert f"resuming from {previous(tmp_path / CHECKPOINT)} at meta-step 4/12" in out
    assert a["test"] == b["test"] and same_params(whole, tmp_path)


# ---- the resume identity: keys that change results, not paths or logging ----


def test_resume_with_a_moved_data_root_and_other_logging(tmp_path, capsys):
    whole = tmp_path / "whole"
    whole.mkdir()
    a = run(cfg(8, "checkpoint.every=4"), whole)
    run(cfg(4, "paths.data_root=/old/data", "paths.cache_dir=/old/cache"), tmp_path)
    capsys.readouterr()
    moved = ("paths.data_root=/new/data", "paths.cache_dir=/new/cache", "monitor.every=1", "checkpoint.every=2")
    b = run(cfg(8, *moved, "progress=true"), tmp_path)
    assert "resuming from" in capsys.readouterr().out
    assert a["test"] == b["test"] and same_params(whole, tmp_path)
    with pytest.raises(ValueError, match=r"outer.meta_batch=4.*outer.meta_batch=8"):  # this one changes results
        run(cfg(10, "outer.meta_batch=8"), tmp_path)


def test_a_run_written_before_the_new_model_keys_resumes(tmp_path, capsys):
    """A checkpoint whose config predates model.bias_inside_T / bound / max_step and benchmark.split_dir, the preset's
    fields in model (only model.name) and the monitor node (logger.every, …) resumes, bit-identical to an
    uninterrupted run (the keys' absent values are the ones that reproduce it), and metatuv-eval reads it."""
    whole = tmp_path / "whole"
    whole.mkdir()
    a = run(cfg(8, "checkpoint.every=4", "model=mtnet"), whole)
    run(cfg(4, "model=mtnet"), tmp_path)
    state, _ = load_checkpoint(tmp_path / CHECKPOINT)
    old = state["config"]
    old["model"] = {"name": "mtnet"}
    old["benchmark"].pop("split_dir")
    old["logger"] |= old.pop("monitor")  # logger.every, logger.eval_every, … as runs before the monitor node wrote
    assert old["logger"]["every"] == 100
    save_checkpoint(tmp_path / CHECKPOINT, state)
    assert evaluate_checkpoint(tmp_path, tasks=4, progress=False)["status"] == "ok"  # metatuv-eval reads it too
    capsys.readouterr()
    b = run(cfg(8, "model=mtnet"), tmp_path)
    assert "resuming from" in capsys.readouterr().out
    assert a["test"] == b["test"] and same_params(whole, tmp_path)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_an_old_stored_config_gets_the_presets_fields_and_the_monitor_node(name):
    """upgrade_config: model.name only (model.bound null: the preset's own) -> the preset's fields; logger.every,
    eval_every, eval_tasks, images_every -> monitor.*; a field written explicitly is kept."""
    old = {
        "model": {"name": name, "bound": None, "max_step": 1.0},
        "logger": {"name": "none", "every": 7, "eval_every": 0, "eval_tasks": 3, "images_every": -1},
    }
    new = upgrade_config(old)
    p = get_preset(name)
    trained = [k for k in PRESET_FIELDS if k != "backtrack"]  # what the run was trained with: the preset's
    assert {k: new["model"][k] for k in trained} == {k: getattr(p, k) for k in trained}
    assert new["model"]["backtrack"] == 0  # a run from before model.backtrack was evaluated with plain steps
    assert new["monitor"] == {"every": 7, "eval_every": 0, "eval_tasks": 3, "images_every": -1}
    assert new["logger"] == {"name": "none"} and old["logger"]["every"] == 7  # the stored dict is not changed
    assert new["model"]["bias_inside_T"] is False and new["benchmark"]["split_dir"] is None
    kept = upgrade_config({"model": {"name": name, "bound": "spectral", "use_T": True}})
    assert kept["model"]["bound"] == "spectral" and kept["model"]["use_T"] is True


def test_a_refused_resume_opens_no_logger(tmp_path, monkeypatch):
    """The identity check comes before the logger: a refused rerun writes nothing (no wandb run under the finished
    run's id with the refused config, no metrics rows)."""
    import metatuv.train as train

    run(cfg(2), tmp_path)
    opened = []
    monkeypatch.setattr(train, "open_logger", lambda *a, **k: opened.append(a) or train.NullLogger())
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    with pytest.raises(ValueError, match=r"inner.lr=0.01.*inner.lr=0.02"):
        run(cfg(4, "inner.lr=0.02"), tmp_path)
    assert not opened
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.name != "run.lock"} == {
        k: v for k, v in before.items() if k != "run.lock"
    }
