"""metatuv-train: meta-train a preset on a benchmark and report meta-test performance (Hydra entry point).

Only this module (and the other entry points) read Hydra config objects; the library takes typed arguments.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import hydra
import torch
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from metatuv.checkpoint import (
    NonFiniteCheckpoint,
    damaged,
    first_nonfinite,
    load_checkpoint,
    previous,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from metatuv.data import IMAGE_BENCHMARKS, FewShot, Polynomial, Sinusoid, Stream, image_shape, load_splits
from metatuv.files import RunFileError, save_torch, write_json
from metatuv.inner import BACKENDS, VECTORIZE
from metatuv.inner.backends import Batch
from metatuv.loggers import LOGGERS, NullLogger, RunLogger, make_logger, wandb_run_id
from metatuv.meta import (
    MetaLearner,
    accuracy,
    build_optimizer,
    cross_entropy,
    evaluate,
    format_score,
    get_preset,
    meta_train,
    mse,
)
from metatuv.meta.distributed import init_from_env
from metatuv.meta.learner import INNER_SEED_OFFSET, NONFINITE
from metatuv.meta.presets import Preset
from metatuv.metric import MODES, StatisticsTracker, mask_fractions, reestimate
from metatuv.metric.plots import save_factor_figures
from metatuv.metric.summary import factor_spectra, learned_metrics
from metatuv.nn import BOUNDS, bound_factors, conv4, mlp
from metatuv.runlock import run_folder_lock
from metatuv.schema import register, unknown_keys

register()  # the typed schema conf/config.yaml starts from

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # conf/ at the repository root
TEST_SEED_OFFSET = 1_000_003  # meta-test tasks come from a stream disjoint from the training one
REGRESSION = ("sinusoid", "polynomial")
STATS_SEED_OFFSET = 2_000_003  # tasks observed for T/V statistics come from their own stream
VAL_SEED_OFFSET = 3_000_017  # validation tasks (logger.eval_every)
CHECKPOINT = "checkpoint.pt"
DIVERGED_EXIT = 3  # exit status of a run whose meta-test (or baseline) score is not finite


@dataclass
class Setup:
    model: torch.nn.Module
    loss: Callable
    metric: Callable
    metric_name: str
    train: Stream
    test: Callable[[], Iterator[Batch]]  # a fresh, identically seeded meta-test stream per call
    observe: Stream  # training tasks for T/V statistics (metric=statistics*)
    val: Callable[[], Iterator[Batch]] | None = None  # validation tasks (logger.eval_every > 0)


def build(
    cfg: DictConfig, preset: Preset, eval_split: str = "test", with_val: bool = False, load_data: bool = True
) -> Setup:
    """Benchmark, network and task streams from the config (``test`` draws from the ``eval_split`` classes;
    ``with_val``: also a validation stream, fresh tasks for regression, the val classes for images;
    ``load_data=False``: an image benchmark's network only, from the config, reading no data: the streams are None)."""
    b, dev, mb, seed = cfg.benchmark, cfg.device, cfg.outer.meta_batch, cfg.seed
    eb, test_seed = cfg.eval.batch, seed + TEST_SEED_OFFSET  # test tasks do not depend on the meta-batch size
    flags = (preset.use_T, preset.use_V, preset.use_mask)
    inside = {"bias_inside_T": cfg.model.bias_inside_T}
    if inside["bias_inside_T"] and not preset.use_T:
        raise ValueError(f"model.bias_inside_T=true needs a preset with T (tnet, mtnet, tuv, mtuv), not {preset.name}.")
    if b.name in REGRESSION:
        if b.name == "sinusoid":
            bench = Sinusoid(b.shots, b.queries, tuple(b.amplitude), tuple(b.phase), tuple(b.x_range))
        else:
            bench = Polynomial(b.order, b.shots, b.queries, tuple(b.x_range))
        model = bound_model(cfg, preset, mlp(list(b.arch.sizes), *flags, **inside))
        return Setup(
            model,
            mse,
            mse,
            "MSE",
            bench.batches(mb, seed, dev),
            lambda: bench.batches(eb, test_seed, dev),
            bench.batches(mb, seed + STATS_SEED_OFFSET, dev),
            (lambda: bench.batches(eb, seed + VAL_SEED_OFFSET, dev)) if with_val else None,
        )
    if b.name not in IMAGE_BENCHMARKS:
        raise ValueError(f"unknown benchmark {b.name!r}; choose one of {[*REGRESSION, *IMAGE_BENCHMARKS]}.")
    protocol = b.get("protocol") or "vinyals"
    if b.name == "omniglot" and protocol == "vinyals" and b.rotate != "none":
        raise ValueError(
            f"benchmark.rotate={b.rotate} with protocol=vinyals would alias classes (its split lists already hold "
            "every rotation as a class); use benchmark.rotate=none, or benchmark.protocol=maml."
        )
    if load_data:
        splits = load_splits(
            b.name, cfg.paths.data_root, protocol, b.image_size, cfg.paths.cache_dir, b.get("split_dir")
        )
        names = ("train", eval_split, "val") if with_val else ("train", eval_split)
        used = {k: splits[k] for k in names}  # only these are sampled (and checked against ways/shots)
        fs = FewShot(used, b.ways, b.shots, b.queries, b.rotate, dev)
        c, h, _ = fs.image_shape
    else:
        c, h, _ = image_shape(b.name, b.image_size)  # what load_splits yields (it refuses any other size)
    model = bound_model(cfg, preset, conv4(b.ways, c, b.arch.hidden, h, b.arch.pool, *flags, **inside))
    if not load_data:
        return Setup(model, cross_entropy, accuracy, "accuracy", None, None, None)  # type: ignore[arg-type]
    return Setup(
        model,
        cross_entropy,
        accuracy,
        "accuracy",
        fs.batches("train", mb, seed),
        lambda: fs.batches(eval_split, eb, test_seed),
        fs.batches("train", mb, seed + STATS_SEED_OFFSET),
        (lambda: fs.batches("val", eb, seed + VAL_SEED_OFFSET)) if with_val else None,
    )


def model_bound(cfg: DictConfig, preset: Preset) -> str:
    """The run's factor bound: ``model.bound`` when set, else the preset's own (none | tanh | spectral | spectrum)."""
    bound = cfg.model.get("bound") or preset.bound
    if bound not in BOUNDS:
        raise ValueError(f"model.bound={bound!r} is not one of {list(BOUNDS)}.")
    if bound != "none" and not (preset.use_T or preset.use_V):
        raise ValueError(f"model.bound={bound} needs a preset with T or V (tnet, mtnet, tuv, mtuv), not {preset.name}.")
    return bound


def bound_model(cfg: DictConfig, preset: Preset, model: torch.nn.Module) -> torch.nn.Module:
    """The model with its T, V bounded (metatuv.nn.bounded): λmax(VᵀV ⊗ TTᵀ) < model.max_step / inner.lr."""
    bound = model_bound(cfg, preset)
    return bound_factors(model, bound, cfg.model.max_step / cfg.inner.lr) if bound != "none" else model


def statistics_hook(
    cfg: DictConfig, setup: Setup, preset: Preset
) -> tuple[Callable[[int], None] | None, StatisticsTracker | None]:
    """metric=statistics*: estimate T, V (re-solving U) before step 0, and every ``every`` steps for ``statistics``."""
    m = cfg.metric
    if m.mode not in MODES:
        raise ValueError(f"unknown metric mode {m.mode!r}; choose one of {list(MODES)} (metric=...).")
    if m.mode == "learned":
        return None, None
    if model_bound(cfg, preset) != "none":
        raise ValueError(f"metric={m.mode} sets T and V directly; a bounded model (model.bound) needs metric=learned.")
    if cfg.model.get("bias_inside_T"):
        raise ValueError(
            f"metric={m.mode} resets T, which would move a bias inside T (y = T(UVx + b)); "
            "use model.bias_inside_T=false with statistics."
        )
    if not (preset.use_T or preset.use_V):
        raise ValueError(f"metric={m.mode} needs a preset with T or V (tnet, mtnet, tuv, mtuv), not {preset.name}.")
    if m.mode == "statistics":
        if m.every < 1:
            raise ValueError(f"metric.every={m.every} must be >= 1 for metric=statistics.")
        for name, p in setup.model.named_parameters():  # estimated, not meta-learned
            if name.endswith(".T") or name.endswith(".V"):
                p.requires_grad_(False)
    tracker = StatisticsTracker(setup.model, m.decay)

    def hook(step: int) -> None:
        if step == 0 or (m.mode == "statistics" and step % m.every == 0):
            data = []
            for _ in range(m.batches):
                xs, ys, xq, yq = next(setup.observe)
                data += [(torch.cat([xs[t], xq[t]]), torch.cat([ys[t], yq[t]])) for t in range(len(xs))]
            reestimate(setup.model, setup.loss, data, m.damping, tracker, m.normalize)

    return hook, tracker


def device_problem(device: str) -> str | None:
    """Why ``device`` cannot run here (one line with the fix), or None: cpu, cuda[:N] when present, mps when present."""
    try:
        d = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        return f"device={device!r} is not a torch device; use device=cpu or device=cuda (cuda:N for one GPU)"
    if d.type == "cpu":
        return None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            return f"device={device} but CUDA is not available here; use device=cpu"
        if d.index is not None and d.index >= torch.cuda.device_count():
            return f"device={device} but this machine has {torch.cuda.device_count()} CUDA device(s); use device=cuda"
        return None
    if d.type == "mps":
        available = torch.backends.mps.is_available()
        return None if available else f"device={device} but MPS is not available here; use device=cpu"
    return f"device={device} is not supported; use device=cpu or device=cuda"


def validate(cfg: DictConfig) -> None:
    """Fail at start, with one line naming the key, the value and the fix, on values no run can use."""
    unknown = unknown_keys(OmegaConf.to_container(cfg, resolve=False))
    if unknown:
        key, close = unknown[0]
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise ValueError(
            f"{key} is not a config key (added with +{key}=...?); {hint}the keys are the fields of "
            "metatuv/schema.py: drop it or fix its name."
        )
    i, o, b, e, lg = cfg.inner, cfg.outer, cfg.benchmark, cfg.eval, cfg.logger

    def choice(key: str, value, options) -> tuple[bool, str]:
        return value in options, f"{key}={value!r} is not one of {list(options)}"

    rules = [
        (i.lr > 0, f"inner.lr={i.lr} must be > 0 (e.g. inner.lr=0.01)"),
        (i.steps >= 1, f"inner.steps={i.steps} must be >= 1"),
        (i.test_steps >= 0, f"inner.test_steps={i.test_steps} must be >= 0"),
        choice("inner.backend", i.backend, BACKENDS),
        choice("inner.vectorize", i.vectorize, VECTORIZE),
        (i.chunk_size is None or i.chunk_size >= 1, f"inner.chunk_size={i.chunk_size} must be null or >= 1"),
        (not i.compile or i.backend == "func", f"inner.compile=true needs inner.backend=func, got {i.backend!r}"),
        (o.lr > 0, f"outer.lr={o.lr} must be > 0 (e.g. outer.lr=0.001)"),
        (o.meta_batch >= 1, f"outer.meta_batch={o.meta_batch} must be >= 1"),
        (o.steps >= 0, f"outer.steps={o.steps} must be >= 0"),
        (o.clip is None or o.clip > 0, f"outer.clip={o.clip} must be null or > 0"),
        choice("outer.nonfinite", o.nonfinite, NONFINITE),
        (b.shots >= 1, f"benchmark.shots={b.shots} must be >= 1"),
        (b.queries >= 1, f"benchmark.queries={b.queries} must be >= 1"),
        (b.ways is None or b.ways >= 2, f"benchmark.ways={b.ways} must be >= 2"),
        (e.tasks >= 2, f"eval.tasks={e.tasks} must be >= 2 (a 95% CI needs two tasks; the papers use 600)"),
        (e.batch >= 1, f"eval.batch={e.batch} must be >= 1"),
        (lg.every >= 0, f"logger.every={lg.every} must be >= 0 (meta-steps between logs; 0: only at the end)"),
        (lg.eval_every >= 0, f"logger.eval_every={lg.eval_every} must be >= 0 (0: no validation)"),
        (
            lg.eval_every == 0 or lg.eval_tasks >= 2,
            f"logger.eval_tasks={lg.eval_tasks} must be >= 2 (a 95% CI needs two tasks), or logger.eval_every=0",
        ),
        (lg.images_every >= -1, f"logger.images_every={lg.images_every} must be >= -1 (0: at the end, -1: never)"),
        (cfg.metric.batches >= 1, f"metric.batches={cfg.metric.batches} must be >= 1"),
        choice("metric.mode", cfg.metric.mode, MODES),
        choice("logger.name", cfg.logger.name, LOGGERS),
        (cfg.checkpoint.every >= 0, f"checkpoint.every={cfg.checkpoint.every} must be >= 0 (0: only at the end)"),
        (device_problem(str(cfg.device)) is None, device_problem(str(cfg.device))),
    ]
    preset = get_preset(cfg.model.name)  # unknown preset: its own one-line error
    bound = model_bound(cfg, preset)
    if bound != "none" and not cfg.model.max_step > i.lr:
        raise ValueError(
            f"model.max_step={cfg.model.max_step} must be > inner.lr={i.lr} (T = V = I at the start is a step of "
            f"inner.lr); raise model.max_step or lower inner.lr."
        )
    for ok, message in rules:
        if not ok:
            raise ValueError(message + ".")


def build_learner(
    cfg: DictConfig, eval_split: str = "test", with_val: bool = False, load_data: bool = True
) -> tuple[Setup, Preset, MetaLearner]:
    """The task streams, the network and its MetaLearner (fresh initialization from ``cfg.seed``;
    ``load_data=False``: no image data read, no image task streams, see ``build``)."""
    torch.manual_seed(cfg.seed)
    preset = get_preset(cfg.model.name)
    setup = build(cfg, preset, eval_split, with_val, load_data)
    i = cfg.inner
    learner = MetaLearner.from_preset(
        setup.model.to(cfg.device),
        preset,
        setup.loss,
        i.lr,
        i.steps,
        first_order=i.first_order,
        mask_temperature=i.mask_temperature,
        backend=i.backend,
        vectorize=i.vectorize,
        chunk_size=i.chunk_size,
        compile=i.compile,
    ).to(cfg.device)
    if i.compile:  # a fresh compile cache per run: jobs of one multirun process never reach dynamo's recompile limit
        torch._dynamo.reset()
    return setup, preset, learner


# The resume identity is every config key except these: they do not change what meta-training computes, so they
# may change between a run and its resumption (README, "Checkpoints and resume"). Paths: where the same data live
# (a moved data root or cache); logging and checkpoint cadence, progress bars; the meta-test settings (evaluated
# after training); outer.steps (train on for longer); inner.compile (the same meta-gradients).
RESUME_IGNORES = (
    "paths",
    "progress",
    "checkpoint",
    "eval",
    "logger",
    "outer.steps",
    "inner.compile",
)


# keys added after runs were written: their value when absent (the value that reproduces those runs)
ADDED_KEYS = {"model.bias_inside_T": False, "model.bound": None, "model.max_step": 1.0, "benchmark.split_dir": None}


def stored_config(saved: dict) -> DictConfig:
    """The config a checkpoint stored, with every key added since given the value that reproduces that run."""
    cfg = OmegaConf.create(saved)
    for key, value in ADDED_KEYS.items():
        if OmegaConf.select(cfg, key, default="<absent>") == "<absent>":
            OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def _run_config(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def _check_same_run(saved: dict, cfg: DictConfig, path: Path) -> None:
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            key = f"{prefix}{k}"
            if any(key == ig or key.startswith(ig + ".") for ig in RESUME_IGNORES):
                continue
            out.update(flat(v, key + ".") if isinstance(v, dict) else {key: v})
        return out

    old, new = flat(_run_config(stored_config(saved))), flat(_run_config(cfg))
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) != new.get(key):
            raise ValueError(
                f"{path} was written by a run with {key}={old.get(key)!r}, this run has {key}={new.get(key)!r}; "
                "resume with the same config, or start a new folder (hydra.run.dir=...) or checkpoint.resume=false."
            )


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during meta-training: the current meta-step finished and a checkpoint was written."""

    def __init__(self, step: int, path: Path) -> None:
        super().__init__(
            f"interrupted after meta-step {step}; checkpoint written to {path}; rerun the same command "
            "(same hydra.run.dir) to resume."
        )
        self.step, self.path = step, path


@contextlib.contextmanager
def ctrl_c_finishes_the_step(flag: list[int], enabled: bool = True):
    """First Ctrl-C (SIGINT) only appends to ``flag`` (the loop checkpoints and stops after the current step);
    a second one interrupts at once. Only in the main thread (signal handlers cannot be set elsewhere) and not in
    distributed runs (a per-rank flag would let the ranks' collectives diverge; there Ctrl-C stops at once and the
    run resumes from the last periodic checkpoint)."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame) -> None:
        if flag:
            raise KeyboardInterrupt
        flag.append(signum)
        print("\nCtrl-C: finishing this meta-step and writing a checkpoint (Ctrl-C again to abort)", flush=True)

    old = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def open_logger(
    cfg: DictConfig, out_dir: Path, group: str | None = None, name: str | None = None, run_id: str | None = None
) -> RunLogger:
    lg = cfg.logger
    config = _run_config(cfg)
    return make_logger(
        lg.name, out_dir, config, lg.project, lg.mode, group, name, lg.entity, list(lg.tags), lg.system_stats, run_id
    )


def queue_figures(logger: RunLogger, model: torch.nn.Module, out_dir: Path, step: int) -> None:
    """T, V heatmaps and spectra PNGs, rendered on the logger's thread from a copy of ``model`` (training goes on)."""
    logger.figures(partial(save_factor_figures, copy.deepcopy(model), out_dir / "figures", step), step)


def monitor(
    cfg: DictConfig, setup: Setup, learner: MetaLearner, logger: RunLogger, out_dir: Path
) -> Callable[[int, Callable[[], list[float]]], None]:
    """After-step hook: every ``logger.every`` steps the train loss and learned metrics (spectra, condition
    numbers, masks), every ``logger.eval_every`` a validation score, every ``logger.images_every`` PNGs."""
    lg = cfg.logger

    def due(done: int, every: int) -> bool:
        return every > 0 and done % every == 0

    def log(step: int, losses: Callable[[], list[float]]) -> None:
        done = step + 1
        if due(done, lg.every) or done == cfg.outer.steps:
            recent = losses()[-lg.every :]
            spectra = factor_spectra(setup.model)
            metrics = {"train/loss": sum(recent) / len(recent), **learned_metrics(setup.model, cfg.inner.lr, spectra)}
            if due(done, lg.eval_every) and setup.val is not None:
                mean, ci = evaluate(
                    learner, setup.val(), lg.eval_tasks, cfg.inner.test_steps, setup.metric, False, cfg.seed
                )
                metrics |= {f"val/{setup.metric_name}": mean, f"val/{setup.metric_name}_ci95": ci}
            logger.log(metrics, done)
            logger.histograms({f"{n or 'layer'}/{k}": v for n, d in spectra.items() for k, v in d.items()}, done)
        if due(done, lg.images_every) and done != cfg.outer.steps:
            queue_figures(logger, setup.model, out_dir, done)

    return log


def run(
    cfg: DictConfig,
    out_dir: Path,
    group: str | None = None,
    name: str | None = None,
    overrides: list[str] | None = None,
) -> dict:
    """Meta-train (resuming from ``out_dir/checkpoint.pt`` if there is one), then evaluate the result and the
    un-meta-trained initialization on the same test tasks. ``group``/``name``: the wandb run group and name;
    ``overrides``: the command-line overrides, stored in results.json as the run's identity (metatuv-report)."""
    validate(cfg)  # before the logger, the data and any file: a bad value fails with one line
    rank, size = init_from_env(cfg.device)
    if size > 1:  # every rank reads and rank 0 writes one folder: rank 0's (its clock named it)
        shared = [str(out_dir)]
        dist.broadcast_object_list(shared, src=0)
        out_dir = Path(shared[0])
    with run_folder_lock(out_dir, enabled=rank == 0):  # one writer per run folder, for the run's life
        path = out_dir / CHECKPOINT
        resuming = cfg.checkpoint.resume and (path.exists() or previous(path).exists())
        saved = None
        if resuming:  # a refused resume must touch nothing, the wandb run of the finished run included
            saved = load_checkpoint(path, cfg.device)  # falls back on checkpoint.prev.pt, saying so
            _check_same_run(saved[0]["config"], cfg, saved[1])
        run_id = wandb_run_id(out_dir, resuming) if rank == 0 and cfg.logger.name == "wandb" else None
        logger = open_logger(cfg, out_dir, group, name, run_id) if rank == 0 else NullLogger()
        try:
            results = _run(cfg, out_dir, logger, (rank, size), overrides, saved)
        except BaseException:
            logger.finish(ok=False)
            raise
        logger.finish(ok=True)
    return results


def _finite(x: float | None) -> float | None:
    """``x`` if it is a finite number, else None (strict JSON has no NaN)."""
    return x if x is not None and math.isfinite(x) else None


def _run(
    cfg: DictConfig,
    out_dir: Path,
    logger: RunLogger,
    shard: tuple[int, int] = (0, 1),
    overrides: list[str] | None = None,
    saved: tuple[dict, Path] | None = None,
) -> dict:
    """``saved``: the checkpoint to resume from and its path, already checked against ``cfg`` by ``run``."""
    rank, size = shard
    setup, preset, learner = build_learner(cfg, with_val=cfg.logger.eval_every > 0)
    i = cfg.inner
    baseline = copy.deepcopy(learner)
    on_step, tracker = statistics_hook(cfg, setup, preset)
    optimizer = build_optimizer(hydra.utils.instantiate(cfg.outer.optimizer), learner.parameters(), cfg.outer.lr)
    generator = torch.Generator(device=cfg.device).manual_seed(cfg.seed + INNER_SEED_OFFSET)
    streams = {"train": setup.train, "observe": setup.observe}

    path, start, history, train_s = out_dir / CHECKPOINT, 0, [], 0.0
    if saved is not None:
        state, used = saved
        start, history, train_s = state["step"], state["history"], state["train_seconds"]
        if start > cfg.outer.steps:
            raise ValueError(f"{path} is at step {start} > outer.steps={cfg.outer.steps}; raise outer.steps.")
        learner.load_state_dict(state["learner"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["inner_generator"].cpu())
        for key, stream in streams.items():
            stream.load_state_dict({"generator": state["streams"][key]["generator"].cpu()})
        if tracker is not None:
            tracker.load_state_dict(state["statistics"])
        set_rng_state(state["rng"])
        if used != path and path.exists() and rank == 0:  # the next save must not rotate it over the good copy
            os.replace(path, damaged(path))
            print(f"moved the damaged {path.name} aside to {damaged(path)}", flush=True)
        logger.rewind(start)  # metrics.jsonl continues from the checkpoint's step
        print(f"resuming from {used} at meta-step {start}/{cfg.outer.steps}", flush=True)
    else:
        logger.rewind(None)  # a fresh start in a used folder: no rows of the earlier run
        if cfg.logger.every > 0:
            logger.log(learned_metrics(setup.model, i.lr), 0)  # the starting metric (identity unless estimated)

    begin = time.perf_counter()

    def checkpoint(step: int, losses: Callable[[], list[float]], force: bool = False) -> None:
        done = step + 1
        periodic = cfg.checkpoint.every > 0 and done % cfg.checkpoint.every == 0
        if not (force or periodic or done == cfg.outer.steps):
            return
        state = {
            "step": done,
            "history": losses(),
            "train_seconds": train_s + time.perf_counter() - begin,
            "learner": learner.state_dict(),
            "optimizer": optimizer.state_dict(),
            "inner_generator": generator.get_state(),
            "streams": {key: stream.state_dict() for key, stream in streams.items()},
            "statistics": tracker.state_dict() if tracker is not None else None,
            "rng": rng_state(),  # tensors and plain values: the checkpoint loads with weights_only=True
            "config": _run_config(cfg),
        }
        bad = first_nonfinite({"learner": state["learner"], "optimizer": state["optimizer"]})
        if bad is not None:  # every rank stops (their states are equal)
            raise NonFiniteCheckpoint(
                f"{bad} is NaN/Inf after meta-step {done}; stopped without writing a checkpoint (the last good "
                f"{path.name} is kept). Set outer.clip (e.g. outer.clip=10) or lower outer.lr."
            )
        if rank == 0:
            try:
                save_checkpoint(path, state)
            except OSError as e:  # e.g. Errno 28: name the file (the previous checkpoint stays valid)
                why = f"{e.strerror or e} (Errno {e.errno})" if e.errno else str(e)
                raise RunFileError(f"cannot write {path}: {why}; free space on that disk, then rerun.") from e

    log = monitor(cfg, setup, learner, logger, out_dir)

    stop_requested: list[int] = []

    def after_step(step: int, losses: Callable[[], list[float]]) -> None:
        log(step, losses)
        checkpoint(step, losses, force=bool(stop_requested))
        if stop_requested:
            raise Interrupted(step + 1, path)

    with ctrl_c_finishes_the_step(stop_requested, enabled=size == 1):
        history = meta_train(
            learner,
            setup.train,
            cfg.outer.steps,
            cfg.outer.lr,
            cfg.outer.clip,
            cfg.progress,
            optimizer=optimizer,
            on_step=on_step,
            start=start,
            history=history,
            generator=generator,
            after_step=after_step,
            nonfinite=cfg.outer.nonfinite,
            shard=shard if size > 1 else None,
        )
    train_s += time.perf_counter() - begin
    if rank != 0:  # rank 0 evaluates and writes the results
        return {"rank": rank, "meta_steps": cfg.outer.steps}
    if cfg.logger.images_every >= 0:  # the final pictures render while the test runs
        queue_figures(logger, setup.model, out_dir, cfg.outer.steps)

    def test(tested: MetaLearner) -> tuple[float, float]:
        seed = cfg.seed + TEST_SEED_OFFSET
        return evaluate(tested, setup.test(), cfg.eval.tasks, i.test_steps, setup.metric, cfg.progress, seed)

    results = {
        "status": "ok",
        "benchmark": cfg.benchmark.name,
        "preset": preset.name,
        "metric_mode": cfg.metric.mode,
        "metric": setup.metric_name,
        "meta_steps": cfg.outer.steps,
        "train_seconds": round(train_s, 2),
        "final_train_loss": _finite(sum(history[-100:]) / max(1, len(history[-100:]))),
    }
    scored = ["test", "baseline"] if cfg.eval.baseline else ["test"]
    for key, tested in zip(scored, (learner, baseline), strict=False):
        mean, ci = test(tested)  # a non-finite score is recorded as null and the run as diverged
        results[key], results[f"{key}_ci95"] = _finite(mean), _finite(ci) if _finite(mean) is not None else None
    diverged = [key for key in scored if results[key] is None]
    if diverged:
        results["status"], results["diverged"] = "diverged", diverged
    if preset.use_mask:
        results["mask_fractions"] = mask_fractions(setup.model)
    results["overrides"] = list(overrides) if overrides is not None else None  # the identity metatuv-report reads
    results["config"] = _run_config(cfg)
    save_torch(out_dir / "model.pt", learner.state_dict())
    curve = {"step": list(range(len(history))), "loss": [_finite(v) for v in history]}  # a skipped NaN: null
    write_json(out_dir / "history.json", curve, None)
    write_json(out_dir / "results.json", results)  # last: its presence means the run's files are complete
    m = setup.metric_name
    final = {f"{k}/{m}{s}": results[f"{k}{s}"] for k in scored for s in ("", "_ci95") if results[f"{k}{s}"] is not None}
    logger.log(final, cfg.outer.steps)
    logger.summary({**final, "train_seconds": results["train_seconds"], "status": results["status"]})
    return results


def score_text(metric: str, mean: float | None, ci95: float | None) -> str:
    """``format_score``, or DIVERGED for a score recorded as null (non-finite)."""
    return "DIVERGED (not finite)" if mean is None else format_score(metric, mean, ci95)


def summary(cfg: DictConfig, r: dict) -> str:
    b, n, steps = cfg.benchmark, cfg.eval.tasks, cfg.inner.test_steps
    task = f"{b.ways}-way {b.shots}-shot" if b.get("ways") is not None else f"{b.shots}-shot"
    lines = [f"meta-test {r['metric']} over {n} tasks ({b.name} {task}, {steps} inner steps, 95% CI):"]
    trained = f"{r['preset']}, meta-trained {r['meta_steps']} steps"
    lines.append(f"  {trained:<36} {score_text(r['metric'], r['test'], r['test_ci95'])}")
    if "baseline" in r:
        lines.append(
            f"  {'same net, un-meta-trained (baseline)':<36} "
            f"{score_text(r['metric'], r['baseline'], r['baseline_ci95'])}"
        )
    return "\n".join(lines)


WHO = {"test": "the meta-trained model", "baseline": "the baseline (un-meta-trained)"}


class Diverged(RuntimeError):
    """A multirun job whose meta-test or baseline score is not finite (its results.json says status: diverged)."""


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
        message = (
            f"metatuv-train: DIVERGED: the meta-test {r['metric']} of {' and of '.join(WHO[k] for k in r['diverged'])} "
            "is not finite "
            f"(recorded as null, status diverged, in {out_dir / 'results.json'}); lower inner.lr or outer.lr, or "
            "use outer.clip."
        )
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
    try:
        _hydra_main()
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
