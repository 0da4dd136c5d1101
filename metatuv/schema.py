"""Typed schema of the run config (conf/config.yaml), stored in Hydra's ConfigStore as ``schema``.

conf/config.yaml lists ``schema`` first in its defaults, so every file and command-line override merged on top is
checked against these dataclasses when the config is composed: a misspelled key or a wrong type fails at once,
before any data is loaded. Group-specific keys (a benchmark's ``amplitude``, ``protocol``, …) are optional fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hydra.core.config_store import ConfigStore

from metatuv.data.fewshot import ROTATIONS
from metatuv.data.omniglot import PROTOCOLS
from metatuv.inner import BACKENDS, VECTORIZE
from metatuv.loggers import LOGGERS, WANDB_MODES
from metatuv.meta.learner import NONFINITE
from metatuv.meta.rule import LR_MODES
from metatuv.metric import MODES
from metatuv.nn import BOUNDS
from metatuv.nn.models import POOLS


def choices(name: str, values: tuple[str, ...]) -> type[StrEnum]:
    """A closed choice of the config as an Enum made from the library's own tuple (one list): a value outside it
    fails when the config is composed, with Hydra's message naming the value and the choices."""
    return StrEnum(name, [(v, v) for v in values])  # type: ignore[return-value]


Backend = choices("Backend", BACKENDS)
Vectorize = choices("Vectorize", VECTORIZE)
NonFinite = choices("NonFinite", NONFINITE)
Bound = choices("Bound", BOUNDS)
LrMode = choices("LrMode", LR_MODES)
MetricMode = choices("MetricMode", MODES)
LoggerName = choices("LoggerName", LOGGERS)
WandbMode = choices("WandbMode", WANDB_MODES)
Rotate = choices("Rotate", ROTATIONS)
Protocol = choices("Protocol", PROTOCOLS)
Pool = choices("Pool", POOLS)


@dataclass
class ArchConfig:
    sizes: list[int] | None = None  # mlp layer widths (regression benchmarks)
    hidden: int | None = None  # conv4 filters (image benchmarks)
    pool: Pool | None = None  # conv4 downsampling: stride | max


@dataclass
class BenchmarkConfig:
    name: str = "sinusoid"
    shots: int = 10
    queries: int = 10
    ways: int | None = None  # image benchmarks
    protocol: Protocol | None = None  # omniglot: vinyals | maml | background
    split_dir: str | None = None  # omniglot: a folder of train/val/test.txt split lists (splits/vinyals/ format)
    image_size: int | None = None
    rotate: Rotate | None = None  # none | train | all
    amplitude: list[float] | None = None  # sinusoid
    phase: list[float] | None = None
    x_range: list[float] | None = None  # sinusoid, polynomial
    order: int | None = None  # polynomial
    arch: ArchConfig = field(default_factory=ArchConfig)


@dataclass
class InnerConfig:
    lr: float = 0.01
    steps: int = 1
    test_steps: int = 10
    first_order: bool = False
    backend: Backend = Backend.func
    vectorize: Vectorize = Vectorize.auto
    chunk_size: int | None = None
    compile: bool = False
    mask_temperature: float = 1.0


@dataclass
class OuterConfig:
    lr: float = 1e-3
    meta_batch: int = 4
    steps: int = 4000
    clip: float | None = 10.0
    nonfinite: NonFinite = NonFinite.stop  # NaN/Inf meta-loss: stop (keep the last checkpoint) | skip the meta-batch
    # the meta-optimizer, instantiated by the entry point as optimizer(params, lr=lr)
    optimizer: Any = field(default_factory=lambda: {"_target_": "torch.optim.Adam", "_partial_": True})


