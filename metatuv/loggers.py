"""Run loggers: every run writes ``metrics.jsonl`` in its folder; ``wandb`` adds a wandb run (offline by default).

One JSON object per line: {"step": int, "time": seconds since start, <key>: value, ...}. Histograms (spectra)
go to the JSONL as lists and to wandb as ``wandb.Histogram``; pictures as PNG paths / ``wandb.Image``.
The wandb run and the picture rendering live on the logger's own thread (``Worker``): wandb's start-up,
every ``log``, the PNGs and most of ``finish`` overlap with meta-training and testing instead of stalling them
(measured: experiments/logging/README.md).
"""

from __future__ import annotations

import json
import math
import os
import queue
import secrets
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


class Worker:
    """One daemon thread that runs ``init()`` (returning the wandb run, or None) and then every submitted
    ``call(run)``, in order. A failure there is raised in the training thread at the next ``submit`` or at
    ``close`` (never swallowed); after a failure the remaining calls are skipped."""

    def __init__(self, init: Callable[[], Any], wait: bool = False) -> None:
        self.calls: queue.Queue[Callable[[Any], Any] | None] = queue.Queue()
        self.error: BaseException | None = None
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._work, args=(init,), name="metatuv-logger", daemon=True)
        self.thread.start()
        if wait:  # online runs: a missing login fails here, at start, not some meta-steps later
            self.started.wait()
            self.raise_error()

    def _work(self, init: Callable[[], Any]) -> None:
        run = None
        try:
            run = init()
        except BaseException as e:  # noqa: BLE001 — handed to the training thread
            self.error = e
        self.started.set()
        while (call := self.calls.get()) is not None:
            if self.error is None:
                try:
                    call(run)
                except BaseException as e:  # noqa: BLE001
                    self.error = e

    def raise_error(self) -> None:
        if self.error is not None:
            e, self.error = self.error, None
            raise RuntimeError(
                f"logger failed: {type(e).__name__}: {e} (wandb: logger.mode=offline needs no account; "
                "logger=none skips wandb)"
            ) from e

    def submit(self, call: Callable[[Any], Any]) -> None:
        self.raise_error()
        self.calls.put(call)

    def close(self, check: bool = True) -> None:
        """Wait for the queued calls; ``check``: raise a failure that happened there."""
        self.calls.put(None)
        self.thread.join()
        if check:
            self.raise_error()


