"""mini-ImageNet (Ravi & Larochelle 2017 split) and the learn2learn-backed tiered-ImageNet, CIFAR-FS and FC100.

mini-ImageNet, either format under <data_root>/mini-imagenet/:
- ``csv``: train.csv / val.csv / test.csv (header ``filename,label``) and images/<filename> JPEGs, resized
  to 84×84 with antialiasing;
- ``pickle``: learn2learn's mini-imagenet-cache-{train,validation,test}.pkl, each a dict with ``image_data``
  uint8 (N, 84, 84, 3) and ``class_dict`` {label: [row indices]}.
tiered-ImageNet, CIFAR-FS and FC100 are read through learn2learn's dataset classes with ``root=`` the local
folder and ``download=False`` (their on-disk formats are learn2learn's: see each loader's docstring).
Decoded splits are cached as uint8 tensors (see ``metatuv.data.images``).
"""

from __future__ import annotations

import csv
import pickle
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from metatuv.data.episodes import ClassImages
from metatuv.data.images import decode, default_cache_dir, file_signature, load_cached, save_cached

SPLITS = ("train", "val", "test")
MINI_SOURCE = (
    "the Ravi & Larochelle split CSVs (twitter-research/meta-learning-lstm, data/miniImagenet) with the ImageNet "
    "images they name in images/, or learn2learn's mini-imagenet-cache-*.pkl files"
)


def _group(labels: list, images: Iterable[np.ndarray], names: list[str] | None = None) -> ClassImages:
    """ClassImages from per-image labels (any hashable) and HWC/HW uint8 arrays, classes in first-seen order."""
    by_class: dict = {}
    for label, img in zip(labels, images, strict=True):
        by_class.setdefault(label, []).append(img if img.ndim == 3 else img[..., None])
    order = list(by_class)
    stacked = np.concatenate([np.stack(by_class[c]) for c in order])  # (N, H, W, C)
    counts = torch.tensor([len(by_class[c]) for c in order], dtype=torch.long)
    return ClassImages(torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous(), counts, [str(c) for c in order])


def _cached(name: str, sources: list[Path], cache_dir, build) -> ClassImages:
    signature = {"files": file_signature(sources), "version": 1}
    path = Path(cache_dir or default_cache_dir()) / f"{name}.pt"
    blob = load_cached(path, signature)
    if blob is None:
        start = time.perf_counter()
        data = build()
        blob = {"images": data.images, "counts": data.counts, "names": data.names, "signature": signature}
        save_cached(path, blob)
        print(f"{name}: decoded {len(data.images)} images in {time.perf_counter() - start:.1f} s (cached at {path})")
    return ClassImages(blob["images"], blob["counts"], blob["names"])


def _mini_csv(root: Path, split: str, image_size: int) -> ClassImages:
    rows = list(csv.DictReader((root / f"{split}.csv").open()))
    if not rows or set(rows[0]) != {"filename", "label"}:
        raise ValueError(f"{root / f'{split}.csv'}: expected a header 'filename,label' and one row per image.")
    missing = [r["filename"] for r in rows if not (root / "images" / r["filename"]).is_file()]
    if missing:
        raise FileNotFoundError(
            f"mini-ImageNet {split}: {len(missing)} of {len(rows)} images missing under {root / 'images'} "
            f"(e.g. {missing[0]}); put the JPEGs named in {split}.csv there ({MINI_SOURCE})."
        )
    labels = [r["label"] for r in rows]
    images = (
        decode(root / "images" / r["filename"], str(root / "images" / r["filename"]), image_size, "RGB") for r in rows
    )
    return _group(labels, images)


