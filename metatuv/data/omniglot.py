"""Omniglot (Lake et al. 2015) from the official layout, 28×28, strokes = 1, with three split protocols.

<data_root>/omniglot/images_background.zip and images_evaluation.zip (or the extracted folders of the same
names): <top>/<Alphabet>/characterNN/IIII_DD.png, 964 + 659 characters, 20 drawings each.

- ``vinyals``: alphabet-mixed 1028 / 172 / 423 characters from splits/vinyals/{train,val,test}.txt, each line
  ``Alphabet/characterNN/rotDDD``: every rotation is its own class (4112 / 688 / 1692 classes). ``split_dir``
  points at another folder of such lists (the user's own split).
- ``maml``: a seeded shuffle (seed ``MAML_SPLIT_SEED``) of all 1623 characters: 1100 train, 100 val, the
  remaining 423 test (Finn et al. 2017; Lee & Choi 2018); training episodes turn each class by a random
  multiple of 90° (``rotate`` in the sampler).
- ``background``: the split the dataset ships with (Lake et al. 2015): meta-train and validate on the 30
  background alphabets only, test on the 20 evaluation alphabets (659 characters). Validation holds out whole
  background alphabets (``BACKGROUND_VAL_ALPHABETS``: 5 alphabets, 160 characters; train 25 alphabets, 804
  characters), so that it measures what the test measures, transfer to unseen alphabets; a split by character
  would validate on alphabets seen in training and overrate the model. Each character is one class.

Every image goes through ``preprocess`` (public: use it for images of your own, e.g. metatuv-eval --episodes).
"""

from __future__ import annotations

import hashlib
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metatuv.data.episodes import ClassImages
from metatuv.data.images import decode, default_cache_dir, load_cached, save_cached

PARTS = ("images_background", "images_evaluation")
COUNTS = {"images_background": 964, "images_evaluation": 659}
DRAWINGS = 20
MAML_SPLIT_SEED = 1
MAML_SIZES = {"train": 1100, "val": 100, "test": 423}
PROTOCOLS = ("vinyals", "maml", "background")
# protocol=background's validation alphabets: 5 of the 30 background alphabets (160 of 964 characters), drawn once by
# random.Random(1).shuffle of the sorted names and written out, so the split never depends on a library's RNG
BACKGROUND_VAL_ALPHABETS = ("Sanskrit", "Hebrew", "Early_Aramaic", "Cyrillic", "Mkhedruli_(Georgian)")
PREPROCESSING = {"resize": "lanczos", "mode": "L", "invert": True}  # part of the cache key
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


def preprocess(
    image: str | Path | bytes | Image.Image, size: int = 28, dtype: torch.dtype = torch.float32, name: str | None = None
) -> torch.Tensor:
    """One Omniglot-style image (dark strokes on light; a path, PNG bytes or a PIL image) as the loader stores it.

    x = 255 − L(resize_lanczos(image, size×size)) (grayscale, antialiased, inverted: strokes high), shape
    (1, size, size); uint8 for ``dtype=torch.uint8``, else x / 255 in [0, 1] in ``dtype`` (what the network sees).
    """
    if isinstance(image, Image.Image):
        img = image.convert("L")
        img = img.resize((size, size), Image.LANCZOS) if img.size != (size, size) else img
        pixels = np.asarray(img, dtype=np.uint8)
    else:
        source = Path(image) if isinstance(image, str) else image
        pixels = decode(source, name or ("<bytes>" if isinstance(image, bytes) else str(image)), size, "L")
    x = torch.from_numpy(255 - pixels).unsqueeze(0)  # strokes = 1 (255)
    return x if dtype == torch.uint8 else x.to(dtype) / 255.0


def _decode_all(sources: list[Path], size: int) -> tuple[torch.Tensor, list[str]]:
    images, names = [], []
    for part, source in zip(PARTS, sources, strict=True):
        by_char: dict[str, list[torch.Tensor]] = {}
        for rel, data in _members(source):
            char = rel.rsplit("/", 1)[0]
            by_char.setdefault(char, []).append(preprocess(data, size, torch.uint8, f"{source}:{rel}"))
        bad = [c for c, v in by_char.items() if len(v) != DRAWINGS]
        if len(by_char) != COUNTS[part] or bad:
            raise ValueError(
                f"Omniglot {source} is incomplete: {len(by_char)} characters (expected {COUNTS[part]}), "
                f"{len(bad)} without {DRAWINGS} drawings (e.g. {bad[:3]}); re-extract {SOURCE}."
            )
        for char in sorted(by_char):
            names.append(char)
            images.append(torch.stack(by_char[char]))
    return torch.stack(images), names  # (1623, 20, 1, size, size)


