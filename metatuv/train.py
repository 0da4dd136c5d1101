"""metatuv-train: meta-train a preset on a benchmark and report meta-test performance (Hydra entry point).

An orchestrator: metatuv.build makes the run from its config, metatuv.runstate checkpoints and resumes it,
metatuv.monitor records it while it trains; this module runs them in order and writes the results. Only the entry
points (this module, metatuv.evaluate), metatuv.build, metatuv.runstate (stored_config), metatuv.schema (the typed
schema) and metatuv.runlock (the Hydra callback) read Hydra/OmegaConf config objects; metatuv.report reads
results.json and .hydra/*.yaml as plain files.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from pathlib import Path

import hydra
import torch
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from metatuv.build import (  # noqa: F401 — REGRESSION, build, *_SEED_OFFSET: re-exported, this was their home
    REGRESSION,
    STATS_SEED_OFFSET,
    TEST_SEED_OFFSET,
    VAL_SEED_OFFSET,
    build,
    build_learner,
    run_config,
    statistics_hook,
    validate,
)
from metatuv.checkpoint import previous
from metatuv.files import RunFileError
from metatuv.keys import MOVED
from metatuv.loggers import NullLogger, RunLogger, make_logger, wandb_run_id
from metatuv.meta import MetaLearner, build_optimizer, evaluate, format_score, meta_train
from metatuv.meta.distributed import init_from_env
from metatuv.meta.learner import INNER_SEED_OFFSET
from metatuv.metric import mask_fractions
from metatuv.metric.summary import learned_metrics
from metatuv.monitor import StepHook, monitor, queue_figures
from metatuv.results import DIVERGED_EXIT, Diverged, diverged_message, finish, finite, score_text, summary_text  # noqa: F401
from metatuv.runlock import run_folder_lock
from metatuv.runstate import (
    CHECKPOINT,
    Interrupted,
    RunState,
    ctrl_c_finishes_the_step,
    resume,
    set_aside_damaged,
    stored_config,  # noqa: F401 — re-exported: this was its home
)
from metatuv.schema import MonitorConfig, register

register()  # the typed schema conf/config.yaml starts from

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # conf/ at the repository root


def open_logger(
    cfg: DictConfig, out_dir: Path, group: str | None = None, name: str | None = None, run_id: str | None = None
) -> RunLogger:
    lg = cfg.logger
    where = (lg.project, str(lg.mode), group, name, lg.entity, list(lg.tags), lg.system_stats, run_id)
    return make_logger(str(lg.name), out_dir, run_config(cfg), *where)


def run(
    cfg: DictConfig,
    out_dir: Path,
    group: str | None = None,
    name: str | None = None,
    overrides: list[str] | None = None,
    wrap: Callable[[StepHook], StepHook] | None = None,
) -> dict:
    """Meta-train (resuming from ``out_dir/checkpoint.pt`` if there is one), then evaluate the result and the
    un-meta-trained initialization on the same test tasks. ``group``/``name``: the wandb run group and name;
    ``overrides``: the command-line overrides, stored in results.json as the run's identity (metatuv-report);
    ``wrap``: wraps the monitor's after-step hook (metatuv.monitor)."""
    validate(cfg)  # before the logger, the data and any file: a bad value fails with one line
    rank, size = init_from_env(cfg.device)
    if size > 1:  # every rank reads and rank 0 writes one folder: rank 0's (its clock named it)
        shared = [str(out_dir)]
        dist.broadcast_object_list(shared, src=0)
        out_dir = Path(shared[0])
    with run_folder_lock(out_dir, enabled=rank == 0):  # one writer per run folder, for the run's life
        path = out_dir / CHECKPOINT
        resuming = cfg.checkpoint.resume and (path.exists() or previous(path).exists())
        # a refused resume must touch nothing, the wandb run of the finished run included
        saved = resume(path, run_config(cfg), cfg.device) if resuming else None
        run_id = wandb_run_id(out_dir, resuming) if rank == 0 and cfg.logger.name == "wandb" else None
        logger = open_logger(cfg, out_dir, group, name, run_id) if rank == 0 else NullLogger()
        try:
            results = _run(cfg, out_dir, logger, (rank, size), overrides, saved, wrap)
        except BaseException:
            logger.finish(ok=False)
            raise
        logger.finish(ok=True)
    return results


