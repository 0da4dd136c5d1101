"""Omniglot (Lake et al. 2015) from the official layout, 28×28, strokes = 1, with two split protocols.

<data_root>/omniglot/images_background.zip and images_evaluation.zip (or the extracted folders of the same
names): <top>/<Alphabet>/characterNN/IIII_DD.png, 964 + 659 characters, 20 drawings each.

- ``vinyals``: alphabet-mixed 1028 / 172 / 423 characters from splits/vinyals/{train,val,test}.txt, each line
  ``Alphabet/characterNN/rotDDD``: every rotation is its own class (4112 / 688 / 1692 classes).
- ``maml``: a seeded shuffle (seed ``MAML_SPLIT_SEED``) of all 1623 characters: 1100 train, 100 val, the
  remaining 423 test (Finn et al. 2017; Lee & Choi 2018); training episodes turn each class by a random
  multiple of 90° (``rotate`` in the sampler).
"""

from __future__ import annotations

import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from metatuv.data.episodes import ClassImages
from metatuv.data.images import decode, default_cache_dir, file_signature, load_cached, save_cached

PARTS = ("images_background", "images_evaluation")
COUNTS = {"images_background": 964, "images_evaluation": 659}
DRAWINGS = 20
MAML_SPLIT_SEED = 1
MAML_SIZES = {"train": 1100, "val": 100, "test": 423}
SOURCE = "the official zips from github.com/brendenlake/omniglot (python/images_background.zip, images_evaluation.zip)"


def _sources(root: Path) -> list[Path]:
    found = []
    for part in PARTS:
        folder, archive = root / part, root / f"{part}.zip"
        if folder.is_dir():
            found.append(folder)
        elif archive.is_file():
            found.append(archive)
        else:
            raise FileNotFoundError(
                f"Omniglot not found: expected {archive} (or the folder {folder}) and its sibling "
                f"{'images_evaluation' if part == PARTS[0] else 'images_background'}(.zip) under {root}; "
                f"get {SOURCE} and point paths.data_root (or METATUV_DATA_ROOT) at the folder holding omniglot/."
            )
    return found


def _members(source: Path) -> list[tuple[str, bytes | Path]]:
    """(relative 'Alphabet/characterNN/file.png', bytes or path) for every PNG, sorted."""
    if source.is_dir():
        return [(str(p.relative_to(source)), p) for p in sorted(source.glob("*/*/*.png"))]
    member = ""
    try:
        with zipfile.ZipFile(source) as z:
            names = sorted(n for n in z.namelist() if n.endswith(".png"))
            out = []
            for member in names:
                out.append((member.split("/", 1)[1], z.read(member)))
            return out
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:  # truncated, CRC error, bad compressed data
        at = f" at {member}" if member else ""
        raise ValueError(f"{source} is damaged{at} ({e}); download it again: {SOURCE}.") from None


def _decode_all(sources: list[Path], size: int) -> tuple[torch.Tensor, list[str]]:
    images, names = [], []
    for part, source in zip(PARTS, sources, strict=True):
        by_char: dict[str, list[np.ndarray]] = {}
        for rel, data in _members(source):
            char = rel.rsplit("/", 1)[0]
            img = 255 - decode(data, f"{source}:{rel}", size, "L")  # strokes = 1 (255)
            by_char.setdefault(char, []).append(img)
        bad = [c for c, v in by_char.items() if len(v) != DRAWINGS]
        if len(by_char) != COUNTS[part] or bad:
            raise ValueError(
                f"Omniglot {source} is incomplete: {len(by_char)} characters (expected {COUNTS[part]}), "
                f"{len(bad)} without {DRAWINGS} drawings (e.g. {bad[:3]}); re-extract {SOURCE}."
            )
        for char in sorted(by_char):
            names.append(char)
            images.append(np.stack(by_char[char]))
    return torch.from_numpy(np.stack(images)).unsqueeze(2), names  # (1623, 20, 1, size, size)


def load_omniglot(
    root: str | Path, image_size: int = 28, cache_dir: str | Path | None = None
) -> tuple[torch.Tensor, list[str]]:
    """All 1623 characters as uint8 (1623, 20, 1, S, S) (strokes high) and their 'Alphabet/characterNN' names.

    The decoded tensor is cached in ``cache_dir`` (default $METATUV_CACHE_DIR or ~/.cache/metatuv), keyed by the
    source files' sizes and times, so later starts skip decoding.
    """
    root = Path(root)
    sources = _sources(root)
    signature = {"files": file_signature(sources), "size": image_size, "version": 1}
    cache = Path(cache_dir or default_cache_dir()) / f"omniglot-{image_size}.pt"
    blob = load_cached(cache, signature)
    if blob is None:
        start = time.perf_counter()
        images, names = _decode_all(sources, image_size)
        blob = {"images": images, "names": names, "signature": signature}
        save_cached(cache, blob)
        print(f"omniglot: decoded {len(names)} characters in {time.perf_counter() - start:.1f} s (cached at {cache})")
    return blob["images"], blob["names"]


def _vinyals(root: Path, images: torch.Tensor, names: list[str]) -> dict[str, ClassImages]:
    index = {n: i for i, n in enumerate(names)}
    splits = {}
    for split in ("train", "val", "test"):
        path = root / "splits" / "vinyals" / f"{split}.txt"
        if not path.is_file():
            raise FileNotFoundError(
                f"Omniglot vinyals split list {path} not found; it comes from the Prototypical Networks repository "
                "(data/omniglot/splits/vinyals/{train,val,test}.txt); or use benchmark.protocol=maml."
            )
        numbered = [(i, line.strip()) for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
        lines = [line for _, line in numbered]
        if not lines:
            raise ValueError(f"{path} is empty; list the {split} classes, one Alphabet/characterNN/rotDDD a line.")
        if len(set(lines)) != len(lines):
            raise ValueError(f"{path}: {len(lines) - len(set(lines))} duplicate lines; each class must appear once.")
        classes = []
        for number, line in numbered:
            char, _, rot = line.rpartition("/")
            if char not in index or rot not in ("rot000", "rot090", "rot180", "rot270"):
                raise ValueError(
                    f"{path}:{number}: {line!r} names no Omniglot character/rotation "
                    "(expected Alphabet/characterNN/rot000|rot090|rot180|rot270)."
                )
            classes.append(torch.rot90(images[index[char]], int(rot[3:]) // 90, dims=(-2, -1)))
        splits[split] = ClassImages.from_grouped(torch.stack(classes), lines)
    return splits


def _maml(images: torch.Tensor, names: list[str]) -> dict[str, ClassImages]:
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(MAML_SPLIT_SEED))
    splits, start = {}, 0
    for split, size in MAML_SIZES.items():
        idx = order[start : start + size]
        splits[split] = ClassImages.from_grouped(images[idx], [names[i] for i in idx])
        start += size
    return splits


def omniglot_splits(
    root: str | Path, protocol: str = "vinyals", image_size: int = 28, cache_dir: str | Path | None = None
) -> dict[str, ClassImages]:
    """{'train', 'val', 'test'} → ClassImages under the chosen protocol (``root`` is the omniglot/ folder)."""
    if protocol not in ("vinyals", "maml"):
        raise ValueError(f"Omniglot protocol={protocol!r}; use 'vinyals' or 'maml'.")
    images, names = load_omniglot(root, image_size, cache_dir)
    return _vinyals(Path(root), images, names) if protocol == "vinyals" else _maml(images, names)