def content_digest(sources: list[Path]) -> str:
    """sha256 over the sources' bytes (a zip's bytes; a folder's sorted relative PNG paths and their bytes)."""
    h = hashlib.sha256()
    for source in sources:
        h.update(source.name.encode() + b"\0")
        files = sorted(source.rglob("*.png")) if source.is_dir() else [source]
        for f in files:
            if source.is_dir():
                h.update(str(f.relative_to(source)).encode() + b"\0")
            with f.open("rb") as stream:
                for chunk in iter(lambda stream=stream: stream.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def load_omniglot(
    root: str | Path, image_size: int = 28, cache_dir: str | Path | None = None
) -> tuple[torch.Tensor, list[str]]:
    """All 1623 characters as uint8 (1623, 20, 1, S, S) (strokes high) and their 'Alphabet/characterNN' names.

    The decoded tensor is cached in ``cache_dir`` (default $METATUV_CACHE_DIR or ~/.cache/metatuv) under a name
    keyed by content: the sha256 of the source bytes and the preprocessing (size, resize, inversion). Two data
    roots over the same zips share one entry; different contents never overwrite each other.
    """
    root = Path(root)
    sources = _sources(root)
    digest = content_digest(sources)
    signature = {"sha256": digest, "size": image_size, "preprocessing": PREPROCESSING, "version": 2}
    cache = Path(cache_dir or default_cache_dir()) / f"omniglot-{image_size}-{digest[:16]}.pt"
    blob = load_cached(cache, signature)
    if blob is None:
        start = time.perf_counter()
        images, names = _decode_all(sources, image_size)
        blob = {"images": images, "names": names, "signature": signature}
        save_cached(cache, blob)
        print(f"omniglot: decoded {len(names)} characters in {time.perf_counter() - start:.1f} s (cached at {cache})")
    return blob["images"], blob["names"]


def _vinyals(
    root: Path, images: torch.Tensor, names: list[str], split_dir: Path | None = None
) -> dict[str, ClassImages]:
    index = {n: i for i, n in enumerate(names)}
    splits = {}
    for split in ("train", "val", "test"):
        path = (split_dir or root / "splits" / "vinyals") / f"{split}.txt"
        if not path.is_file() and split_dir is not None:
            raise FileNotFoundError(
                f"Omniglot split list {path} not found; benchmark.split_dir must hold train.txt, val.txt and "
                "test.txt, one 'Alphabet/characterNN/rotDDD' line per class (the format of splits/vinyals/)."
            )
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


def _background(images: torch.Tensor, names: list[str]) -> dict[str, ClassImages]:
    background = COUNTS[PARTS[0]]  # load_omniglot puts the background characters first
    alphabet = [n.split("/", 1)[0] for n in names]
    missing = sorted(set(BACKGROUND_VAL_ALPHABETS) - set(alphabet[:background]))
    if missing:
        raise ValueError(
            f"Omniglot protocol=background: validation alphabets {missing} are not in images_background; "
            f"re-extract {SOURCE}."
        )
    groups = {
        "train": [i for i in range(background) if alphabet[i] not in BACKGROUND_VAL_ALPHABETS],
        "val": [i for i in range(background) if alphabet[i] in BACKGROUND_VAL_ALPHABETS],
        "test": list(range(background, len(names))),
    }
    return {k: ClassImages.from_grouped(images[idx], [names[i] for i in idx]) for k, idx in groups.items()}


def omniglot_splits(
    root: str | Path,
    protocol: str = "vinyals",
    image_size: int = 28,
    cache_dir: str | Path | None = None,
    split_dir: str | Path | None = None,
) -> dict[str, ClassImages]:
    """{'train', 'val', 'test'} → ClassImages under the chosen protocol (``root`` is the omniglot/ folder;
    ``split_dir``: a folder of train/val/test.txt in the splits/vinyals/ format, read by protocol=vinyals)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"Omniglot protocol={protocol!r}; use one of {list(PROTOCOLS)}.")
    if split_dir is not None and protocol != "vinyals":
        raise ValueError(
            f"benchmark.split_dir={str(split_dir)!r} is read only by protocol=vinyals (its split lists' format), "
            f"not protocol={protocol}; set benchmark.protocol=vinyals or benchmark.split_dir=null."
        )
    if split_dir is not None and not Path(split_dir).expanduser().is_dir():
        raise FileNotFoundError(
            f"benchmark.split_dir={str(split_dir)!r} is not a folder; point it at a folder holding train.txt, "
            "val.txt and test.txt in the splits/vinyals/ format."
        )
    images, names = load_omniglot(root, image_size, cache_dir)
    if protocol == "vinyals":
        return _vinyals(Path(root), images, names, Path(split_dir).expanduser() if split_dir is not None else None)
    return _maml(images, names) if protocol == "maml" else _background(images, names)
