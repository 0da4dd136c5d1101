"""What a run is made of, from its config: validate, build (benchmark, network, task streams), build_learner.

Shared by the entry points (metatuv-train, metatuv-eval) and the experiment scripts; with them, the only modules
reading the Hydra config. Everything they hand on takes typed arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf

from metatuv.data import IMAGE_BENCHMARKS, FewShot, Polynomial, Sinusoid, Stream, image_shape, load_splits
from metatuv.inner.backends import Batch
from metatuv.keys import MOVED
from metatuv.meta import MetaLearner, accuracy, cross_entropy, get_preset, mse
from metatuv.meta.presets import FIELDS, Preset
from metatuv.metric import StatisticsTracker, reestimate
from metatuv.nn import bound_factors, conv4, mlp
from metatuv.schema import register, unknown_keys

register()  # the typed schema conf/config.yaml starts from (composing the config needs it)
TEST_SEED_OFFSET = 1_000_003  # meta-test tasks come from a stream disjoint from the training one
REGRESSION = ("sinusoid", "polynomial")
STATS_SEED_OFFSET = 2_000_003  # tasks observed for T/V statistics come from their own stream
VAL_SEED_OFFSET = 3_000_017  # validation tasks (monitor.eval_every)
PRESET_FIELDS = FIELDS  # conf/model/<name>.yaml holds them


@dataclass
class Setup:
    model: torch.nn.Module
    loss: Callable
    metric: Callable
    metric_name: str
    train: Stream
    test: Callable[[], Iterator[Batch]]  # a fresh, identically seeded meta-test stream per call
    observe: Stream  # training tasks for T/V statistics (metric=statistics*)
    val: Callable[[], Iterator[Batch]] | None = None  # validation tasks (monitor.eval_every > 0)


def run_config(cfg: DictConfig) -> dict:
    """The resolved config as plain data (choices as strings): what checkpoints, results.json and wandb store."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # type: ignore[return-value]


def preset_of(model: DictConfig) -> Preset:
    """The Preset of the config's ``model`` node: its fields as written there (conf/model/<name>.yaml). Named after
    ``model.name`` (a preset), plus the fields where they differ from it, e.g. ``tnet[lr_mode=metasgd]``."""
    base = get_preset(model.name)  # unknown preset: its own one-line error
    fields = {k: model[k] if isinstance(model[k], (bool, int)) else str(model[k]) for k in PRESET_FIELDS}
    changed = [f"{k}={str(v).lower()}" for k, v in fields.items() if v != getattr(base, k)]
    preset = Preset(f"{base.name}[{', '.join(changed)}]" if changed else base.name, **fields)
    if preset.kfo and preset.curvature:
        raise ValueError(
            f"model.kfo=true and model.curvature=true are two gradient transforms (MetaKFO, Meta-Curvature); "
            f"set one of them false (preset {model.name})."
        )
    if preset.bound != "none" and not (preset.use_T or preset.use_V):
        raise ValueError(
            f"model.bound={preset.bound} needs a preset with T or V (tnet, mtnet, tuv, mtuv), not {model.name}."
        )
    return preset


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
    bounded = partial_bound(preset, cfg.model.max_step / cfg.inner.lr)
    if b.name in REGRESSION:
        if b.name == "sinusoid":
            bench = Sinusoid(b.shots, b.queries, tuple(b.amplitude), tuple(b.phase), tuple(b.x_range))
        elif b.name == "polynomial":
            bench = Polynomial(b.order, b.shots, b.queries, tuple(b.x_range))
        else:  # a name added to REGRESSION without its own branch here
            raise ValueError(f"benchmark {b.name!r} is in REGRESSION but build() has no branch constructing it.")
        model = bounded(mlp(list(b.arch.sizes), *flags, **inside))
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
    protocol = str(b.get("protocol") or "vinyals")
    rotate = str(b.rotate) if b.rotate is not None else None
    if b.name == "omniglot" and protocol == "vinyals" and rotate != "none":
        raise ValueError(
            f"benchmark.rotate={rotate} with protocol=vinyals would alias classes (its split lists already hold "
            "every rotation as a class); use benchmark.rotate=none, or benchmark.protocol=maml."
        )
    if load_data:
        splits = load_splits(
            b.name, cfg.paths.data_root, protocol, b.image_size, cfg.paths.cache_dir, b.get("split_dir")
        )
        names = ("train", eval_split, "val") if with_val else ("train", eval_split)
        used = {k: splits[k] for k in names}  # only these are sampled (and checked against ways/shots)
        fs = FewShot(used, b.ways, b.shots, b.queries, rotate, dev)
        c, h, _ = fs.image_shape
    else:
        c, h, _ = image_shape(b.name, b.image_size)  # what load_splits yields (it refuses any other size)
    model = bounded(conv4(b.ways, c, b.arch.hidden, h, str(b.arch.pool), *flags, **inside))
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


