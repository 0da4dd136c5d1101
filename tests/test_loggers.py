"""Loggers: metrics.jsonl always, wandb offline (no network) with spectra, condition numbers, masks, pictures."""

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import metatuv.train as train
from metatuv.loggers import NullLogger, RunLogger, make_logger
from metatuv.metric.summary import learned_metrics
from metatuv.nn import TUVLinear
from metatuv.train import CONF_DIR, run

D = torch.float64


def cfg(*overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", ["outer.steps=20", "eval.tasks=10", "progress=false", *overrides])


def wandb_records(run_file: Path):
    """The protobuf records of an offline ``run-*.wandb`` file (a LevelDB-style log: 32 KiB blocks, 7-byte headers)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def complete_records(run_file: Path, timeout: float = 30.0) -> list:
    """The records once the file holds the run's ``exit`` record: ``run.finish()`` returns when wandb-core has
    handled the exit, but its writer may flush the last 32 KiB block some milliseconds later (seen in CI)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            records = list(wandb_records(run_file))
        except Exception:  # a record cut off mid-write
            if time.monotonic() > deadline:
                raise
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def wandb_history_keys(run_file: Path) -> set[str]:
    keys = set()
    for record in complete_records(run_file):
        if record.WhichOneof("record_type") == "history":
            keys |= {item.key or "/".join(item.nested_key) for item in record.history.item}
    return keys


def test_learned_metrics_by_hand():
    layer = TUVLinear(2, 3, dtype=D)
    with torch.no_grad():
        layer.T.copy_(torch.diag(torch.tensor([2.0, 1.0, 0.5], dtype=D)))  # TTᵀ = diag(4, 1, 1/4)
        layer.V.copy_(torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=D))  # VᵀV = [[1, 1], [1, 2]]
    m = learned_metrics(torch.nn.Sequential(layer), lr=0.1)
    vv = [(3 - 5**0.5) / 2, (3 + 5**0.5) / 2]  # eigenvalues of [[1, 1], [1, 2]]
    assert m["metric/0/TT/cond"] == pytest.approx(16.0)
    assert m["metric/0/TT/logdet"] == pytest.approx(0.0, abs=1e-12)
    assert m["metric/0/TT/dist_identity"] == pytest.approx(math.sqrt((9 + 0 + 0.75**2) / 3))
    assert m["metric/0/VV/cond"] == pytest.approx(vv[1] / vv[0])
    assert m["metric/0/VV/logdet"] == pytest.approx(0.0, abs=1e-12)  # det VᵀV = det(V)² = 1
    assert m["metric/0/max_step"] == pytest.approx(0.1 * 4 * vv[1])


def test_wandb_offline_run_without_network(tmp_path, monkeypatch):
    """logger=wandb: an offline run whose history holds spectra, condition numbers, masks, validation and test
    scores and pictures, PNGs in the run folder — with every network route pointing at a closed port."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    results = run(
        cfg("model=mtuv", "logger=wandb", "monitor.every=5", "monitor.eval_every=10", "monitor.images_every=10"),
        tmp_path,
    )
    assert results["test"] > 0
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    keys = wandb_history_keys(run_file)
    for layer in ("0", "2", "4"):
        assert {f"metric/{layer}/TT/cond", f"metric/{layer}/VV/cond", f"metric/{layer}/max_step"} <= keys
        assert {f"hist/{layer}/TT/values", f"hist/{layer}/VV/bins", f"mask/{layer}/hard"} <= keys
        assert f"image/{layer}/path" in keys or any(k.startswith(f"image/{layer}/") for k in keys)
        assert (tmp_path / "figures" / f"{layer}-step10.png").exists()
        assert (tmp_path / "figures" / f"{layer}-step20.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"train/loss", "val/MSE", "val/MSE_ci95", "test/MSE", "baseline/MSE"} <= keys
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [5, 10, 15, 20]
    assert sum("val/MSE" in r for r in rows) == 2


def test_logger_none_writes_only_the_jsonl(tmp_path):
    run(cfg("logger=none", "monitor.every=10"), tmp_path)
    assert not (tmp_path / "wandb").exists() and not (tmp_path / "figures").exists()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and rows[0]["metric/0/TT/cond"] == 1.0  # T = V = I before meta-training
    assert {r["step"] for r in rows if "summary" not in r} == {0, 10, 20}
    assert rows[-1]["summary"] and "test/MSE" in rows[-1]


def test_null_logger_runs_the_base_init_and_writes_nothing(tmp_path, monkeypatch):
    """NullLogger (ranks other than 0) is a RunLogger built by the base __init__: it holds every attribute a RunLogger
    holds, starts no thread, and none of its methods writes a file or renders a figure."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "real").mkdir()
    real = RunLogger(tmp_path / "real")
    null = NullLogger()
    assert set(vars(null)) == set(vars(real)) and null.worker is None and null.file is None
    rendered = []
    null.rewind(0)
    null.log({"train/loss": 1.0}, 1)
    null.histograms({"spectrum": [1.0, 2.0]}, 1)
    null.figures(lambda: rendered.append(1) or {"p": tmp_path / "p.png"}, 1)
    null.summary({"test/MSE": 0.5})
    null.finish()
    real.finish()
    assert not rendered and [p.name for p in tmp_path.iterdir()] == ["real"]
    with pytest.raises(ValueError, match="a wandb run needs an out_dir"):
        RunLogger(None, init=lambda: None)


