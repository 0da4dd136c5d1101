"""What a checkpoint holds and how a run resumes from it.

``RunState`` gathers the run's state (learner, meta-optimizer, step, loss history, the inner-loop generator, the
task streams, the statistics tracker, the global RNGs, the resolved config) behind one ``state_dict`` /
``load_state_dict`` pair; ``resume`` loads a checkpoint and refuses one written by another run (``RESUME_IGNORES``
lists the keys that may change); ``stored_config`` upgrades the config a checkpoint stored to today's keys.
The config arrives as the resolved plain dict (``metatuv.build.run_config``); only ``stored_config`` hands one back
as an OmegaConf object, for ``build_learner``.
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from metatuv.checkpoint import (
    NonFiniteCheckpoint,
    damaged,
    first_nonfinite,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from metatuv.files import RunFileError
from metatuv.keys import MOVED
from metatuv.meta.presets import FIELDS, get_preset

CHECKPOINT = "checkpoint.pt"

# The resume identity is every config key except these: they do not change what meta-training computes, so they
# may change between a run and its resumption (README, "Checkpoints and resume"). Paths: where the same data live
# (a moved data root or cache); logging, monitoring and checkpoint cadence, progress bars; the meta-test settings
# (evaluated after training); outer.steps (train on for longer); inner.compile (the same meta-gradients).
RESUME_IGNORES = (
    "paths",
    "progress",
    "checkpoint",
    "eval",
    "logger",
    "monitor",
    "outer.steps",
    "inner.compile",
    "model.backtrack",  # test-time inner steps only (evaluation and validation)
)


# keys added after runs were written: their value when absent (the value that reproduces those runs); the preset's
# fields (model.use_T, …, model.bound when null) come from get_preset(model.name), see ``stored_config``
ADDED_KEYS = {
    "model.bias_inside_T": False,
    "model.max_step": 1.0,
    "model.backtrack": 0,  # runs before it: plain test-time steps (not the preset's value)
    "benchmark.split_dir": None,
}
PRESET_KEYS = tuple(f"model.{name}" for name in FIELDS)


def upgrade_config(saved: dict) -> dict:
    """The config dict a checkpoint (or results.json) stored, in today's keys: every key added since given the value
    that reproduces that run (a preset's fields from ``get_preset(model.name)``), every moved key (``logger.every``
    → ``monitor.every``, metatuv.keys.MOVED) at its new place."""
    cfg = copy.deepcopy(saved)

    def get(key: str, default: Any = "<absent>") -> Any:
        node = cfg
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def put(key: str, value: Any) -> None:
        *parents, last = key.split(".")
        node = cfg
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    for key, value in ADDED_KEYS.items():
        if get(key) == "<absent>":
            put(key, value)
    name = get("model.name", None)
    preset = get_preset(name) if isinstance(name, str) else None  # an unknown name fails where it is built
    for key in PRESET_KEYS:
        if preset is not None and get(key, None) is None:  # model.bound: null meant the preset's own
            put(key, getattr(preset, key.split(".", 1)[1]))
    for old, new in MOVED.items():
        value = get(old)
        if value != "<absent>":
            del get(old.rsplit(".", 1)[0])[old.rsplit(".", 1)[1]]
            if get(new) == "<absent>":
                put(new, value)
    return cfg


def stored_config(saved: dict) -> DictConfig:
    """The config a checkpoint stored, upgraded to today's keys (``upgrade_config``), for ``build_learner``."""
    return OmegaConf.create(upgrade_config(saved))


def check_same_run(saved: dict, config: dict, path: Path) -> None:
    """Refuse, in one line naming the first differing key, to resume ``path`` (written with config ``saved``) with
    ``config``, except in the keys of ``RESUME_IGNORES``."""

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            key = f"{prefix}{k}"
            if any(key == ig or key.startswith(ig + ".") for ig in RESUME_IGNORES):
                continue
            out.update(flat(v, key + ".") if isinstance(v, dict) else {key: v})
        return out

    old, new = flat(upgrade_config(saved)), flat(config)
    for d in (old, new):  # metric.every is read only when T and V are re-estimated (metric.mode=statistics)
        if d.get("metric.mode") != "statistics":
            d.pop("metric.every", None)
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) != new.get(key):
            raise ValueError(
                f"{path} was written by a run with {key}={old.get(key)!r}, this run has {key}={new.get(key)!r}; "
                "resume with the same config, or start a new folder (hydra.run.dir=...) or checkpoint.resume=false."
            )


def resume(path: Path, config: dict, device: str) -> tuple[dict, Path]:
    """The checkpoint at ``path`` (or its ``.prev`` copy, saying so) and the file used, checked to be this run's."""
    saved = load_checkpoint(path, device)  # falls back on checkpoint.prev.pt, saying so
    check_same_run(saved[0]["config"], config, saved[1])
    return saved


@dataclass
class RunState:
    """Everything a checkpoint holds; ``state_dict()`` is what ``checkpoint.pt`` stores (tensors and plain values:
    it loads with weights_only=True), ``load_state_dict`` puts a stored one back (the RNGs included)."""

    learner: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # the inner loop's (MT-net mask noise)
    streams: dict[str, Any]  # task streams with state_dict / load_state_dict
    tracker: Any  # metric=statistics*: the StatisticsTracker, else None
    config: dict  # the run's resolved config
    step: int = 0
    history: list[float] = field(default_factory=list)
    train_seconds: float = 0.0

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "history": self.history,
            "train_seconds": self.train_seconds,
            "learner": self.learner.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "inner_generator": self.generator.get_state(),
            "streams": {key: stream.state_dict() for key, stream in self.streams.items()},
            "statistics": self.tracker.state_dict() if self.tracker is not None else None,
            "rng": rng_state(),
            "config": self.config,
        }

    def load_state_dict(self, state: dict) -> None:
        self.step, self.history, self.train_seconds = state["step"], state["history"], state["train_seconds"]
        self.learner.load_state_dict(state["learner"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["inner_generator"].cpu())
        for key, stream in self.streams.items():
            stream.load_state_dict({"generator": state["streams"][key]["generator"].cpu()})
        if self.tracker is not None:
            self.tracker.load_state_dict(state["statistics"])
        set_rng_state(state["rng"])

    def save(self, path: Path, write: bool = True) -> None:
        """Check the state is finite, then (``write``: rank 0) write it to ``path`` atomically."""
        state = self.state_dict()
        bad = first_nonfinite({"learner": state["learner"], "optimizer": state["optimizer"]})
        if bad is not None:  # every rank stops (their states are equal)
            raise NonFiniteCheckpoint(
                f"{bad} is NaN/Inf after meta-step {self.step}; stopped without writing a checkpoint (the last good "
                f"{path.name} is kept). Set outer.clip (e.g. outer.clip=10) or lower outer.lr."
            )
        if write:
            try:
                save_checkpoint(path, state)
            except OSError as e:  # e.g. Errno 28: name the file (the previous checkpoint stays valid)
                why = f"{e.strerror or e} (Errno {e.errno})" if e.errno else str(e)
                raise RunFileError(f"cannot write {path}: {why}; free space on that disk, then rerun.") from e


def set_aside_damaged(path: Path, used: Path) -> None:
    """Resumed from ``.prev`` (``used``): move the damaged ``path`` aside, so the next save cannot rotate it over
    the good copy."""
    if used != path and path.exists():
        os.replace(path, damaged(path))
        print(f"moved the damaged {path.name} aside to {damaged(path)}", flush=True)


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
