"""The metatuv-train entry point: composes its config, runs, prints MSE ± CI, writes its outputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from metatuv.build import build_learner
from metatuv.meta import PRESETS
from metatuv.train import run

CONF = Path(__file__).resolve().parents[1] / "conf"


def small(cfg_overrides=()):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", ["outer.steps=20", "eval.tasks=20", "progress=false", "logger=none", *cfg_overrides])


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_run_every_preset(tmp_path, preset):
    results = run(small([f"model={preset}"]), tmp_path)
    assert results["preset"] == preset and results["meta_steps"] == 20
    assert results["test"] > 0 and results["baseline"] > 0
    assert (tmp_path / "model.pt").exists()
    if preset in ("mtnet", "mtuv"):
        assert set(results["mask_fractions"]) == {"0", "2", "4"}
    assert json.loads((tmp_path / "results.json").read_text())["test"] == results["test"]


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
    assert results["test"] > 0


def test_run_polynomial(tmp_path):
    results = run(small(["benchmark=polynomial", "benchmark.order=2", "model=mtnet"]), tmp_path)
    assert results["benchmark"] == "polynomial" and results["metric"] == "MSE" and results["test"] > 0


@pytest.mark.data
def test_run_omniglot_prints_accuracy(tmp_path, data_root, cache_dir):
    cfg = small(
        [
            "benchmark=omniglot",
            f"paths.data_root={data_root}",
            f"paths.cache_dir={cache_dir}",
            "outer.meta_batch=2",
            "outer.steps=3",
            "eval.tasks=4",
            "benchmark.arch.hidden=8",
        ]
    )
    assert cfg.inner.lr == 0.4 and cfg.inner.test_steps == 3  # the benchmark's own defaults
    results = run(cfg, tmp_path)
    assert results["metric"] == "accuracy" and 0 <= results["test"] <= 1
    from metatuv.train import summary

    assert "meta-test accuracy over 4 tasks (omniglot 5-way 1-shot" in summary(cfg, results)


def test_train_keeps_the_names_other_code_imported_from_it():
    """metatuv.train re-exports every name that moved to build / runstate / results (the shim)."""
    import metatuv.build
    import metatuv.results
    import metatuv.runstate
    import metatuv.train as train

    moved = {
        metatuv.build: "REGRESSION STATS_SEED_OFFSET TEST_SEED_OFFSET VAL_SEED_OFFSET build build_learner "
        "statistics_hook validate",
        metatuv.runstate: "CHECKPOINT stored_config",
        metatuv.results: "DIVERGED_EXIT score_text",
    }
    for home, names in moved.items():
        for name in names.split():
            assert getattr(train, name) is getattr(home, name), name


def test_missing_data_root_fails_with_one_clear_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="data root /nonexistent/x does not exist; set paths.data_root"):
        run(small(["benchmark=omniglot", "paths.data_root=/nonexistent/x"]), tmp_path)


def test_every_benchmark_config_composes():
    for name in ("sinusoid", "polynomial", "omniglot", "mini-imagenet", "tiered-imagenet", "cifar-fs", "fc100"):
        cfg = small([f"benchmark={name}"])
        assert cfg.benchmark.name == name


def test_test_tasks_do_not_depend_on_meta_batch(tmp_path):
    a = run(small(["outer.steps=0", "outer.meta_batch=4"]), tmp_path)
    b = run(small(["outer.steps=0", "outer.meta_batch=3"]), tmp_path)
    assert a["test"] == b["test"]


def test_vinyals_with_rotation_is_refused(tmp_path):
    with pytest.raises(ValueError, match="benchmark.rotate=all with protocol=vinyals would alias classes"):
        run(small(["benchmark=omniglot", "benchmark.rotate=all"]), tmp_path)


@pytest.mark.parametrize("mode", ["statistics", "statistics_init"])
def test_run_with_statistics_metric(tmp_path, monkeypatch, mode):
    """T, V from statistics: frozen (and re-estimated every `every` steps) or only initialized, then meta-learned."""
    import metatuv.build as build_module

    calls, real = [], build_module.reestimate

    def counting(model, *args):
        calls.append({n: p.requires_grad for n, p in model.named_parameters() if n.endswith((".T", ".V"))})
        return real(model, *args)

    monkeypatch.setattr(build_module, "reestimate", counting)
    results = run(small([f"metric={mode}", "metric.every=7"]), tmp_path)
    assert results["metric_mode"] == mode and results["test"] > 0
    assert len(calls) == (3 if mode == "statistics" else 1)  # steps 0, 7, 14 of 20 — or once
    assert all(not any(c.values()) if mode == "statistics" else all(c.values()) for c in calls)
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    T = next(v for k, v in state.items() if k.endswith(".T"))
    assert not torch.allclose(T, torch.eye(T.shape[0]))  # no longer the identity it started as


def test_statistics_metric_needs_T_or_V(tmp_path):
    with pytest.raises(ValueError, match="metric=statistics needs a preset with T or V"):
        run(small(["metric=statistics", "model=maml"]), tmp_path)
    with pytest.raises(ValueError, match="metric=statistics resets T, which would move a bias inside T"):
        run(small(["metric=statistics", "model.bias_inside_T=true"]), tmp_path / "inside")


def test_bias_inside_T_key_builds_authors_layers(tmp_path):
    """model.bias_inside_T=true builds every layer as y = T(U·V·x + b) and trains; without T it fails in one line."""
    from metatuv.build import build
    from metatuv.meta import get_preset
    from metatuv.nn import TUVLayer

    cfg = small(["model.bias_inside_T=true", "outer.steps=3", "eval.tasks=4"])
    layers = [m for m in build(cfg, get_preset("tuv")).model.modules() if isinstance(m, TUVLayer)]
    assert len(layers) == 3 and all(m.bias_inside_T for m in layers)
    assert run(cfg, tmp_path)["test"] > 0
    (tmp_path / "maml").mkdir()
    with pytest.raises(ValueError, match="model.bias_inside_T=true needs a preset with T"):
        run(small(["model=maml", "model.bias_inside_T=true"]), tmp_path / "maml")


def test_zero_inner_steps_is_the_joint_training_baseline(tmp_path):
    """inner.steps >= 0 and inner.test_steps >= 0, as the library allows: with no inner step the query loss of the
    initialization is trained (the joint-training baseline); with no test-time step the test scores the
    un-adapted network, so an un-meta-trained run scores exactly its baseline."""
    before = build_learner(small(["model=tnet"]))[2].model.state_dict()
    results = run(small(["model=tnet", "inner.steps=0", "outer.steps=3", "eval.tasks=4"]), tmp_path)
    after = torch.load(tmp_path / "model.pt", weights_only=True)
    assert results["status"] == "ok" and results["test"] > 0
    assert not torch.equal(after["model.0.U"], before["0.U"])  # trained on the query loss of the initialization
    r0 = run(small(["model=tnet", "inner.test_steps=0", "outer.steps=0", "eval.tasks=4"]), tmp_path / "zero")
    assert r0["test"] == r0["baseline"]  # no meta-training, no test-time step: both score the initialization


def test_the_monitor_hook_can_be_wrapped(tmp_path):
    """run(wrap=...) receives the monitor's after-step hook and what it returns is called after every meta-step."""
    seen = []

    def wrap(hook):
        def log(step, losses):
            seen.append((step, len(losses())))
            hook(step, losses)

        return log

    run(small(["outer.steps=4", "eval.tasks=4", "monitor.every=2"]), tmp_path, wrap=wrap)
    assert seen == [(0, 1), (1, 2), (2, 3), (3, 4)]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [2, 4]  # the wrapped hook still logged