def test_logging_does_not_change_training(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    ra = run(cfg("model=mtuv", "logger=none", "monitor.every=1", "monitor.eval_every=3"), a)
    rb = run(cfg("model=mtuv", "logger=none", "monitor.every=0", "monitor.eval_every=0"), b)
    sa, sb = torch.load(a / "model.pt"), torch.load(b / "model.pt")
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and ra["test"] == rb["test"]


def test_finish_is_called_when_the_run_fails(tmp_path, monkeypatch):
    finished = []

    class Recording(RunLogger):
        def finish(self, ok: bool = True) -> None:
            finished.append(ok)
            super().finish(ok)

    monkeypatch.setattr(train, "make_logger", lambda kind, out_dir, *a: Recording(out_dir))
    with pytest.raises(ValueError, match="unknown preset"):  # a bad value fails before the logger opens
        run(cfg("model.name=nope"), tmp_path)
    assert finished == []
    with pytest.raises(FileNotFoundError, match="does not exist"):  # a run that fails once the logger is open
        run(cfg("benchmark=omniglot", f"paths.data_root={tmp_path / 'nowhere'}"), tmp_path)
    assert finished == [False]


def test_bad_logger_settings_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="unknown logger 'tensorboard'"):
        make_logger("tensorboard", tmp_path)
    with pytest.raises(ValueError, match="logger.mode='cloud'"):
        make_logger("wandb", tmp_path, mode="cloud")


def test_runs_of_one_sweep_share_a_wandb_group(tmp_path):
    exe = Path(sys.executable).with_name("metatuv-train")
    cmd = [
        str(exe),
        "-m",
        "model=maml,tuv",
        "outer.steps=2",
        "eval.tasks=4",
        "progress=false",
        f"hydra.sweep.dir={tmp_path}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    runs = [
        next(r.run for r in complete_records(f) if r.WhichOneof("record_type") == "run")
        for f in sorted(tmp_path.glob("*/wandb/offline-run-*/run-*.wandb"))
    ]
    assert [r.run_group for r in runs] == [str(tmp_path)] * 2
    assert [r.display_name.split(":")[0] for r in runs] == ["0", "1"]


def test_wandb_failure_reaches_the_training_thread(tmp_path, monkeypatch):
    """wandb runs on its own thread; an error there is raised at the next log call, not swallowed."""
    import wandb

    def broken_init(**kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(wandb, "init", broken_init)
    logger = make_logger("wandb", tmp_path, {"a": 1}, mode="offline")
    logger.worker.started.wait()
    with pytest.raises(RuntimeError, match="logger failed: OSError: disk full"):
        logger.log({"x": 1.0}, 1)
    logger.finish(ok=False)  # after a failure: closes without raising over the run's own error
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1


def test_wandb_online_without_login_fails_at_start(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc key
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with pytest.raises(RuntimeError, match="logger failed: .*(API key|api_key).*logger.mode=offline"):
        make_logger("wandb", tmp_path, {"a": 1}, mode="online")