def partial_bound(preset: Preset, max_eigenvalue: float) -> Callable[[torch.nn.Module], torch.nn.Module]:
    """Model -> the model with its T, V bounded (metatuv.nn.bounded): λmax(VᵀV ⊗ TTᵀ) < ``max_eigenvalue``
    (model.max_step / inner.lr), or the model itself for ``preset.bound == "none"``."""
    return lambda model: bound_factors(model, preset.bound, max_eigenvalue) if preset.bound != "none" else model


def statistics_hook(
    cfg: DictConfig, setup: Setup, preset: Preset
) -> tuple[Callable[[int], None] | None, StatisticsTracker | None]:
    """metric=statistics*: estimate T, V (re-solving U) before step 0, and every ``every`` steps for ``statistics``."""
    m = cfg.metric
    mode = str(m.mode)
    if mode == "learned":
        return None, None
    if preset.bound != "none":
        raise ValueError(f"metric={mode} sets T and V directly; a bounded model (model.bound) needs metric=learned.")
    if cfg.model.get("bias_inside_T"):
        raise ValueError(
            f"metric={mode} resets T, which would move a bias inside T (y = T(UVx + b)); "
            "use model.bias_inside_T=false with statistics."
        )
    if not (preset.use_T or preset.use_V):
        raise ValueError(f"metric={mode} needs a preset with T or V (tnet, mtnet, tuv, mtuv), not {preset.name}.")
    if mode == "statistics":
        if m.every < 1:
            raise ValueError(f"metric.every={m.every} must be >= 1 for metric=statistics.")
        for name, p in setup.model.named_parameters():  # estimated, not meta-learned
            if name.endswith(".T") or name.endswith(".V"):
                p.requires_grad_(False)
    tracker = StatisticsTracker(setup.model, m.decay)
    every, batches, damping, normalize = m.every, m.batches, m.damping, m.normalize

    def hook(step: int) -> None:
        if step == 0 or (mode == "statistics" and step % every == 0):
            data = []
            for _ in range(batches):
                xs, ys, xq, yq = next(setup.observe)
                data += [(torch.cat([xs[t], xq[t]]), torch.cat([ys[t], yq[t]])) for t in range(len(xs))]
            reestimate(setup.model, setup.loss, data, damping, tracker, normalize)

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


