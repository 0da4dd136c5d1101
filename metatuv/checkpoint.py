"""Checkpoint files: atomic, checksummed, with the previous one kept as a fallback.

Layout of ``checkpoint.pt``: one header line ``metatuv-checkpoint 1 sha256=<hex> bytes=<n>``, then the
``torch.save`` payload. Writing goes to ``checkpoint.pt.tmp`` (fsync), the current file becomes
``checkpoint.prev.pt``, and the temp file is renamed into place: a kill at any moment leaves a valid file.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

MAGIC = b"metatuv-checkpoint 1"


class CheckpointError(ValueError):
    """A checkpoint file that is truncated, corrupted or not a metatuv checkpoint."""


def previous(path: Path) -> Path:
    return path.with_name(path.stem + ".prev" + path.suffix)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically with its sha256; the file it replaces is kept as ``<stem>.prev<suffix>``."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    header = MAGIC + f" sha256={hashlib.sha256(payload).hexdigest()} bytes={len(payload)}\n".encode()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header)
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    if path.exists():
        os.replace(path, previous(path))
    os.replace(tmp, path)


def _read(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    data = path.read_bytes()
    head, sep, payload = data.partition(b"\n")
    fields = dict(f.split("=", 1) for f in head[len(MAGIC) :].decode(errors="replace").split() if "=" in f)
    if not head.startswith(MAGIC) or not sep or "sha256" not in fields or "bytes" not in fields:
        raise CheckpointError(f"{path} is not a metatuv checkpoint (no valid header)")
    if len(payload) != int(fields["bytes"]):
        raise CheckpointError(f"{path} is truncated ({len(payload)} of {fields['bytes']} bytes)")
    if hashlib.sha256(payload).hexdigest() != fields["sha256"]:
        raise CheckpointError(f"{path} is corrupted (sha256 mismatch)")
    return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=False)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], Path]:
    """The state in ``path``, verified; if it is damaged, the previous checkpoint (returned path says which).

    Raises CheckpointError naming both files when neither is usable.
    """
    try:
        return _read(path, map_location), path
    except CheckpointError as err:
        prev = previous(path)
        if not prev.exists():
            raise CheckpointError(
                f"{err}, and there is no {prev.name} to fall back on; delete it to start over."
            ) from None
        try:
            state = _read(prev, map_location)
        except CheckpointError as err2:
            raise CheckpointError(f"{err}; {err2}; delete both to start over.") from None
        print(f"warning: {err}; resuming from the previous checkpoint {prev} (step {state['step']})", flush=True)
        return state, prev
