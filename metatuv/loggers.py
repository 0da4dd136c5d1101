"""Run loggers: every run writes ``metrics.jsonl`` in its folder; ``wandb`` adds a wandb run (offline by default).

One JSON object per line: {"step": int, "time": seconds since start, <key>: value, ...}. Histograms (spectra)
go to the JSONL as lists and to wandb as ``wandb.Histogram``; pictures as PNG paths / ``wandb.Image``.
The wandb run lives on its own thread (``WandbWorker``): its start-up (~2 s), every ``log`` and most of ``finish``
overlap with meta-training instead of stalling it.
"""

from __future__ import annotations

import json
import math
import queue
import threading
import time
from collections.abc import Callable
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


class WandbWorker:
    """One daemon thread owns the wandb run: ``init()`` and then every submitted ``call(run)`` run there, in order.
    A failure in wandb is raised in the training thread at the next ``submit`` or at ``close`` (never swallowed)."""

    def __init__(self, init: Callable[[], Any], wait: bool = False) -> None:
        self.calls: queue.Queue[Callable[[Any], Any] | None] = queue.Queue()
        self.error: BaseException | None = None
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._work, args=(init,), name="metatuv-wandb", daemon=True)
        self.thread.start()
        if wait:  # online runs: a missing login fails here, at start, not some meta-steps later
            self.started.wait()
            self.raise_error()

    def _work(self, init: Callable[[], Any]) -> None:
        try:
            run = init()
        except BaseException as e:  # noqa: BLE001 — handed to the training thread
            self.error, run = e, None
        self.started.set()
        while (call := self.calls.get()) is not None:
            if run is not None and self.error is None:
                try:
                    call(run)
                except BaseException as e:  # noqa: BLE001
                    self.error = e

    def raise_error(self) -> None:
        if self.error is not None:
            e, self.error = self.error, None
            raise RuntimeError(
                f"wandb failed: {type(e).__name__}: {e} (logger.mode=offline needs no account; logger=none skips wandb)"
            ) from e

    def submit(self, call: Callable[[Any], Any]) -> None:
        self.raise_error()
        self.calls.put(call)

    def close(self, check: bool = True) -> None:
        """Wait for the queued calls (the last one is ``run.finish``); ``check``: raise a wandb failure."""
        self.calls.put(None)
        self.thread.join()
        if check:
            self.raise_error()


class RunLogger:
    """``log(metrics, step)``, ``histograms(arrays, step)``, ``images(paths, step)``, ``summary(values)``,
    ``finish(ok)``. Always writes ``<out_dir>/metrics.jsonl``; with ``wandb`` (a ``WandbWorker``) also logs there."""

    def __init__(self, out_dir: Path, wandb: WandbWorker | None = None) -> None:
        self.path = Path(out_dir) / "metrics.jsonl"
        self.file = open(self.path, "a")  # appended: a resumed run continues the same file
        self.wandb = wandb
        self.start = time.perf_counter()

    def _write(self, record: dict) -> None:
        self.file.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")
        self.file.flush()

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._write({"step": step, "time": round(time.perf_counter() - self.start, 3), **metrics})
        if self.wandb is not None:
            values = dict(metrics)  # the caller may reuse its dict; the worker logs it later
            self.wandb.submit(lambda run: run.log(values, step=step))

    def histograms(self, arrays: dict[str, Any], step: int) -> None:
        self._write({"step": step, **{f"hist/{k}": v for k, v in arrays.items()}})
        if self.wandb is not None:

            def call(run: Any) -> None:
                import wandb

                run.log({f"hist/{k}": wandb.Histogram(_jsonable(v)) for k, v in arrays.items()}, step=step)

            self.wandb.submit(call)

    def images(self, paths: dict[str, Path], step: int) -> None:
        self._write({"step": step, **{f"image/{k}": str(p) for k, p in paths.items()}})
        if self.wandb is not None:

            def call(run: Any) -> None:
                import wandb

                run.log({f"image/{k}": wandb.Image(str(p)) for k, p in paths.items()}, step=step)

            self.wandb.submit(call)

    def summary(self, values: dict[str, Any]) -> None:
        self._write({"summary": True, **values})
        if self.wandb is not None:
            summary = {k: _jsonable(v) for k, v in values.items()}
            self.wandb.submit(lambda run: run.summary.update(summary))

    def finish(self, ok: bool = True) -> None:
        """Close the JSONL and finish the wandb run (exit code 1 when the run failed; then a wandb error is not
        raised over the run's own)."""
        self.file.close()
        if self.wandb is not None:
            worker, self.wandb = self.wandb, None
            worker.calls.put(lambda run: run.finish(exit_code=0 if ok else 1))
            worker.close(check=ok)


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
    ``system_stats=False`` skips wandb's CPU/GPU sampling and git/metadata probes (init ~1 s faster, finish ~3 s).
    ``wandb.init`` runs on the logger's own thread; only ``mode="online"`` waits for it (a login error at start)."""
    if kind not in LOGGERS:
        raise ValueError(f"unknown logger {kind!r}; choose one of {list(LOGGERS)} (logger=...).")
    if kind == "none":
        return RunLogger(out_dir)
    if mode not in WANDB_MODES:
        raise ValueError(f"logger.mode={mode!r}; choose one of {list(WANDB_MODES)}.")

    def init() -> Any:
        import wandb

        return wandb.init(
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

    return RunLogger(out_dir, WandbWorker(init, wait=mode == "online"))
