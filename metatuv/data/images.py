"""Shared image decoding and the decoded-tensor cache."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError


def default_cache_dir() -> Path:
    """$METATUV_CACHE_DIR, else ~/.cache/metatuv."""
    return Path(os.environ.get("METATUV_CACHE_DIR", Path.home() / ".cache" / "metatuv"))


def decode(data: bytes | Path, name: str, size: int | None, mode: str) -> np.ndarray:
    """Decode one image (bytes or a path) to uint8 (H, W) or (H, W, 3), resized to size×size with antialiasing."""
    try:
        img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        img = img.convert(mode)
        if size is not None and img.size != (size, size):
            img = img.resize((size, size), Image.LANCZOS)
        return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"cannot read image {name}: {e}; replace or re-extract that file.") from e


def load_cached(path: Path, signature: dict) -> dict | None:
    """The cached dict at ``path`` if it exists and was built from the same sources (``signature``)."""
    if not path.exists():
        return None
    try:
        blob = torch.load(path, weights_only=True)
    except Exception:  # corrupt cache: rebuild it
        return None
    return blob if blob.get("signature") == signature else None


def save_cached(path: Path, blob: dict) -> None:
    """Atomic write (temp file + rename); a cache that cannot be written is skipped, never fatal."""
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(blob, tmp)
        os.replace(tmp, path)
    except Exception as e:  # torch.save reports a full disk as RuntimeError
        print(f"note: could not write the cache {path} ({e}); the next start decodes again.")
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def file_signature(paths: list[Path]) -> dict:
    """Size and time of each file; for a folder, the count, total size and newest time of the files in it."""
    sig = {}
    for p in paths:
        if p.is_dir():
            stats = [f.stat() for f in p.rglob("*") if f.is_file()]
            sig[str(p)] = [len(stats), sum(s.st_size for s in stats), max((int(s.st_mtime) for s in stats), default=0)]
        elif p.exists():
            sig[str(p)] = [p.stat().st_size, int(p.stat().st_mtime)]
    return sig
