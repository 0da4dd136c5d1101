"""Failure handling: NaN meta-loss, bad config values, Ctrl-C — each fails or stops with one clear line."""

import errno
import json
import math
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
from metatuv.files import RunFileError
from metatuv.meta import NonFiniteLoss
from metatuv.results import DIVERGED_EXIT
from metatuv.runstate import CHECKPOINT
from metatuv.train import CONF_DIR, run

BIN = Path(sys.executable).parent


def cfg(*overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", ["outer.steps=30", "eval.tasks=10", "progress=false", "logger=none", *overrides])


def poison(monkeypatch, bad_steps):
    """Make the meta-loss NaN at the given (0-based) meta-steps by poisoning those meta-batches' targets."""
    import metatuv.build as build_module

    real = build_module.build

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

    monkeypatch.setattr(build_module, "build", build)


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
        ("inner.steps=-1", r"inner.steps=-1 must be >= 0"),
        ("inner.test_steps=-1", r"inner.test_steps=-1 must be >= 0"),
        ("model.name=reptile", r"unknown preset 'reptile'"),
        ("+logger.every=5", r"^logger.every is now monitor.every; use monitor.every=\.\.\. instead\.$"),
        ("device=cuda:7", r"device=cuda:7 but CUDA is not available")
        if not torch.cuda.is_available()
        else ("outer.meta_batch=0", r"outer.meta_batch=0 must be >= 1"),
    ],
)
def test_bad_config_values_fail_at_start_with_one_line(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        run(cfg(override), tmp_path)
    assert not (tmp_path / CHECKPOINT).exists()


CHOICES = [  # (override, extra overrides): every closed choice of metatuv/schema.py, one bad value each
    ("inner.backend=nope", []),
    ("inner.vectorize=nope", []),
    ("outer.nonfinite=nope", []),
    ("model.bound=nope", []),
    ("model.lr_mode=nope", []),
    ("metric.mode=nope", []),
    ("logger.name=nope", []),
    ("logger.mode=nope", []),
    ("benchmark.rotate=nope", ["benchmark=omniglot"]),
    ("benchmark.protocol=nope", ["benchmark=omniglot"]),
    ("benchmark.arch.pool=nope", ["benchmark=omniglot"]),
]


@pytest.mark.parametrize(("override", "extra"), CHOICES)
def test_a_bad_choice_fails_at_composition_naming_the_value(override, extra):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as e:
        cfg(*extra, override)
    cause = str(e.value.__cause__)
    assert "Invalid value 'nope', expected one of [" in cause and override.split("=")[0] in cause


def test_choices_are_the_librarys_own_lists():
    from metatuv import schema
    from metatuv.data.fewshot import ROTATIONS
    from metatuv.data.omniglot import PROTOCOLS
    from metatuv.inner import BACKENDS, VECTORIZE
    from metatuv.loggers import LOGGERS, WANDB_MODES
    from metatuv.meta.learner import NONFINITE
    from metatuv.meta.rule import LR_MODES
    from metatuv.metric import MODES
    from metatuv.nn import BOUNDS
    from metatuv.nn.models import POOLS

    pairs = [
        (schema.Backend, BACKENDS),
        (schema.Vectorize, VECTORIZE),
        (schema.NonFinite, NONFINITE),
        (schema.Bound, BOUNDS),
        (schema.LrMode, LR_MODES),
        (schema.MetricMode, MODES),
        (schema.LoggerName, LOGGERS),
        (schema.WandbMode, WANDB_MODES),
        (schema.Rotate, ROTATIONS),
        (schema.Protocol, PROTOCOLS),
        (schema.Pool, POOLS),
    ]
    for enum, values in pairs:
        assert [e.value for e in enum] == list(values) and [e.name for e in enum] == list(values)


def test_bad_choice_on_the_command_line_names_the_value(tmp_path):
    exe = str(BIN / "metatuv-train")
    out = subprocess.run(
        [exe, "inner.backend=nope", "logger=none", f"hydra.run.dir={tmp_path}"], capture_output=True, text=True
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "Invalid value 'nope', expected one of [func, higher, learn2learn]" in out.stderr
    assert "inner.backend" in out.stderr and list(tmp_path.iterdir()) == []


def test_a_moved_key_on_the_command_line_names_its_new_place(tmp_path):
    exe, key = str(BIN / "metatuv-train"), "images_every"
    out = subprocess.run([exe, f"logger.{key}=5", f"hydra.run.dir={tmp_path}"], capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.strip().splitlines() == [
        f"metatuv-train: error: logger.{key} is now monitor.{key}; use monitor.{key}=... instead."
    ]
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []


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


def strict_json(path: Path) -> dict:
    """The file parsed as strict JSON: a bare NaN/Infinity fails the test."""

    def refuse(token: str):
        raise AssertionError(f"{path} holds a bare {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


DIVERGE = ["inner.lr=1", "outer.steps=0", "eval.tasks=10", "logger=none", "progress=false"]  # 10 steps at α=1: inf


def test_nan_meta_test_is_recorded_as_diverged_and_exits_3(tmp_path):
    exe = str(BIN / "metatuv-train")
    out = subprocess.run([exe, *DIVERGE, f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=300)
    assert out.returncode == DIVERGED_EXIT == 3, out.stderr[-2000:]
    assert "tuv, meta-trained 0 steps            DIVERGED (not finite)" in out.stdout
    assert "baseline) DIVERGED (not finite)" in out.stdout and "done:" not in out.stdout
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("metatuv-train: DIVERGED: the meta-test MSE of the meta-trained model and of the baseline")
    assert str(tmp_path / "results.json") in last and "Traceback" not in out.stderr
    r = strict_json(tmp_path / "results.json")
    assert r["status"] == "diverged" and r["diverged"] == ["test", "baseline"]
    assert r["test"] is None and r["test_ci95"] is None and r["baseline"] is None
    assert r["overrides"] == DIVERGE  # the run's identity: its task overrides (hydra.* are not part of it)


def test_a_diverged_job_fails_the_multirun_but_the_others_still_run(tmp_path):
    exe = str(BIN / "metatuv-train")
    args = ["-m", "inner.lr=1,0.01", "outer.steps=0", "eval.tasks=10", "logger=none", "progress=false"]
    out = subprocess.run([exe, *args, f"hydra.sweep.dir={tmp_path}"], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "Diverged: metatuv-train: DIVERGED" in out.stderr
    first, second = strict_json(tmp_path / "0" / "results.json"), strict_json(tmp_path / "1" / "results.json")
    assert first["status"] == "diverged" and first["overrides"][0] == "inner.lr=1"
    assert second["status"] == "ok" and math.isfinite(second["test"]) and second["overrides"][0] == "inner.lr=0.01"


def test_nan_in_metatuv_eval_is_null_and_exits_3(tmp_path, capsys):
    from metatuv.evaluate import main as eval_main

    r = run(cfg("inner.lr=1", "outer.steps=1", "eval.tasks=4", "eval.batch=2", "eval.baseline=false"), tmp_path)
    assert r["status"] == "diverged" and r["test"] is None
    strict_json(tmp_path / "results.json")
    strict_json(tmp_path / "history.json")
    with pytest.raises(SystemExit) as exit_:
        eval_main([str(tmp_path), "--tasks", "4", "--allow-few", "--no-progress"])
    assert exit_.value.code == 3
    captured = capsys.readouterr()
    assert "DIVERGED (not finite)" in captured.out and "metatuv-eval: DIVERGED" in captured.err
    e = strict_json(tmp_path / "eval-test-10steps-4tasks.json")
    assert e["status"] == "diverged" and e["mean"] is None and e["ci95"] is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("device=cpuu", r"^device='cpuu' is not a torch device; use device=cpu or device=cuda"),
        ("device=mps", r"^device=mps but MPS is not available here; use device=cpu")
        if not torch.backends.mps.is_available()
        else ("device=tpu", r"^device='tpu' is not a torch device"),
        ("monitor.every=-1", r"^monitor.every=-1 must be >= 0"),
        ("monitor.eval_every=-5", r"^monitor.eval_every=-5 must be >= 0"),
        ("monitor.images_every=-2", r"^monitor.images_every=-2 must be >= -1"),
        ("monitor.eval_tasks=1", r"^monitor.eval_tasks=1 must be >= 2"),
        ("eval.tasks=1", r"^eval.tasks=1 must be >= 2 \(a 95% CI needs two tasks"),
        ("metric.batches=0", r"^metric.batches=0 must be >= 1"),
        ("+outer.stpes=3", r"^outer.stpes is not a config key \(added with \+outer.stpes=\.\.\.\?\); did you mean "),
        ("+foo=1", r"^foo is not a config key .*metatuv/schema.py"),
    ],
)
def test_more_bad_values_fail_before_anything_is_written(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        run(cfg(override), tmp_path)
    assert list(tmp_path.iterdir()) == []  # not even metrics.jsonl: validation comes before the logger


def test_added_unknown_key_on_the_command_line_is_one_line(tmp_path):
    exe = str(BIN / "metatuv-train")
    out = subprocess.run(
        [exe, "+outer.stpes=3", "logger=none", f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert (
        out.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "metatuv-train: error: outer.stpes is not a config key (added with +outer.stpes=...?); "
            "did you mean outer.steps?"
        )
    )


def test_disk_full_names_the_file_and_leaves_no_partial_file(tmp_path, monkeypatch):
    import metatuv.files as files

    real = files.os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(f".history.json.tmp{os.getpid()}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    with pytest.raises(RunFileError) as err:
        run(cfg("outer.steps=2", "eval.tasks=4", "eval.batch=2"), tmp_path)
    message = str(err.value)
    assert message == (
        f"cannot write {tmp_path / 'history.json'}: No space left on device (Errno 28); free space on that disk, "
        "then rerun."
    )
    assert err.value.errno == errno.ENOSPC
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "history.json" not in names and "results.json" not in names  # no 0-byte file, no results without it
    assert not [n for n in names if ".tmp" in n]  # the temp file is gone too


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
