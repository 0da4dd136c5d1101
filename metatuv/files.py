"""Run files written atomically: a temp file beside the target, fsync, then ``os.replace``.

A crash, a kill or a full disk at any moment leaves either the old file or the new one, never a partial or empty
file; a failed write removes its temp file and raises ``RunFileError`` naming the path (``Errno 28``: the disk).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any


class RunFileError(OSError):
    """A run file could not be written; the message names the file, the cause and the fix."""


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + fsync + os.replace); on failure nothing is left behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        why = f"{e.strerror or e} (Errno {e.errno})" if e.errno else str(e)
        hint = "free space on that disk" if e.errno == 28 else "check that the folder exists and is writable"
        err = RunFileError(f"cannot write {path}: {why}; {hint}, then rerun.")
        err.errno = e.errno
        raise err from e
    return path


def write_text(path: str | Path, text: str) -> Path:
    """``write_bytes`` of UTF-8 text."""
    return write_bytes(path, text.encode())


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """Strict JSON (``allow_nan=False``: a NaN or Inf is a bug of the caller, which must write ``null``), atomically."""
    return write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


def save_torch(path: str | Path, obj: Any) -> Path:
    """``torch.save`` into memory, then ``write_bytes``."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return write_bytes(path, buf.getvalue())


def save_figure(fig, path: str | Path, **kwargs) -> Path:
    """``fig.savefig`` (format from the suffix) into memory, then ``write_bytes``."""
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", **kwargs)
    return write_bytes(path, buf.getvalue())
