"""Every config file composes; the Lee & Choi experiments carry the paper's settings and run (3 meta-steps with
debug=default); sweeps, launchers and the Optuna sweeper work through the metatuv-train console script."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from metatuv.meta import PRESETS
from metatuv.train import run

CONF = Path(__file__).resolve().parents[1] / "conf"
EXE = Path(sys.executable).with_name("metatuv-train")
FILES = sorted(p.relative_to(CONF) for p in CONF.rglob("*.yaml") if p.parent != CONF)  # every group option
MAIN_PRESETS = ("maml", "tnet", "mtnet", "tuv", "mtuv")  # the paper's models and the seed's TUV (+ mask)
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))

# The setups (Lee & Choi 2018, hyperparameters of the authors' scripts): benchmark, ways, shots, queries, order,
# inner lr, inner steps at train / test, meta-batch, meta-steps.
PAPER = {
    "sinusoid_5shot": ("sinusoid", None, 5, 10, None, 0.01, 1, 10, 4, 60000),
    "sinusoid_10shot": ("sinusoid", None, 10, 10, None, 0.01, 1, 10, 4, 60000),
    "sinusoid_20shot": ("sinusoid", None, 20, 10, None, 0.01, 1, 10, 4, 60000),
    "polynomial_order0": ("polynomial", None, 10, 10, 0, 0.001, 1, 10, 4, 60000),
    "polynomial_order1": ("polynomial", None, 10, 10, 1, 0.001, 1, 10, 4, 60000),
    "polynomial_order2": ("polynomial", None, 10, 10, 2, 0.001, 1, 10, 4, 60000),
    "omniglot_5w1s": ("omniglot", 5, 1, 1, None, 0.4, 1, 10, 32, 40000),
    "omniglot_5w5s": ("omniglot", 5, 5, 5, None, 0.4, 1, 10, 32, 40000),
    "omniglot_20w1s": ("omniglot", 20, 1, 1, None, 0.1, 1, 10, 16, 40000),
    "omniglot_20w5s": ("omniglot", 20, 5, 5, None, 0.1, 1, 10, 16, 40000),
    "miniimagenet_5w1s": ("mini-imagenet", 5, 1, 15, None, 0.01, 5, 10, 4, 60000),
    "miniimagenet_5w5s": ("mini-imagenet", 5, 5, 15, None, 0.01, 5, 10, 2, 60000),
}


def cfg_of(overrides=(), hydra=False):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", list(overrides), return_hydra_config=hydra)


def test_every_experiment_is_pinned():
    assert EXPERIMENTS == sorted(PAPER) and set(MAIN_PRESETS) <= set(PRESETS)


@pytest.mark.parametrize("path", FILES, ids=str)
def test_every_config_file_composes(path):
    group, option = str(path.parent), path.stem
    text = (CONF / path).read_text()
    if group.startswith("hydra/"):
        cfg = cfg_of([f"{group}={option}"], hydra=True)
        node = cfg.hydra[group.split("/", 1)[1]]
        assert node._target_.startswith("hydra_plugins.")
    elif group == "sweep":
        cfg = cfg_of([f"sweep={option}"], hydra=True)
        assert cfg.hydra.sweeper.params and cfg.hydra.sweeper._target_.endswith("Sweeper")
    else:
        cfg = cfg_of([f"{group}={option}"])
        if not text.startswith("# @package _global_"):  # a plain group option fills its own node
            assert group in cfg
    if group in ("experiment", "debug", "sweep"):
        assert text.startswith("# @package _global_\n")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_sets_the_paper_setup_and_leaves_the_preset(name):
    bench, ways, shots, queries, order, lr, steps, test_steps, meta_batch, meta_steps = PAPER[name]
    with initialize_config_dir(str(CONF), version_base="1.3"):
        for preset in MAIN_PRESETS:
            cfg = compose("config", [f"experiment={name}", f"model={preset}"])
            assert cfg.model.name == preset
        default = compose("config", [f"experiment={name}"])
        debug = compose("config", [f"experiment={name}", "debug=default", "model=maml"])
    assert default.model.name == "tuv"  # config.yaml's preset: the experiment does not choose one
    b, i, o = default.benchmark, default.inner, default.outer
    assert (b.name, b.get("ways"), b.shots, b.queries, b.get("order")) == (bench, ways, shots, queries, order)
    assert (i.lr, i.steps, i.test_steps, o.meta_batch, o.steps, o.lr) == (
        lr,
        steps,
        test_steps,
        meta_batch,
        meta_steps,
        1e-3,
    )
    assert default.eval.tasks == 600
    if bench == "omniglot":
        assert (b.protocol, b.rotate, b.arch.hidden, b.arch.pool) == ("maml", "all", 64, "stride")
    if bench == "mini-imagenet":
        assert (b.arch.hidden, b.arch.pool, b.image_size) == (32, "max", 84)
    # debug keeps the setup (network, ways/shots, inner loop) and cuts the cost
    assert (debug.outer.steps, debug.eval.tasks, debug.eval.baseline, debug.progress) == (3, 4, False, False)
    assert debug.logger.name == "none" and debug.benchmark == default.benchmark and debug.inner == default.inner
    text = (CONF / "experiment" / f"{name}.yaml").read_text()
    assert f"metatuv-train experiment={name}" in text and "FROM MEMORY" in text  # run command; source of numbers


def test_command_line_beats_experiment_and_debug():
    cfg = cfg_of(["experiment=omniglot_5w1s", "debug=default", "inner.lr=0.1", "outer.steps=7", "logger=wandb"])
    assert (cfg.inner.lr, cfg.outer.steps, cfg.logger.name) == (0.1, 7, "wandb")


def _run_experiment(name, tmp_path, extra=()):
    cfg = cfg_of([f"experiment={name}", "debug=default", "model=mtnet", *extra])
    results = run(cfg, tmp_path)
    assert results["meta_steps"] == 3 and math.isfinite(results["test"]) and "baseline" not in results
    assert json.loads((tmp_path / "results.json").read_text())["test"] == results["test"]
    assert len(json.loads((tmp_path / "history.json").read_text())["loss"]) == 3
    return results


@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if PAPER[n][0] in ("sinusoid", "polynomial")])
def test_regression_experiment_runs(tmp_path, name):
    results = _run_experiment(name, tmp_path)
    assert results["metric"] == "MSE" and results["benchmark"] == PAPER[name][0]
    assert results["mask_fractions"]  # MT-net: the subspace the paper's polynomial study reads


OMNIGLOT = [
    pytest.param(n, marks=[pytest.mark.data, *([pytest.mark.slow] if PAPER[n][1] == 20 else [])])
    for n in EXPERIMENTS
    if PAPER[n][0] == "omniglot"
]


@pytest.mark.parametrize("name", OMNIGLOT)
def test_omniglot_experiment_runs(tmp_path, name, data_root, cache_dir):
    results = _run_experiment(name, tmp_path, [f"paths.data_root={data_root}", f"paths.cache_dir={cache_dir}"])
    assert results["metric"] == "accuracy" and 0 <= results["test"] <= 1


@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if PAPER[n][0] == "mini-imagenet"])
def test_miniimagenet_experiment_needs_the_images(tmp_path, name):
    """Only the split CSVs exist here (no ImageNet images): the run fails at once with the missing-data error."""
    root = tmp_path / "data"
    (root / "mini-imagenet").mkdir(parents=True)
    splits = Path(__file__).resolve().parents[2] / "shared" / "data" / "mini-imagenet-splits"
    for split in ("train", "val", "test"):
        if (splits / f"{split}.csv").is_file():
            shutil.copy(splits / f"{split}.csv", root / "mini-imagenet")
        else:
            (root / "mini-imagenet" / f"{split}.csv").write_text("filename,label\nn0000000100000001.jpg,n00000001\n")
    cfg = cfg_of([f"experiment={name}", "debug=default", f"paths.data_root={root}", f"paths.cache_dir={tmp_path}"])
    (tmp_path / "out").mkdir()
    with pytest.raises(FileNotFoundError, match="mini-ImageNet not found under .*expected train.csv, val.csv"):
        run(cfg, tmp_path / "out")
    assert not (tmp_path / "out" / "results.json").exists()


def test_inner_lr_sweep_is_the_papers_grid():
    params = cfg_of(["sweep=inner_lr"], hydra=True).hydra.sweeper.params
    overrides = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    grid = {o.key_or_group: list(o.sweep_string_iterator()) for o in overrides}
    assert grid == {
        "model": ["maml", "tnet", "mtnet", "tuv"],
        "inner.lr": ["0.01", "0.04", "0.1"],
        "seed": ["0", "1", "2"],
    }
    seeds = OverridesParser.create().parse_overrides(
        [f"{k}={v}" for k, v in cfg_of(["sweep=seeds"], hydra=True).hydra.sweeper.params.items()]
    )
    assert [list(o.sweep_string_iterator()) for o in seeds] == [["0", "1", "2", "3", "4"]]


def test_optuna_sweep_config():
    s = cfg_of(["sweep=optuna_inner_lr", "hydra.sweeper.direction=maximize"], hydra=True).hydra.sweeper
    assert s._target_.endswith("OptunaSweeper") and s.direction == "maximize"
    assert set(s.params) == {"inner.lr", "outer.lr"} and all(v.startswith("tag(log") for v in s.params.values())


def test_launcher_configs(monkeypatch):
    monkeypatch.delenv("METATUV_JOBS", raising=False)
    parallel = cfg_of(["hydra/launcher=parallel"], hydra=True).hydra.launcher
    assert parallel._target_.endswith("JoblibLauncher") and parallel.n_jobs == 2
    slurm = cfg_of(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], hydra=True).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher") and slurm.partition == "gpu" and slurm.gpus_per_node == 1


def test_parallel_launcher_reads_its_job_count_from_the_environment(monkeypatch):
    monkeypatch.setenv("METATUV_JOBS", "5")
    assert cfg_of(["hydra/launcher=parallel"], hydra=True).hydra.launcher.n_jobs == 5


def multirun(tmp_path, *overrides):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "METATUV_JOBS": "2"}
    cmd = [str(EXE), "-m", *overrides, "debug=default", f"hydra.sweep.dir={tmp_path}"]
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out, sorted(tmp_path.rglob("results.json"))


@pytest.mark.parametrize("launcher", ["basic", "parallel"])
def test_multirun_2x2(tmp_path, launcher):
    out, results = multirun(tmp_path, f"hydra/launcher={launcher}", "model=maml,tuv", "inner.lr=0.01,0.04")
    assert len(results) == 4
    seen = set()
    for r in results:
        config = yaml.safe_load((r.parent / ".hydra" / "config.yaml").read_text())
        seen.add((json.loads(r.read_text())["preset"], config["inner"]["lr"]))
    assert seen == {("maml", 0.01), ("maml", 0.04), ("tuv", 0.01), ("tuv", 0.04)}
    if launcher == "parallel":
        assert "Joblib.Parallel(n_jobs=2" in out.stdout + out.stderr


def test_optuna_sweep_runs(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    _, results = multirun(
        tmp_path / "sweep",
        "sweep=optuna_inner_lr",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweeper.storage={storage}",
    )
    assert len(results) == 2 and (tmp_path / "optuna.db").is_file()
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"inner.lr", "outer.lr"}
    assert best["best_value"] == min(json.loads(r.read_text())["test"] for r in results)  # minimize: MSE


def test_optuna_with_a_storage_continues_the_study(tmp_path):
    """Two reruns of a 2-trial search on one sqlite study: 6 trials in job folders 0..5 (folder N = trial N), six
    distinct points, every folder's results.json from the point its trial proposed."""
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = ("sweep=optuna_inner_lr", "hydra.sweeper.n_trials=2", f"hydra.sweeper.storage={storage}")
    outs = [multirun(tmp_path / "sweep", *args)[0] for _ in range(3)]
    assert "Continuing study inner_lr: 2 trials stored" in outs[1].stdout + outs[1].stderr
    assert "Continuing study inner_lr: 4 trials stored" in outs[2].stdout + outs[2].stderr
    trials = optuna.load_study(study_name="inner_lr", storage=storage).trials
    assert [t.number for t in trials] == list(range(6))
    points = {(t.params["inner.lr"], t.params["outer.lr"]) for t in trials}
    assert len(points) == 6  # no point proposed twice
    folders = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir() and not p.name.startswith("."))
    assert folders == [str(n) for n in range(6)]
    for t in trials:
        r = json.loads((tmp_path / "sweep" / str(t.number) / "results.json").read_text())
        ov = dict(o.split("=", 1) for o in r["overrides"])
        assert (float(ov["inner.lr"]), float(ov["outer.lr"])) == (t.params["inner.lr"], t.params["outer.lr"])
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert r["status"] == "ok" and r["test"] == t.value
        else:  # a diverged point (α near 1) is a failed trial; max_failure_rate=1 lets the search go on
            assert t.state == optuna.trial.TrialState.FAIL and r["status"] == "diverged" and r["test"] is None


@pytest.mark.parametrize("path", FILES, ids=str)
def test_every_config_file_defines_only_schema_keys(path):
    from omegaconf import OmegaConf

    from metatuv.schema import unknown_keys

    group, name = path.parent.as_posix(), path.stem
    if group.startswith("hydra"):
        pytest.skip("launcher configs live under hydra.*, outside the run config")
    cfg = cfg_of([f"{group}={name}"])
    assert unknown_keys(OmegaConf.to_container(cfg, resolve=False)) == []
