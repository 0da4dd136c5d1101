"""One writer per run folder: an exclusive ``flock`` on ``<run folder>/run.lock`` held for the run's life.

The kernel drops the lock when the process ends, however it ends (kill -9 included), so a lock is never stale;
the file itself stays and names the last holder (pid, host, start time). A second process asking for a held
folder gets RunFolderBusy at once, naming the holder. Within one process the lock is re-entrant (counted), so
the Hydra callback (taken before Hydra writes ``.hydra/``) and ``train.run`` can both hold it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOCK_NAME = "run.lock"

_held: dict[str, list[int]] = {}  # resolved folder -> [fd, count]


class RunFolderBusy(ValueError):
    """The run folder is locked by another process."""


def acquire(out_dir: Path) -> None:
    """Lock ``out_dir`` for this process (creating it), or raise RunFolderBusy naming the holder."""
    out_dir = Path(out_dir)
    key = str(out_dir.resolve())
    if key in _held:
        _held[key][1] += 1
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "details not yet written"
        os.close(fd)
        raise RunFolderBusy(
            f"{out_dir} is in use by another run ({holder}); wait for it to end, or use another folder "
            "(hydra.run.dir=...)."
        ) from None
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid={os.getpid()} host={socket.gethostname()} started={started}\n".encode(), 0)
    _held[key] = [fd, 1]


def release(out_dir: Path) -> None:
    """Undo one ``acquire``; the lock goes when the last one is undone."""
    key = str(Path(out_dir).resolve())
    entry = _held.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        del _held[key]
        fcntl.flock(entry[0], fcntl.LOCK_UN)
        os.close(entry[0])


@contextlib.contextmanager
def run_folder_lock(out_dir: Path, enabled: bool = True) -> Iterator[None]:
    """Hold the run-folder lock for the block (``enabled=False``: no lock, e.g. ranks other than 0)."""
    if not enabled:
        yield
        return
    acquire(out_dir)
    try:
        yield
    finally:
        release(out_dir)


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object  # type: ignore[assignment,misc]


class LockRunFolder(Callback):  # type: ignore[misc,valid-type]
    """Hydra callback (conf/config.yaml): a single run locks ``hydra.run.dir`` before Hydra writes ``.hydra/``
    into it, so a second run in a busy folder leaves the first run's files untouched. Rank 0 only."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        if os.environ.get("RANK", "0") != "0":
            return
        self.dir = Path(str(config.hydra.run.dir))
        try:
            acquire(self.dir)
        except RunFolderBusy as e:
            print(f"metatuv-train: error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None

    def on_run_end(self, config: Any, **kwargs: Any) -> None:
        if hasattr(self, "dir"):
            release(self.dir)
