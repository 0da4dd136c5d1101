"""Few-shot episodes assembled by someone else as image folders (metatuv-eval RUN --episodes DIR).

    DIR/<episode>/support/<class>/*.png    the labelled examples to adapt on
    DIR/<episode>/query/<class>/*.png      the examples to score

One folder per episode (sorted by name). In each episode the class folder names are the labels: the same set
under support/ and query/, mapped to 0..N−1 in sorted order. Every image goes through the run's benchmark
preprocessing (``metatuv.data.fewshot.preprocessor``; for Omniglot ``metatuv.data.omniglot.preprocess``).
Anything malformed raises one line naming the path and the fix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class FolderEpisode:
    """One episode: support/query images (n, C, H, W) float and labels (n,) int64 in 0..len(classes)−1."""

    name: str
    classes: list[str]
    xs: Tensor
    ys: Tensor
    xq: Tensor
    yq: Tensor

    @property
    def batch(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """A meta-batch of this one task: (1, ·) each, as the episode samplers yield."""
        return self.xs[None], self.ys[None], self.xq[None], self.yq[None]


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _class_folders(folder: Path) -> dict[str, list[Path]]:
    """{class name: its image files} under ``folder`` (support/ or query/)."""
    classes: dict[str, list[Path]] = {}
    for entry in _visible(folder):
        if not entry.is_dir():
            raise ValueError(
                f"episodes: {entry} is a file; {folder} must hold one folder per class (its name is the label)."
            )
        files = _visible(entry)
        others = [f for f in files if f.suffix.lower() not in IMAGE_SUFFIXES or not f.is_file()]
        if others:
            raise ValueError(
                f"episodes: {others[0]} is not an image ({'/'.join(IMAGE_SUFFIXES)}); a class folder holds images only."
            )
        if not files:
            raise ValueError(f"episodes: {entry} holds no images; give every class at least one image.")
        classes[entry.name] = files
    if not classes:
        raise ValueError(f"episodes: {folder} holds no class folders; add <class>/<image>.png under it.")
    return classes


def _stack(files_by_class: dict[str, list[Path]], classes: list[str], preprocess) -> tuple[Tensor, Tensor]:
    images, labels = [], []
    for label, name in enumerate(classes):
        for f in files_by_class[name]:
            images.append(preprocess(f))
            labels.append(label)
    shapes = {tuple(x.shape) for x in images}
    if len(shapes) != 1:  # cannot happen with the benchmarks' preprocessing (it resizes), but never stack ragged
        raise ValueError(f"episodes: images preprocessed to differing shapes {sorted(shapes)}.")
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)


def read_episodes(
    root: str | Path, preprocess: Callable[[Path], Tensor], ways: int | None = None
) -> list[FolderEpisode]:
    """Every episode under ``root`` (see the module docstring); ``ways``: the class count each must have (the
    trained network's output size)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"episodes: {root} is not a folder; pass a folder holding one folder per episode.")
    if (root / "support").is_dir() or (root / "query").is_dir():
        raise ValueError(
            f"episodes: {root} holds support/ or query/ itself; put each episode in its own folder, "
            f"e.g. {root / 'episode01' / 'support'}."
        )
    folders = [p for p in _visible(root) if p.is_dir()]
    if not folders:
        raise ValueError(f"episodes: {root} holds no episode folders; add <episode>/support/ and <episode>/query/.")
    episodes = []
    for folder in folders:
        missing = [part for part in ("support", "query") if not (folder / part).is_dir()]
        if missing:
            raise ValueError(
                f"episodes: {folder} has no {' and no '.join(f'{m}/' for m in missing)} folder; every episode "
                "needs support/<class>/*.png and query/<class>/*.png."
            )
        support, query = _class_folders(folder / "support"), _class_folders(folder / "query")
        if set(support) != set(query):
            only_s, only_q = sorted(set(support) - set(query)), sorted(set(query) - set(support))
            raise ValueError(
                f"episodes: {folder}: support and query have different classes (only in support: {only_s}, "
                f"only in query: {only_q}); use the same class folder names in both."
            )
        classes = sorted(support)
        if ways is not None and len(classes) != ways:
            raise ValueError(
                f"episodes: {folder} has {len(classes)} classes but the model was trained {ways}-way (it outputs "
                f"{ways} logits); give every episode exactly {ways} class folders."
            )
        xs, ys = _stack(support, classes, preprocess)
        xq, yq = _stack(query, classes, preprocess)
        episodes.append(FolderEpisode(folder.name, classes, xs, ys, xq, yq))
    return episodes