class RunLogger:
    """``log(metrics, step)``, ``histograms(arrays, step)``, ``figures(render, step)``, ``summary(values)``,
    ``finish(ok)``. Always writes ``<out_dir>/metrics.jsonl``; with ``init`` (returning a wandb run) also logs there.
    wandb calls and figure rendering run on the logger's own thread (``Worker``), off the meta-training loop."""

    def __init__(self, out_dir: Path | None, init: Callable[[], Any] | None = None, wait: bool = False) -> None:
        """``out_dir=None``: log nothing (no file, no thread; ``NullLogger``)."""
        if out_dir is None and init is not None:
            raise ValueError("RunLogger: a wandb run needs an out_dir (its files and metrics.jsonl go there).")
        self.path = None if out_dir is None else Path(out_dir) / "metrics.jsonl"
        self.file = None if self.path is None else open(self.path, "a")  # appended: a resumed run continues it
        self.lock = threading.Lock()  # the worker writes image records too
        self.use_wandb = init is not None
        self.worker: Worker | None = None if out_dir is None else Worker(init or (lambda: None), wait)
        self.start = time.perf_counter()

    def _write(self, record: dict) -> None:
        if self.file is None:  # NullLogger
            return
        line = json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n"
        with self.lock:
            self.file.write(line)
            self.file.flush()

    def _wandb(self, call: Callable[[Any], Any]) -> None:
        if self.use_wandb and self.worker is not None:
            self.worker.submit(call)

    def rewind(self, step: int | None) -> None:
        """A resumed run continues the log: keep the rows up to meta-step ``step`` (the checkpoint's; a row logged
        at a step counts the steps done), drop later ones and old summaries; ``None`` (a fresh start): drop all."""
        if self.worker is None:
            return
        with self.lock:
            self.file.close()
            kept = []
            for line in self.path.read_text().splitlines(keepends=True) if step is not None else []:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a row cut off by a kill
                    continue
                if isinstance(row, dict) and not row.get("summary") and isinstance(row.get("step"), int):
                    if row["step"] <= step and set(row) - {"step", "time"}:
                        kept.append(line if line.endswith("\n") else line + "\n")
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(kept))
            os.replace(tmp, self.path)
            self.file = open(self.path, "a")

    def log(self, metrics: dict[str, float], step: int) -> None:
        if not metrics:  # no row holding only a step (e.g. MAML has no learned metrics)
            return
        self._write({"step": step, "time": round(time.perf_counter() - self.start, 3), **metrics})
        values = dict(metrics)  # the caller may reuse its dict; the worker logs it later
        self._wandb(lambda run: run.log(values, step=step))

    def histograms(self, arrays: dict[str, Any], step: int) -> None:
        if not arrays:
            return
        self._write({"step": step, **{f"hist/{k}": v for k, v in arrays.items()}})

        def call(run: Any) -> None:
            import wandb

            run.log({f"hist/{k}": wandb.Histogram(_jsonable(v)) for k, v in arrays.items()}, step=step)

        self._wandb(call)

    def figures(self, render: Callable[[], dict[str, Path]], step: int) -> None:
        """Run ``render()`` (writes PNGs, returns {name: path}) on the logger's thread, then log the pictures
        (JSONL paths, ``wandb.Image``). ``render`` must not read tensors that training keeps changing: pass it a copy.
        """

        def call(run: Any) -> None:
            paths = render()
            if not paths:  # nothing to picture (no T or V): no row holding only a step
                return
            self._write({"step": step, **{f"image/{k}": str(p) for k, p in paths.items()}})
            if run is not None:
                import wandb

                run.log({f"image/{k}": wandb.Image(str(p)) for k, p in paths.items()}, step=step)

        if self.worker is not None:
            self.worker.submit(call)

    def summary(self, values: dict[str, Any]) -> None:
        self._write({"summary": True, **values})
        summary = {k: _jsonable(v) for k, v in values.items()}
        self._wandb(lambda run: run.summary.update(summary))

    def finish(self, ok: bool = True) -> None:
        """Wait for the logger's thread (pictures, wandb), finish the wandb run (exit code 1 when the run failed;
        then a logger error is not raised over the run's own) and close the JSONL."""
        if self.worker is None:
            return
        worker, self.worker = self.worker, None
        if self.use_wandb:
            worker.calls.put(lambda run: run.finish(exit_code=0 if ok else 1))
        try:
            worker.close(check=ok)
        finally:
            self.file.close()


class NullLogger(RunLogger):
    """Logs nothing (ranks other than 0 in a distributed run)."""

    def __init__(self) -> None:
        super().__init__(None)


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
    run_id: str | None = None,
) -> RunLogger:
    """``kind="none"``: JSONL only. ``kind="wandb"``: also ``wandb.init`` with the resolved ``config``, its files
    under ``<out_dir>/wandb`` (``mode="offline"`` needs no account or network; upload later with ``wandb sync``).
    ``system_stats=False`` skips wandb's CPU/GPU sampling and git/metadata probes (faster init and finish).
    ``wandb.init`` runs on the logger's own thread; only ``mode="online"`` waits for it (a login error at start).
    ``run_id``: the wandb run's id, resumed (``resume="allow"``) if it exists (see ``wandb_run_id``)."""
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
            id=run_id,
            resume="allow" if run_id is not None else None,
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

    return RunLogger(out_dir, init, wait=mode == "online")


RUN_ID_FILE = "wandb-run-id"


def wandb_run_id(out_dir: Path, resume: bool) -> str:
    """The wandb run id of the training run in ``out_dir``: the stored one when ``resume`` (a resumed run logs
    into the same wandb run), else a new one, stored in ``<out_dir>/wandb-run-id``."""
    path = Path(out_dir) / RUN_ID_FILE
    if resume and path.is_file():
        stored = path.read_text().strip()
        if stored.isalnum():
            return stored
    run_id = secrets.token_hex(4)  # 8 characters of [0-9a-f], like wandb's own ids
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(run_id + "\n")
    os.replace(tmp, path)
    return run_id