@dataclass
class ModelConfig:
    """The preset's fields (conf/model/<name>.yaml, metatuv.meta.presets.Preset): ``model=tnet model.lr_mode=metasgd``
    is a T-net with learned rates. ``name`` is the preset these fields start from."""

    name: str = "tuv"
    use_T: bool = True
    use_V: bool = True
    use_mask: bool = False
    lr_mode: LrMode = LrMode.fixed
    curvature: bool = False
    head_only: bool = False
    first_order: bool = False  # forces first order when true (fomaml)
    kfo: bool = False
    # bounded learned metric (issue 20, metatuv/nn/bounded.py): none | tanh | spectral | spectrum; needs T or V
    bound: Bound = Bound.none
    # the bound on every layer's largest effective step α·λmax(VᵀV ⊗ TTᵀ) (λmax(P) < max_step / inner.lr)
    max_step: float = 1.0
    # test-time inner steps (evaluation, validation): each step's length halved up to this many times until the
    # support loss does not rise, so adaptation cannot diverge (metatuv/inner/backtrack.py); 0 = plain steps
    backtrack: int = 0
    bias_inside_T: bool = False  # true: y = T(U·V·x + b) as in Lee & Choi's code; false: y = T·U·V·x + b (README)


@dataclass
class MetricConfig:
    mode: MetricMode = MetricMode.learned
    damping: float = 0.1
    normalize: bool = True
    decay: float = 0.95
    every: int = 500
    batches: int = 2


@dataclass
class PathsConfig:
    data_root: str = "data"
    cache_dir: str | None = None


@dataclass
class EvalConfig:
    tasks: int = 600
    batch: int = 25
    baseline: bool = True


@dataclass
class CheckpointConfig:
    every: int = 1000  # meta-steps between checkpoints (and one at the end); 0 = only at the end
    resume: bool = True  # a run started in a folder holding checkpoint.pt continues from it


@dataclass
class LoggerConfig:
    name: LoggerName = LoggerName.wandb  # wandb | none (metrics.jsonl is always written)
    project: str = "metatuv"
    entity: str | None = None
    mode: WandbMode = WandbMode.offline
    tags: list[str] = field(default_factory=list)
    system_stats: bool = False


@dataclass
class MonitorConfig:
    """Cadence of what the run records while it trains (metatuv/monitor.py)."""

    every: int = 100  # meta-steps between learned-metric logs
    eval_every: int = 1000  # meta-steps between validation evaluations (0 = none)
    eval_tasks: int = 100  # tasks per validation evaluation
    images_every: int = 0  # PNGs every N meta-steps; 0 = at the end only; -1 = never (logger=none sets -1)


@dataclass
class RunConfig:
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    inner: InnerConfig = field(default_factory=InnerConfig)
    outer: OuterConfig = field(default_factory=OuterConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    metric: MetricConfig = field(default_factory=MetricConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    seed: int = 0
    device: str = "cpu"
    progress: bool = True


def register() -> None:
    """Store the schema as ``schema`` (conf/config.yaml's first default)."""
    ConfigStore.instance().store(name="schema", node=RunConfig)


def unknown_keys(cfg: Any, schema: type = RunConfig, prefix: str = "") -> list[tuple[str, list[str]]]:
    """Keys of the composed config ``cfg`` (any mapping) that the schema does not define, each with the schema's
    keys at that level closest to it. Hydra lets ``+key=value`` add a key even to a typed config, so the entry
    points check the result against the dataclasses here. Fields typed ``Any`` (``outer.optimizer``) hold free
    content and are not looked into."""
    import difflib
    from dataclasses import MISSING, fields, is_dataclass

    known = {f.name: f for f in fields(schema)}
    out: list[tuple[str, list[str]]] = []
    for key in cfg.keys():
        f = known.get(key)
        if f is None:
            close = difflib.get_close_matches(str(key), list(known), n=2, cutoff=0.6)
            out.append((f"{prefix}{key}", [f"{prefix}{c}" for c in close]))
            continue
        default = f.default_factory() if f.default_factory is not MISSING else None
        value = cfg[key]
        if is_dataclass(default) and hasattr(value, "keys"):
            out += unknown_keys(value, type(default), f"{prefix}{key}.")
    return out
