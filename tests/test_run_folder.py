"""The run folder: one writer at a time (an OS lock, gone with its process), logs that continue on resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from metatuv.checkpoint import previous
from metatuv.loggers import RUN_ID_FILE
from metatuv.runlock import LOCK_NAME, RunFolderBusy, acquire, release, run_folder_lock
from metatuv.runstate import CHECKPOINT
from metatuv.train import CONF_DIR, run

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def cfg(steps, *overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", [f"outer.steps={steps}", "eval.tasks=10", "progress=false", "logger=none", *overrides])


def rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


# ---- one writer per run folder ----


def try_lock(folder: Path) -> subprocess.CompletedProcess:
    code = "import sys; from metatuv.runlock import acquire; acquire(sys.argv[1]); print('locked')"
    return subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=120)


def test_the_lock_is_exclusive_across_processes_and_reentrant_within_one(tmp_path):
    with run_folder_lock(tmp_path):
        acquire(tmp_path)  # the same process again (Hydra callback, then train.run): counted, not refused
        release(tmp_path)
        other = try_lock(tmp_path)
        assert other.returncode != 0 and "RunFolderBusy" in other.stderr
        assert f"is in use by another run (pid={os.getpid()} host=" in other.stderr
    assert try_lock(tmp_path).stdout.strip() == "locked"  # released at the end of the block


def test_run_refuses_a_folder_held_by_another_process(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from metatuv.runlock import acquire; acquire(sys.argv[1]); "
         "print('held', flush=True); time.sleep(600)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusy, match=rf"in use by another run \(pid={holder.pid} "):
            run(cfg(3), tmp_path)
        assert not (tmp_path / CHECKPOINT).exists() and not (tmp_path / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    run(cfg(3), tmp_path)  # the holder died (SIGKILL): its lock went with it
    assert (tmp_path / "results.json").exists()


def test_second_metatuv_train_in_a_busy_folder_exits_at_once_and_kill_leaves_no_stale_lock(tmp_path):
    exe = str(BIN / "metatuv-train")
    common = ["checkpoint.every=0", "logger=none", "progress=false", "debug=default", f"hydra.run.dir={tmp_path}"]
    first = subprocess.Popen([exe, "outer.steps=1000000", *common], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    lock = tmp_path / LOCK_NAME
    metrics = tmp_path / "metrics.jsonl"  # written once meta-training is under way (.hydra/ is complete then)
    while not (metrics.exists() and metrics.stat().st_size) and time.time() < deadline:
        assert first.poll() is None, first.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    assert f"pid={first.pid} " in lock.read_text()
    hydra_config = (tmp_path / ".hydra" / "config.yaml").read_text()
    try:
        second = subprocess.run(
            [exe, "outer.steps=3", "seed=1", *common], capture_output=True, text=True, env=ENV, timeout=300
        )
        assert second.returncode == 1, second.stderr[-2000:]
        last = second.stderr.strip().splitlines()[-1]
        assert last.startswith(f"metatuv-train: error: {tmp_path} is in use by another run (pid={first.pid} host=")
        assert "Traceback" not in second.stderr
        assert (tmp_path / ".hydra" / "config.yaml").read_text() == hydra_config  # seed 0's, untouched
        assert not (tmp_path / "results.json").exists()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    run(cfg(3), tmp_path)  # kill -9 left no stale lock
    assert (tmp_path / "results.json").exists()


# ---- a resumed run continues its logs ----


def test_resumed_metrics_are_cut_back_to_the_checkpoint(tmp_path):
    """A run killed after its step-8 checkpoint had logged up to step 12 (simulated: the step-12 checkpoint is
    removed, the step-8 one stays as checkpoint.prev.pt). Resuming rewrites metrics.jsonl to what one
    uninterrupted run writes: every step once, one summary."""
    whole = tmp_path / "whole"
    whole.mkdir()
    args = ("checkpoint.every=4", "monitor.every=2")
    run(cfg(12, *args), whole)
    run(cfg(12, *args), tmp_path)
    (tmp_path / CHECKPOINT).unlink()  # the last checkpoint never made it; the logs did
    run(cfg(12, *args), tmp_path)  # resumes from step 8 (checkpoint.prev.pt)

    def strip(rs):
        return [{k: v for k, v in r.items() if k not in ("time", "train_seconds")} for r in rs]

    got, want = rows(tmp_path), rows(whole)
    assert strip(got) == strip(want)
    steps = [r["step"] for r in got if "train/loss" in r]
    assert steps == [2, 4, 6, 8, 10, 12] and sum("summary" in r for r in got) == 1


def test_no_rows_without_values(tmp_path):
    """MAML has no learned metric and no spectra: no row holding only a step."""
    run(cfg(6, "model=maml", "monitor.every=2", "monitor.images_every=0"), tmp_path)
    assert all(set(r) - {"step", "time"} for r in rows(tmp_path))
    assert [r["step"] for r in rows(tmp_path) if "train/loss" in r] == [2, 4, 6]


def test_a_fresh_start_in_a_used_folder_starts_its_log_afresh(tmp_path):
    run(cfg(6, "monitor.every=2"), tmp_path)
    run(cfg(4, "monitor.every=2", "inner.lr=0.02", "checkpoint.resume=false"), tmp_path)
    assert [r["step"] for r in rows(tmp_path) if "train/loss" in r] == [2, 4]


def wandb_run_ids(folder: Path) -> list[tuple[str, list[int]]]:
    """(run id, history steps) of every offline wandb run in the folder, oldest first."""
    from test_loggers import complete_records

    out = []
    for f in sorted(folder.glob("wandb/offline-run-*/run-*.wandb")):
        records = complete_records(f)
        run_id = next(r.run.run_id for r in records if r.WhichOneof("record_type") == "run")
        steps = [r.history.step.num for r in records if r.WhichOneof("record_type") == "history"]
        out.append((run_id, steps))
    return out


def test_a_resumed_run_logs_to_the_same_wandb_run(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    args = ("logger=wandb", "monitor.every=2", "monitor.eval_every=0", "monitor.images_every=-1", "eval.baseline=false")
    run(cfg(4, *args), tmp_path)
    time.sleep(1.1)  # wandb names offline folders by the second: two parts in one second would share a folder
    run(cfg(8, *args), tmp_path)  # resumes at step 4
    parts = sorted(wandb_run_ids(tmp_path), key=lambda part: max(part[1]))  # folder names tie within a second
    (first, steps1), (second, steps2) = parts
    assert first == second == (tmp_path / RUN_ID_FILE).read_text().strip()
    assert min(steps2) > 4 and max(steps1) == 4  # the second part only logs after the checkpoint
    run(cfg(4, *args, "checkpoint.resume=false"), tmp_path)  # a new training run: a new wandb run
    new = {i for i, _ in wandb_run_ids(tmp_path)} - {first}
    assert len(new) == 1 and previous(tmp_path / CHECKPOINT).exists()