def _run(
    cfg: DictConfig,
    out_dir: Path,
    logger: RunLogger,
    shard: tuple[int, int] = (0, 1),
    overrides: list[str] | None = None,
    saved: tuple[dict, Path] | None = None,
    wrap: Callable[[StepHook], StepHook] | None = None,
) -> dict:
    """``saved``: the checkpoint to resume from and its path, already checked against ``cfg`` by ``run``."""
    rank, size = shard
    cadence = MonitorConfig(**OmegaConf.to_container(cfg.monitor, resolve=True))  # type: ignore[arg-type]
    setup, preset, learner = build_learner(cfg, with_val=cadence.eval_every > 0)
    i, steps = cfg.inner, cfg.outer.steps
    baseline = copy.deepcopy(learner)
    on_step, tracker = statistics_hook(cfg, setup, preset)
    optimizer = build_optimizer(hydra.utils.instantiate(cfg.outer.optimizer), learner.parameters(), cfg.outer.lr)
    generator = torch.Generator(device=cfg.device).manual_seed(cfg.seed + INNER_SEED_OFFSET)
    streams = {"train": setup.train, "observe": setup.observe}
    state = RunState(learner, optimizer, generator, streams, tracker, run_config(cfg))

    path = out_dir / CHECKPOINT
    if saved is not None:
        stored, used = saved
        if stored["step"] > steps:
            raise ValueError(f"{path} is at step {stored['step']} > outer.steps={steps}; raise outer.steps.")
        state.load_state_dict(stored)
        if rank == 0:
            set_aside_damaged(path, used)
        logger.rewind(state.step)  # metrics.jsonl continues from the checkpoint's step
        print(f"resuming from {used} at meta-step {state.step}/{steps}", flush=True)
    else:
        logger.rewind(None)  # a fresh start in a used folder: no rows of the earlier run
        if cadence.every > 0:
            logger.log(learned_metrics(setup.model, i.lr), 0)  # the starting metric (identity unless estimated)

    begin, train_s = time.perf_counter(), state.train_seconds
    log = monitor(cadence, setup, learner, logger, out_dir, steps, i.lr, i.test_steps, cfg.seed)
    log = wrap(log) if wrap is not None else log
    stop_requested: list[int] = []

    def after_step(step: int, losses: Callable[[], list[float]]) -> None:
        log(step, losses)
        done, every = step + 1, cfg.checkpoint.every
        if stop_requested or (every > 0 and done % every == 0) or done == steps:
            state.step, state.history, state.train_seconds = done, losses(), train_s + time.perf_counter() - begin
            state.save(path, write=rank == 0)
        if stop_requested:
            raise Interrupted(done, path)

    with ctrl_c_finishes_the_step(stop_requested, enabled=size == 1):
        history = meta_train(
            learner,
            setup.train,
            steps,
            cfg.outer.lr,
            cfg.outer.clip,
            cfg.progress,
            optimizer=optimizer,
            on_step=on_step,
            start=state.step,
            history=state.history,
            generator=generator,
            after_step=after_step,
            nonfinite=str(cfg.outer.nonfinite),
            shard=shard if size > 1 else None,
        )
    train_s += time.perf_counter() - begin
    if rank != 0:  # rank 0 evaluates and writes the results
        return {"rank": rank, "meta_steps": steps}
    if cadence.images_every >= 0:  # the final pictures render while the test runs
        queue_figures(logger, setup.model, out_dir, steps)

    def test(tested: MetaLearner) -> tuple[float, float]:
        seed = cfg.seed + TEST_SEED_OFFSET
        return evaluate(tested, setup.test(), cfg.eval.tasks, i.test_steps, setup.metric, cfg.progress, seed)

    results = {
        "status": "ok",
        "benchmark": cfg.benchmark.name,
        "preset": preset.name,
        "metric_mode": str(cfg.metric.mode),
        "metric": setup.metric_name,
        "meta_steps": steps,
        "train_seconds": round(train_s, 2),
        "final_train_loss": finite(sum(history[-100:]) / max(1, len(history[-100:]))),
    }
    tested = {"test": learner, "baseline": baseline} if cfg.eval.baseline else {"test": learner}
    extra = {"mask_fractions": mask_fractions(setup.model)} if preset.use_mask else {}
    extra["overrides"] = list(overrides) if overrides is not None else None  # the identity metatuv-report reads
    extra["config"] = run_config(cfg)
    return finish(out_dir, logger, results, tested, test, history, extra)


def summary(cfg: DictConfig, r: dict) -> str:
    b = cfg.benchmark
    return summary_text(r, b.name, b.get("ways"), b.shots, cfg.eval.tasks, cfg.inner.test_steps, cfg.model.backtrack)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    print(OmegaConf.to_yaml(cfg), flush=True)
    group = name = None
    if hc.mode == RunMode.MULTIRUN:  # runs of one sweep share a wandb group named after the sweep folder
        group, name = str(hc.sweep.dir), f"{hc.job.num}:{hc.job.override_dirname}"
    try:
        r = run(cfg, out_dir, group, name, [str(o) for o in hc.overrides.task])
    except Interrupted as e:
        print(e, flush=True)
        raise SystemExit(130) from None
    except (ValueError, FileNotFoundError, FloatingPointError, RunFileError) as e:
        if hc.mode == RunMode.MULTIRUN:
            raise  # the launcher records the failed job
        raise SystemExit(f"metatuv-train: error: {e}") from None  # one line, no traceback
    if "rank" in r:  # a distributed run's other ranks: rank 0 reports
        return float("nan")
    print("\n" + summary(cfg, r))
    if r["status"] == "diverged":
        message = diverged_message(r, out_dir / "results.json")
        if hc.mode == RunMode.MULTIRUN:
            raise Diverged(message)  # the launcher records the failed job; the sweep's other jobs still run
        print(message, file=sys.stderr, flush=True)
        raise SystemExit(DIVERGED_EXIT)
    score = format_score(r["metric"], r["test"], r["test_ci95"])
    print(
        f"done: {r['preset']} on {r['benchmark']}, {r['metric']} {score} over {cfg.eval.tasks} tasks, "
        f"{r['meta_steps']} meta-steps in {r['train_seconds']:.0f} s; outputs in {out_dir}"
    )
    return r["test"]


def main() -> None:
    """Console script ``metatuv-train``; needs the repository checkout (conf/ lives at its root)."""
    if not CONF_DIR.is_dir():
        raise SystemExit(
            f"metatuv-train: config folder {CONF_DIR} not found; install from a clone with "
            "`pip install -r requirements-dev.txt` (editable install) so conf/ sits beside the package."
        )
    for arg in sys.argv[1:]:  # a moved key (logger.every → monitor.every): one line naming its new place
        key = arg.lstrip("+~").split("=", 1)[0]
        if key in MOVED:
            raise SystemExit(f"metatuv-train: error: {key} is now {MOVED[key]}; use {MOVED[key]}=... instead.")
    try:
        _hydra_main()
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