def _model_choice() -> str | None:
    """The config group option chosen for ``model`` (``model=tnet``) in a Hydra app; None outside one."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.choices.get("model") if HydraConfig.initialized() else None


def validate(cfg: DictConfig) -> None:
    """Fail at start, with one line naming the key, the value and the fix, on values no run can use. Closed choices
    (inner.backend, metric.mode, …) are Enums of metatuv/schema.py: a bad one already failed at composition."""
    unknown = unknown_keys(OmegaConf.to_container(cfg, resolve=False))
    if unknown:
        key, close = unknown[0]
        if key in MOVED:
            raise ValueError(f"{key} is now {MOVED[key]}; use {MOVED[key]}=... instead.")
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise ValueError(
            f"{key} is not a config key (added with +{key}=...?); {hint}the keys are the fields of "
            "metatuv/schema.py: drop it or fix its name."
        )
    i, o, b, e, mo = cfg.inner, cfg.outer, cfg.benchmark, cfg.eval, cfg.monitor
    rules = [
        (i.lr > 0, f"inner.lr={i.lr} must be > 0 (e.g. inner.lr=0.01)"),
        (i.steps >= 0, f"inner.steps={i.steps} must be >= 0 (0: no inner step, the joint-training baseline)"),
        (i.test_steps >= 0, f"inner.test_steps={i.test_steps} must be >= 0"),
        (i.chunk_size is None or i.chunk_size >= 1, f"inner.chunk_size={i.chunk_size} must be null or >= 1"),
        (not i.compile or i.backend == "func", f"inner.compile=true needs inner.backend=func, got {str(i.backend)!r}"),
        (o.lr > 0, f"outer.lr={o.lr} must be > 0 (e.g. outer.lr=0.001)"),
        (o.meta_batch >= 1, f"outer.meta_batch={o.meta_batch} must be >= 1"),
        (o.steps >= 0, f"outer.steps={o.steps} must be >= 0"),
        (o.clip is None or o.clip > 0, f"outer.clip={o.clip} must be null or > 0"),
        (b.shots >= 1, f"benchmark.shots={b.shots} must be >= 1"),
        (b.queries >= 1, f"benchmark.queries={b.queries} must be >= 1"),
        (b.ways is None or b.ways >= 2, f"benchmark.ways={b.ways} must be >= 2"),
        (e.tasks >= 2, f"eval.tasks={e.tasks} must be >= 2 (a 95% CI needs two tasks; the papers use 600)"),
        (e.batch >= 1, f"eval.batch={e.batch} must be >= 1"),
        (mo.every >= 0, f"monitor.every={mo.every} must be >= 0 (meta-steps between logs; 0: only at the end)"),
        (mo.eval_every >= 0, f"monitor.eval_every={mo.eval_every} must be >= 0 (0: no validation)"),
        (
            mo.eval_every == 0 or mo.eval_tasks >= 2,
            f"monitor.eval_tasks={mo.eval_tasks} must be >= 2 (a 95% CI needs two tasks), or monitor.eval_every=0",
        ),
        (mo.images_every >= -1, f"monitor.images_every={mo.images_every} must be >= -1 (0: at the end, -1: never)"),
        (cfg.metric.batches >= 1, f"metric.batches={cfg.metric.batches} must be >= 1"),
        (cfg.checkpoint.every >= 0, f"checkpoint.every={cfg.checkpoint.every} must be >= 0 (0: only at the end)"),
        (device_problem(str(cfg.device)) is None, device_problem(str(cfg.device))),
        (cfg.model.backtrack >= 0, f"model.backtrack={cfg.model.backtrack} must be >= 0 (0: plain test-time steps)"),
        (
            _model_choice() in (None, cfg.model.name),
            f"model.name={cfg.model.name} does not select a preset (the fields stay {_model_choice()}'s); "
            f"use model={cfg.model.name}",
        ),
    ]
    preset = preset_of(cfg.model)  # unknown preset, or fields that do not fit: their own one-line error
    if preset.bound != "none" and not cfg.model.max_step > i.lr:
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
    preset = preset_of(cfg.model)
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
        backend=str(i.backend),
        vectorize=str(i.vectorize),
        chunk_size=i.chunk_size,
        compile=i.compile,
    ).to(cfg.device)
    if i.compile:  # a fresh compile cache per run: jobs of one multirun process never reach dynamo's recompile limit
        torch._dynamo.reset()
    return setup, preset, learner
