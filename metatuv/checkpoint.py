"""Checkpoint files: atomic, checksummed, plain data only, with the previous one kept as a fallback.

Layout of ``checkpoint.pt``: one header line ``metatuv-checkpoint 2 sha256=<hex> bytes=<n>``, then the
``torch.save`` payload. The payload holds only tensors and plain containers (dict, list, tuple, str, numbers,
None) and is read with ``torch.load(weights_only=True)``: a file holding anything else is refused without being
unpickled (the sha256 only detects damage, it does not vouch for the author). Format 1 (before) was a full pickle
and is refused too; ``python -m metatuv.checkpoint --upgrade-trusted FILE`` converts a format-1 file you wrote.

Writing goes to ``checkpoint.pt.tmp`` (fsync), the current file becomes ``checkpoint.prev.pt`` (only when it
verifies: a damaged file never replaces the good previous one), and the temp file is renamed into place: a kill
at any moment leaves a valid file.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

MAGIC = b"metatuv-checkpoint"
FORMAT = 2  # 1: full pickle (weights_only=False), refused since format 2


class CheckpointError(ValueError):
    """A checkpoint file that is truncated, corrupted or not a metatuv checkpoint."""


class UnsafeCheckpoint(CheckpointError):
    """A checkpoint that would need a full unpickle (old format or foreign objects): refused, never loaded, and
    never silently replaced by the previous checkpoint."""


class NonFiniteCheckpoint(FloatingPointError):
    """A state holding NaN/Inf values: not written, so the last good checkpoint stays."""


def previous(path: Path) -> Path:
    return path.with_name(path.stem + ".prev" + path.suffix)


def damaged(path: Path) -> Path:
    """Where a damaged checkpoint is moved aside (``checkpoint.bad.pt``) once the previous one is used instead."""
    return path.with_name(path.stem + ".bad" + path.suffix)


def _walk(obj: Any, key: str = ""):
    """(dotted key, tensor) for every tensor in nested dicts / lists / tuples."""
    if isinstance(obj, torch.Tensor):
        yield key, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f"{key}.{k}" if key else str(k))
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{key}.{i}" if key else str(i))


def first_nonfinite(state: Any) -> str | None:
    """The dotted key of the first floating-point tensor in ``state`` holding NaN or Inf, or None."""
    for key, t in _walk(state):
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            return key
    return None


def save_checkpoint(path: Path, state: dict[str, Any], keep_previous: bool = True) -> None:
    """Write ``state`` atomically with its sha256; the file it replaces is kept as ``<stem>.prev<suffix>`` if it
    verifies (a damaged file is overwritten, so it never replaces the good previous one).

    Raises NonFiniteCheckpoint (writing nothing) when a floating-point tensor of ``state`` is not finite.
    """
    bad = first_nonfinite(state)
    if bad is not None:
        raise NonFiniteCheckpoint(f"{bad} holds NaN/Inf values; not written (the last good {path.name} is kept)")
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    header = MAGIC + f" {FORMAT} sha256={hashlib.sha256(payload).hexdigest()} bytes={len(payload)}\n".encode()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header)
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    if keep_previous and path.exists():
        try:
            _verified_payload(path)
            os.replace(path, previous(path))
        except CheckpointError:
            pass  # damaged: overwritten below, the previous checkpoint stays
    os.replace(tmp, path)


def _verified_payload(path: Path, accept: tuple[int, ...] = (FORMAT,)) -> tuple[int, bytes]:
    """(format, payload) of a file whose header, length and sha256 check out; CheckpointError otherwise."""
    data = path.read_bytes()
    head, sep, payload = data.partition(b"\n")
    words = head[len(MAGIC) :].decode(errors="replace").split()
    fields = dict(w.split("=", 1) for w in words if "=" in w)
    version = int(words[0]) if words and words[0].isdigit() else None
    if not head.startswith(MAGIC + b" ") or not sep or version is None or not {"sha256", "bytes"} <= fields.keys():
        raise CheckpointError(f"{path} is not a metatuv checkpoint (no valid header)")
    if len(payload) != int(fields["bytes"]):
        raise CheckpointError(f"{path} is truncated ({len(payload)} of {fields['bytes']} bytes)")
    if hashlib.sha256(payload).hexdigest() != fields["sha256"]:
        raise CheckpointError(f"{path} is corrupted (sha256 mismatch)")
    if version not in accept:
        if version == 1:
            raise UnsafeCheckpoint(
                f"{path} is an old-format metatuv checkpoint (format 1, a full pickle that can run code when loaded) "
                "and was not loaded; start over (checkpoint.resume=false or a new hydra.run.dir), or, only if you "
                f"wrote it yourself, convert it once: python -m metatuv.checkpoint --upgrade-trusted {path}"
            )
        raise CheckpointError(f"{path} has checkpoint format {version}; this metatuv reads format {FORMAT}")
    return version, payload


def _read(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    _, payload = _verified_payload(path)
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        reason = next(  # torch's own message is several paragraphs; the line naming the refused global
            (ln for ln in lines if "unsupported" in ln.lower() or "WeightsUnpickler error" in ln),
            lines[-1] if lines else "",
        ).rstrip(".")
        raise UnsafeCheckpoint(
            f"{path} holds objects other than tensors and plain containers ({reason}); it was refused "
            "without being unpickled (loading it could run code). Delete it unless you know who wrote it."
        ) from None
    except Exception as err:  # noqa: BLE001 — a payload torch cannot parse at all
        first = (str(err).splitlines() or [""])[0]
        raise CheckpointError(f"{path} could not be read ({type(err).__name__}: {first})") from None


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], Path]:
    """The state in ``path``, verified; if it is damaged or missing, the previous checkpoint (a line says so, and
    the returned path says which file was used). Never unpickles anything but tensors and plain containers.

    Raises CheckpointError naming both files when neither is usable, UnsafeCheckpoint (no fallback) when a file
    would need a full unpickle.
    """
    path = Path(path)
    prev = previous(path)
    if not path.exists() and prev.exists():
        state = _read(prev, map_location)
        print(f"warning: {path} is missing; using the previous checkpoint {prev} (step {state['step']})", flush=True)
        return state, prev
    try:
        return _read(path, map_location), path
    except UnsafeCheckpoint:
        raise
    except CheckpointError as err:
        if not prev.exists():
            raise CheckpointError(
                f"{err}, and there is no {prev.name} to fall back on; delete it to start over."
            ) from None
        try:
            state = _read(prev, map_location)
        except UnsafeCheckpoint:
            raise
        except CheckpointError as err2:
            raise CheckpointError(f"{err}; {err2}; delete both to start over.") from None
        print(f"warning: {err}; using the previous checkpoint {prev} (step {state['step']})", flush=True)
        return state, prev


def rng_state() -> dict[str, Any]:
    """torch, numpy and python global RNG states as tensors and plain values (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of ``rng_state``."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    keys = n["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss"]))


def upgrade_trusted(path: Path) -> None:
    """Rewrite a format-1 checkpoint (a full pickle: this RUNS any code in it, so only for files you wrote) as
    format 2, in place. Its numpy / python RNG states become tensors and plain values."""
    path = Path(path)
    _, payload = _verified_payload(path, accept=(1,))
    state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
    rng = state.get("rng")
    if isinstance(rng, dict) and isinstance(rng.get("numpy"), tuple):
        kind, keys, pos, has_gauss, cached = rng["numpy"]
        version, internal, gauss = rng["python"]
        rng["numpy"] = {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
        rng["python"] = {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}
    save_checkpoint(path, state, keep_previous=False)
    _read(path, "cpu")  # plain data now


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m metatuv.checkpoint", description=upgrade_trusted.__doc__)
    p.add_argument("--upgrade-trusted", type=Path, nargs="+", required=True, metavar="FILE")
    a = p.parse_args(argv)
    for path in a.upgrade_trusted:
        try:
            upgrade_trusted(path)
        except (CheckpointError, OSError) as e:
            raise SystemExit(f"metatuv.checkpoint: {e}") from None
        print(f"{path}: upgraded to checkpoint format {FORMAT}")


if __name__ == "__main__":
    main()
