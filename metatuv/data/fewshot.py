"""Few-shot classification benchmarks: one episode sampler per split of a ClassImages dataset."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from metatuv.data.episodes import ClassImages, EpisodeSampler
from metatuv.data.images import decode
from metatuv.data.stream import Stream

IMAGE_BENCHMARKS = ("omniglot", "mini-imagenet", "tiered-imagenet", "cifar-fs", "fc100")
ROTATIONS = ("none", "train", "all")  # FewShot(rotate=...): none | training classes | every split
LOCAL_LABELS = ("tiered-imagenet", "cifar-fs", "fc100")  # learn2learn numbers each split's classes from 0


def class_fingerprints(data: ClassImages) -> list[str]:
    """One digest per class: blake2b of its images' bytes in order (a class listed in two splits gives one digest)."""
    images = data.images.cpu().contiguous()
    return [
        hashlib.blake2b(images[o : o + c].numpy().tobytes(), digest_size=16).hexdigest()
        for o, c in zip(data.offsets.tolist(), data.counts.tolist(), strict=True)
    ]


def check_disjoint(splits: dict[str, ClassImages], where: str, by_name: bool = True) -> None:
    """Refuse, with one line giving the count and one example, splits that share a class: by class name
    (``by_name``) and by content (the same images under another name). Also refuse an empty split."""
    for split, data in splits.items():
        if data.num_classes == 0:
            raise ValueError(f"{where}: the {split} split has no classes (an empty split file?); list its classes.")
    names = list(splits)
    digests = {s: class_fingerprints(d) for s, d in splits.items()}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = sorted(set(splits[a].names) & set(splits[b].names)) if by_name else []
            if not shared:
                index = {d: k for k, d in enumerate(digests[a])}
                shared = [splits[b].names[k] if splits[b].names else f"class {k}" for k, d in enumerate(digests[b])]
                shared = [n for n, d in zip(shared, digests[b], strict=True) if d in index]
            if shared:
                raise ValueError(
                    f"{where}: the {a} and {b} splits share {len(shared)} class(es) (e.g. {shared[0]!r}); a meta-test "
                    f"on training classes is not a meta-test: fix the split lists so that train/val/test are disjoint."
                )


# (channels, side) of each benchmark's stored images when benchmark.image_size is null (load_splits checks them)
IMAGE_SHAPES = {
    "omniglot": (1, 28),
    "mini-imagenet": (3, 84),
    "tiered-imagenet": (3, 84),
    "cifar-fs": (3, 32),
    "fc100": (3, 32),
}


def image_shape(name: str, image_size: int | None = None) -> tuple[int, int, int]:
    """(C, H, W) of the images a benchmark's loader yields, without reading any data."""
    if name not in IMAGE_SHAPES:
        raise ValueError(f"unknown image benchmark {name!r}; choose one of {list(IMAGE_BENCHMARKS)}.")
    c, side = IMAGE_SHAPES[name]
    side = image_size or side
    return c, side, side


def preprocessor(name: str, image_size: int | None = None):
    """The function mapping one image file (path) to the float (C, S, S) tensor in [0, 1] that the network sees for
    benchmark ``name``: Omniglot through ``metatuv.data.omniglot.preprocess``; the RGB benchmarks as the
    mini-ImageNet loader decodes (RGB, Lanczos-resized to S×S), scaled by 1/255."""
    c, side, _ = image_shape(name, image_size)
    if name == "omniglot":
        from metatuv.data.omniglot import preprocess

        return lambda path: preprocess(path, side)

    def rgb(path) -> torch.Tensor:
        return torch.from_numpy(decode(Path(path), str(path), side, "RGB")).permute(2, 0, 1).float() / 255.0

    return rgb


def load_splits(
    name: str,
    data_root: str | Path,
    protocol: str = "vinyals",
    image_size: int | None = None,
    cache_dir=None,
    split_dir: str | Path | None = None,
) -> dict[str, ClassImages]:
    """Load a benchmark's train/val/test splits from ``data_root`` (the folder holding omniglot/, mini-imagenet/, …);
    ``split_dir``: Omniglot split lists of the user's own (protocol=vinyals format)."""
    if split_dir is not None and name != "omniglot":
        raise ValueError(f"benchmark.split_dir is read only by omniglot, not {name}; set benchmark.split_dir=null.")
    splits = _load(name, Path(data_root).expanduser(), protocol, image_size, cache_dir, split_dir)
    check_disjoint(splits, f"{name} under {split_dir or data_root}", by_name=name not in LOCAL_LABELS)
    size = next(iter(splits.values())).images.shape[-1]
    if image_size is not None and size != image_size:
        raise ValueError(
            f"benchmark.image_size={image_size}, but {name} is stored at {size}×{size} and is not resized; "
            f"set benchmark.image_size={size}."
        )
    return splits


def _load(
    name: str, root: Path, protocol: str, image_size: int | None, cache_dir, split_dir=None
) -> dict[str, ClassImages]:
    if not root.is_dir():
        raise FileNotFoundError(
            f"data root {root} does not exist; set paths.data_root=... (or METATUV_DATA_ROOT) to the folder that "
            f"holds the {name} data."
        )
    if name == "omniglot":
        from metatuv.data.omniglot import omniglot_splits

        return omniglot_splits(root / "omniglot", protocol, image_size or 28, cache_dir, split_dir)
    if name == "mini-imagenet":
        from metatuv.data.imagenet_like import mini_imagenet_splits

        return mini_imagenet_splits(root / "mini-imagenet", image_size or 84, cache_dir)
    if name in ("tiered-imagenet", "cifar-fs", "fc100"):
        from metatuv.data.imagenet_like import l2l_splits

        return l2l_splits(name, root, cache_dir)
    raise ValueError(f"unknown image benchmark {name!r}; choose one of {list(IMAGE_BENCHMARKS)}.")


class FewShot:
    """N-way K-shot Q-query episodes for each given split (each checked at construction).

    ``rotate``: ``"none"``, ``"train"`` (turn training classes by random multiples of 90° per episode) or ``"all"``
    (every split, as Finn et al.'s Omniglot data generator does).
    """

    def __init__(
        self,
        splits: dict[str, ClassImages],
        ways: int,
        shots: int,
        queries: int,
        rotate: str = "none",
        device: str | torch.device = "cpu",
    ) -> None:
        if rotate not in ROTATIONS:
            raise ValueError(f"rotate={rotate!r}; use 'none', 'train' or 'all'.")
        self.samplers = {
            split: EpisodeSampler(
                data.to(device),
                ways,
                shots,
                queries,
                rotate == "all" or (rotate == "train" and split == "train"),
                split,
            )
            for split, data in splits.items()
        }

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(next(iter(self.samplers.values())).data.images.shape[1:])

    def batches(self, split: str, tasks: int, seed: int) -> Stream:
        if split not in self.samplers:
            raise ValueError(f"split {split!r} not loaded; available: {sorted(self.samplers)}.")
        return self.samplers[split].batches(tasks, seed)
