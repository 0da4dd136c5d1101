"""Run loggers: every run writes ``metrics.jsonl`` in its folder; ``wandb`` adds a wandb run (offline by default).

One JSON object per line: {"step": int, "time": seconds since start, <key>: value, ...}. Histograms (spectra)
go to the JSONL as lists and to wandb as ``wandb.Histogram``; pictures as PNG paths / ``wandb.Image``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

LOGGERS = ("wandb", "none")
WANDB_MODES = ("offline", "online", "disabled")


def _jsonable(v: Any) -> Any:
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no inf/nan
    return v


class RunLogger:
    """``log(metrics, step)``, ``histograms(arrays, step)``, ``images(paths, step)``, ``summary(values)``,
    ``finish(ok)``. Always writes ``<out_dir>/metrics.jsonl``; with ``wandb_run`` also logs there."""

    def __init__(self, out_dir: Path, wandb_run: Any = None) -> None:
        self.path = Path(out_dir) / "metrics.jsonl"
        self.file = open(self.path, "a")  # appended: a resumed run continues the same file
        self.wandb = wandb_run
        self.start = time.perf_counter()

    def _write(self, record: dict) -> None:
        self.file.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")
        self.file.flush()

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._write({"step": step, "time": round(time.perf_counter() - self.start, 3), **metrics})
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def histograms(self, arrays: dict[str, Any], step: int) -> None:
        self._write({"step": step, **{f"hist/{k}": v for k, v in arrays.items()}})
        if self.wandb is not None:
            import wandb

            self.wandb.log({f"hist/{k}": wandb.Histogram(_jsonable(v)) for k, v in arrays.items()}, step=step)

    def images(self, paths: dict[str, Path], step: int) -> None:
        self._write({"step": step, **{f"image/{k}": str(p) for k, p in paths.items()}})
        if self.wandb is not None:
            import wandb

            self.wandb.log({f"image/{k}": wandb.Image(str(p)) for k, p in paths.items()}, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        self._write({"summary": True, **values})
        if self.wandb is not None:
            self.wandb.summary.update({k: _jsonable(v) for k, v in values.items()})

    def finish(self, ok: bool = True) -> None:
        """Close the JSONL and finish the wandb run (exit code 1 when the run failed)."""
        self.file.close()
        if self.wandb is not None:
            self.wandb.finish(exit_code=0 if ok else 1)
            self.wandb = None


class NullLogger(RunLogger):
    """Logs nothing (ranks other than 0 in a distributed run)."""

    def __init__(self) -> None:
        self.wandb, self.start = None, time.perf_counter()

    def _write(self, record: dict) -> None:
        pass

    def finish(self, ok: bool = True) -> None:
        pass


def make_logger(
    kind: str,
    out_dir: Path,
    config: dict | None = None,
    project: str = "metatuv",
    mode: str = "offline",
    group: str | None = None,
    name: str | None = None,
    entity: str | None = None,
    tags: list[str] | None = None,
    system_stats: bool = False,
) -> RunLogger:
    """``kind="none"``: JSONL only. ``kind="wandb"``: also ``wandb.init`` with the resolved ``config``, its files
    under ``<out_dir>/wandb`` (``mode="offline"`` needs no account or network; upload later with ``wandb sync``).
    ``system_stats=False`` skips wandb's CPU/GPU sampling and git/metadata probes (init ~1 s faster, finish ~3 s)."""
    if kind not in LOGGERS:
        raise ValueError(f"unknown logger {kind!r}; choose one of {list(LOGGERS)} (logger=...).")
    run = None
    if kind == "wandb":
        if mode not in WANDB_MODES:
            raise ValueError(f"logger.mode={mode!r}; choose one of {list(WANDB_MODES)}.")
        import wandb

        run = wandb.init(
            project=project,
            entity=entity,
            mode=mode,
            dir=str(out_dir),
            config=config,
            group=group,
            name=name,
            tags=tags,
            reinit="finish_previous",
            settings=wandb.Settings(
                silent=True,
                console="off",
                x_disable_stats=not system_stats,
                x_disable_meta=not system_stats,
                disable_git=not system_stats,
                save_code=False,
            ),
        )
    return RunLogger(out_dir, run)