# What learn2learn's mini-ImageNet pickles need: numpy arrays (reconstructed from raw bytes), dtypes and scalars,
# and the latin-1 encoding pickle protocol 2 uses for bytes. Nothing here can run code of the file's choosing.
PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # protocol 5
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler admitting only plain containers, strings, numbers and numpy arrays (PICKLE_ALLOWED)."""

    def find_class(self, module: str, name: str):
        if (module, name) not in PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return super().find_class(module, name)


def load_restricted_pickle(path: Path):
    """``pickle.load`` that refuses (never calls) anything but containers and numpy arrays: one-line ValueError.

    Used for every dataset pickle: mini-ImageNet's (read here) and tiered-ImageNet's / FC100's (checked before
    learn2learn reads them with plain pickle)."""
    with path.open("rb") as f:
        try:
            return _RestrictedUnpickler(f, encoding="latin1").load()  # latin1: numpy arrays in Python 2 pickles
        except pickle.UnpicklingError as err:
            raise ValueError(
                f"{path}: refused, not a plain-data pickle ({err}; only dicts, lists, numbers, strings and numpy "
                "arrays are loaded, nothing in the file is run); re-create it from the dataset's original files."
            ) from None


def _mini_pickle(path: Path) -> ClassImages:
    blob = load_restricted_pickle(path)
    if not isinstance(blob, dict) or not {"image_data", "class_dict"} <= blob.keys():
        raise ValueError(f"{path}: expected a dict with 'image_data' and 'class_dict' (learn2learn's format).")
    data, class_dict = blob["image_data"], blob["class_dict"]
    rows = sorted(int(r) for rs in class_dict.values() for r in rs)
    if rows != list(range(len(data))):
        raise ValueError(
            f"{path}: class_dict must assign every row of image_data (0..{len(data) - 1}) to exactly one class; "
            f"it lists {len(rows)} rows ({len(set(rows))} distinct). Re-create the file."
        )
    labels = np.empty(len(data), dtype=object)
    for name, rs in class_dict.items():
        labels[list(rs)] = name
    order = np.argsort([list(class_dict).index(lbl) for lbl in labels], kind="stable")
    return _group([labels[i] for i in order], (data[i] for i in order))


def mini_imagenet_splits(root: str | Path, image_size: int = 84, cache_dir=None) -> dict[str, ClassImages]:
    """{'train', 'val', 'test'} from the CSV layout (preferred when present) or learn2learn's pickles."""
    root = Path(root)
    csvs = [root / f"{s}.csv" for s in SPLITS]
    pickles = [root / f"mini-imagenet-cache-{m}.pkl" for m in ("train", "validation", "test")]
    if all(p.is_file() for p in csvs) and (root / "images").is_dir():
        return {
            s: _cached(
                f"mini-imagenet-{s}-{image_size}",
                [p, root / "images"],
                cache_dir,
                lambda s=s: _mini_csv(root, s, image_size),
            )
            for s, p in zip(SPLITS, csvs, strict=True)
        }
    if all(p.is_file() for p in pickles):
        return {
            s: _cached(f"mini-imagenet-pkl-{s}", [p], cache_dir, lambda p=p: _mini_pickle(p))
            for s, p in zip(SPLITS, pickles, strict=True)
        }
    raise FileNotFoundError(
        f"mini-ImageNet not found under {root}: expected train.csv, val.csv, test.csv and images/ (JPEGs), or "
        f"mini-imagenet-cache-{{train,validation,test}}.pkl; get {MINI_SOURCE} and set paths.data_root."
    )


def _from_l2l(dataset) -> ClassImages:
    """Iterate a learn2learn/torchvision dataset yielding (PIL image | array, label) into ClassImages."""
    labels, images = [], []
    for i in range(len(dataset)):
        img, label = dataset[i]
        images.append(np.asarray(img, dtype=np.uint8))
        labels.append(int(label))
    return _group(labels, images)


def l2l_splits(name: str, root: str | Path, cache_dir=None) -> dict[str, ClassImages]:
    """tiered-ImageNet / CIFAR-FS / FC100 through learn2learn with ``root=`` local files, downloading off.

    - ``tiered-imagenet``: <root>/tiered-imagenet/{train,val,test}_images_png.pkl (lists of PNG bytes) and
      {split}_labels.pkl (dict with 'label_specific');
    - ``cifar-fs``: <root>/cifarfs/cifar100/data/<class>/*.png with splits/bertinetto/{train,val,test}.txt
      (learn2learn copies them into <root>/cifarfs/processed/ on first use, so root must be writable);
    - ``fc100``: <root>/FC100_{train,val,test}.pickle, dicts with 'data' uint8 (N, 32, 32, 3) and 'labels'.
    """
    from metatuv.inner.backends import _import_learn2learn

    datasets = _import_learn2learn().vision.datasets
    root = Path(root)
    expected = {
        "tiered-imagenet": [root / "tiered-imagenet" / f"{s}_images_png.pkl" for s in SPLITS],
        "cifar-fs": [root / "cifarfs" / "cifar100" / "splits" / "bertinetto" / f"{s}.txt" for s in SPLITS],
        "fc100": [root / f"FC100_{s}.pickle" for s in SPLITS],
    }
    classes = {"tiered-imagenet": datasets.TieredImagenet, "cifar-fs": datasets.CIFARFS, "fc100": datasets.FC100}
    if name not in classes:
        raise ValueError(f"unknown learn2learn benchmark {name!r}; choose one of {sorted(classes)}.")
    missing = [str(p) for p in expected[name] if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{name} not found under {root}: missing {', '.join(missing)}; place learn2learn's files for {name} "
            "there (this project never downloads) and set paths.data_root."
        )

    def pickles(split: str) -> list[Path]:  # learn2learn reads these with plain pickle
        if name == "tiered-imagenet":
            return [root / "tiered-imagenet" / f"{split}_{k}.pkl" for k in ("images_png", "labels")]
        return [root / f"FC100_{split}.pickle"] if name == "fc100" else []

    def build(split: str, mode: str) -> ClassImages:
        for path in pickles(split):  # only after they pass the restricted unpickler (nothing but plain data)
            load_restricted_pickle(path)
        return _from_l2l(classes[name](str(root), mode=mode, download=False))

    out = {}
    for split, mode in zip(SPLITS, ("train", "validation", "test"), strict=True):
        out[split] = _cached(f"{name}-{split}", expected[name], cache_dir, lambda s=split, m=mode: build(s, m))
    return out
