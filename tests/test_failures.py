"""Failure handling: NaN meta-loss, bad config values, Ctrl-C — each fails or stops with one clear line."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from metatuv.checkpoint import NonFiniteCheckpoint, first_nonfinite, load_checkpoint
from metatuv.meta import NonFiniteLoss
from metatuv.train import CHECKPOINT, CONF_DIR, run

BIN = Path(sys.executable).parent


def cfg(*overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", ["outer.steps=30", "eval.tasks=10", "progress=false", "logger=none", *overrides])


def poison(monkeypatch, bad_steps):
    """Make the meta-loss NaN at the given (0-based) meta-steps by poisoning those meta-batches' targets."""
    import metatuv.train as train

    real = train.build

    def build(*args, **kwargs):
        setup = real(*args, **kwargs)
        inner, count = setup.train, [0]

        class Poisoned:
            def __iter__(self):
                return self

            def __next__(self):
                xs, ys, xq, yq = next(inner)
                count[0] += 1
                return (xs, ys, xq, yq * float("nan")) if count[0] - 1 in bad_steps else (xs, ys, xq, yq)

            def state_dict(self):
                return inner.state_dict()

            def load_state_dict(self, state):
                inner.load_state_dict(state)

        setup.train = Poisoned()
        return setup

    monkeypatch.setattr(train, "build", build)


def test_nan_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    poison(monkeypatch, {17})
    with pytest.raises(NonFiniteLoss, match="meta-loss is nan at meta-step 17; stopped"):
        run(cfg("checkpoint.every=5"), tmp_path)
    state, _ = load_checkpoint(tmp_path / CHECKPOINT)
    assert state["step"] == 15 and all(torch.isfinite(v).all() for v in state["learner"].values())
    assert not (tmp_path / "results.json").exists()


def test_nan_batches_can_be_skipped(tmp_path, monkeypatch):
    poison(monkeypatch, {3, 4, 20})
    results = run(cfg("outer.nonfinite=skip"), tmp_path)
    assert results["test"] == results["test"]  # finite: the poisoned meta-batches were not applied
    state, _ = load_checkpoint(tmp_path / CHECKPOINT)
    assert all(torch.isfinite(v).all() for v in state["learner"].values())


def test_skipping_gives_up_when_nothing_is_finite(tmp_path, monkeypatch):
    poison(monkeypatch, set(range(30)))
    with pytest.raises(NonFiniteLoss, match="11 meta-batches in a row"):
        run(cfg("outer.nonfinite=skip"), tmp_path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("inner.lr=-0.1", r"inner.lr=-0.1 must be > 0"),
        ("outer.lr=0", r"outer.lr=0.0 must be > 0"),
        ("benchmark.shots=0", r"benchmark.shots=0 must be >= 1"),
        ("inner.backend=jax", r"inner.backend='jax' is not one of \['func', 'higher', 'learn2learn'\]"),
        ("model.name=reptile", r"unknown preset 'reptile'"),
        ("outer.nonfinite=ignore", r"outer.nonfinite='ignore' is not one of"),
        ("device=cuda:7", r"device=cuda:7 but CUDA is not available")
        if not torch.cuda.is_available()
        else ("outer.meta_batch=0", r"outer.meta_batch=0 must be >= 1"),
    ],
)
def test_bad_config_values_fail_at_start_with_one_line(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        run(cfg(override), tmp_path)
    assert not (tmp_path / CHECKPOINT).exists()


def test_bad_config_on_the_command_line_prints_one_line(tmp_path):
    exe = str(BIN / "metatuv-train")
    out = subprocess.run(
        [exe, "inner.lr=-1", "logger=none", f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 1
    assert (
        out.stderr.strip().splitlines()[-1] == "metatuv-train: error: inner.lr=-1.0 must be > 0 (e.g. inner.lr=0.01)."
    )
    assert "Traceback" not in out.stderr


def test_ctrl_c_writes_a_checkpoint_and_exits_cleanly(tmp_path):
    exe = str(BIN / "metatuv-train")
    args = ["outer.steps=100000", "checkpoint.every=0", "logger=none", "progress=false", f"hydra.run.dir={tmp_path}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([exe, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    metrics = tmp_path / "metrics.jsonl"
    while not (metrics.exists() and metrics.stat().st_size) and time.time() < deadline:  # step 0 was logged
        time.sleep(0.05)
    time.sleep(1.0)  # meta-training is under way
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    state, _ = load_checkpoint(tmp_path / CHECKPOINT)
    assert 0 < state["step"] < 100000 and len(state["history"]) == state["step"]
    assert f"interrupted after meta-step {state['step']}; checkpoint written to" in stdout
    assert "Traceback" not in stderr


def test_nonfinite_parameters_are_never_checkpointed(tmp_path):
    """The issue's repro: without clipping, outer.lr=0.05 blows the parameters up while the loss is still finite.
    The update that does it is named, the checkpoint before it is kept (finite), and a rerun stops at that same
    step again (not at once on a NaN checkpoint)."""
    args = ("outer.clip=null", "checkpoint.every=1", "outer.lr=0.05", "outer.steps=400")
    with pytest.raises(NonFiniteLoss, match=r"meta-parameters became (nan|inf) in the update of meta-step") as err:
        run(cfg(*args), tmp_path)
    step = int(re.search(r"meta-step (\d+) \(its meta-loss \S+ was finite\)", str(err.value)).group(1))
    state, _ = load_checkpoint(tmp_path / CHECKPOINT)
    assert state["step"] == step and len(state["history"]) == step
    assert all(torch.isfinite(v).all() for v in state["learner"].values())
    assert first_nonfinite(state) is None
    with pytest.raises(NonFiniteLoss, match=rf"update of meta-step {step} "):
        run(cfg(*args), tmp_path)


def spoil(monkeypatch, at: int, where: str):
    """Make the meta-optimizer's update number ``at`` (0-based) leave +inf in a parameter or in its own state."""
    import metatuv.train as train

    real = train.build_optimizer

    def build_optimizer(*args, **kwargs):
        opt = real(*args, **kwargs)
        step, calls = opt.step, [0]

        def spoiled_step(*a, **kw):
            out = step(*a, **kw)
            if calls[0] == at:
                p = opt.param_groups[0]["params"][0]
                with torch.no_grad():
                    (p if where == "param" else opt.state[p]["exp_avg_sq"]).view(-1)[0] = float("inf")
            calls[0] += 1
            return out

        opt.step = spoiled_step
        return opt

    monkeypatch.setattr(train, "build_optimizer", build_optimizer)


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_a_nonfinite_update_stops_at_its_step_in_both_modes(tmp_path, monkeypatch, mode):
    spoil(monkeypatch, 12, "param")
    with pytest.raises(NonFiniteLoss, match=r"meta-parameters became inf in the update of meta-step 12 "):
        run(cfg(f"outer.nonfinite={mode}", "checkpoint.every=5"), tmp_path)
    state, _ = load_checkpoint(tmp_path / CHECKPOINT)
    assert state["step"] == 10 and first_nonfinite(state) is None


def test_a_nonfinite_optimizer_state_is_not_checkpointed(tmp_path, monkeypatch):
    spoil(monkeypatch, 7, "state")
    with pytest.raises(NonFiniteCheckpoint, match=r"optimizer.state.0.exp_avg_sq is NaN/Inf after meta-step 10"):
        run(cfg("checkpoint.every=5"), tmp_path)
    state, _ = load_checkpoint(tmp_path / CHECKPOINT)
    assert state["step"] == 5 and first_nonfinite(state) is None
