"""Real Omniglot (data-marked: read from ../shared/data or METATUV_DATA_ROOT; run in CI)."""

import time

import pytest
import torch

from metatuv.data import EpisodeSampler, FewShot, load_splits
from metatuv.data.omniglot import load_omniglot, omniglot_splits
from metatuv.meta import MetaLearner, accuracy, cross_entropy, evaluate, get_preset, meta_train
from metatuv.nn import conv4

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def omniglot(data_root, cache_dir):
    start = time.perf_counter()
    images, names = load_omniglot(data_root / "omniglot", 28, cache_dir)
    first = time.perf_counter() - start
    start = time.perf_counter()
    cached, _ = load_omniglot(data_root / "omniglot", 28, cache_dir)
    second = time.perf_counter() - start
    print(f"\nomniglot load: first {first:.1f} s, from cache {second:.2f} s")
    assert torch.equal(images, cached)
    return images, names


def test_counts_shapes_and_range(omniglot):
    images, names = omniglot
    assert images.shape == (964 + 659, 20, 1, 28, 28) and images.dtype == torch.uint8
    assert len(set(names)) == 1623 and names[0].startswith("Alphabet_of_the_Magi/")
    assert images.min() == 0 and images.max() == 255
    frac_ink = images.float().mean() / 255
    assert 0.03 < frac_ink < 0.3  # strokes are 1, background 0: ink covers a minority of each image


def test_vinyals_and_maml_split_sizes(data_root, cache_dir):
    v = omniglot_splits(data_root / "omniglot", "vinyals", 28, cache_dir)
    assert {k: s.num_classes for k, s in v.items()} == {"train": 4112, "val": 688, "test": 1692}
    chars = {k: {n.rsplit("/", 1)[0] for n in s.names} for k, s in v.items()}
    assert {k: len(c) for k, c in chars.items()} == {"train": 1028, "val": 172, "test": 423}
    assert not (chars["train"] & chars["test"]) and not (chars["train"] & chars["val"])
    m = omniglot_splits(data_root / "omniglot", "maml", 28, cache_dir)
    assert {k: s.num_classes for k, s in m.items()} == {"train": 1100, "val": 100, "test": 423}
    assert not (set(m["train"].names) & set(m["test"].names))
    # the rot090 class is the rot000 class turned by 90 degrees
    i0, i90 = v["train"].names.index("Angelic/character01/rot000"), v["train"].names.index("Angelic/character01/rot090")
    a = v["train"].images[i0 * 20 : i0 * 20 + 20]
    b = v["train"].images[i90 * 20 : i90 * 20 + 20]
    assert torch.equal(torch.rot90(a, 1, dims=(-2, -1)), b)


def test_sampler_determinism_shapes_and_label_consistency(data_root, cache_dir):
    split = omniglot_splits(data_root / "omniglot", "vinyals", 28, cache_dir)["test"]
    sampler = EpisodeSampler(split, ways=5, shots=2, queries=3)
    xs, ys, xq, yq = next(sampler.batches(4, seed=7))
    assert xs.shape == (4, 10, 1, 28, 28) and xq.shape == (4, 15, 1, 28, 28)
    assert xs.min() >= 0 and xs.max() <= 1 and xs.dtype == torch.float32
    assert torch.equal(ys[0], torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4]))
    again, other = next(sampler.batches(4, seed=7)), next(sampler.batches(4, seed=8))
    assert torch.equal(again[0], xs) and torch.equal(again[2], xq) and not torch.equal(other[0], xs)
    # every image of one label (support and query) comes from one class of the split
    owner: dict[bytes, set[int]] = {}
    for c in range(split.num_classes):
        for img in split.images[c * 20 : c * 20 + 20]:
            owner.setdefault(img.numpy().tobytes(), set()).add(c)
    for t in range(4):
        for label in range(5):
            imgs = torch.cat([xs[t][ys[t] == label], xq[t][yq[t] == label]])
            sets = [owner[(im * 255).round().to(torch.uint8).numpy().tobytes()] for im in imgs]
            assert set.intersection(*sets), (t, label)
        # the 5 labels are 5 different classes
        firsts = [
            min(owner[(xs[t][ys[t] == lb][0] * 255).round().to(torch.uint8).numpy().tobytes()]) for lb in range(5)
        ]
        assert len(set(firsts)) == 5


def test_bad_ways_and_shots_fail_at_startup(data_root, cache_dir):
    splits = load_splits("omniglot", data_root, "maml", 28, cache_dir)
    with pytest.raises(ValueError, match="ways=200 exceeds the 100 classes of the val split"):
        FewShot(splits, ways=200, shots=1, queries=1)
    with pytest.raises(ValueError, match="shots \\+ queries = 5 \\+ 16 = 21 exceeds the 20 images"):
        FewShot(splits, ways=5, shots=5, queries=16)


@pytest.mark.slow
def test_omniglot_5way_1shot_smoke_training_beats_chance(data_root, cache_dir):
    torch.manual_seed(0)
    fs = FewShot(load_splits("omniglot", data_root, "vinyals", 28, cache_dir), ways=5, shots=1, queries=5)
    p = get_preset("tuv")
    learner = MetaLearner.from_preset(conv4(5, 1, 32, 28, "stride", p.use_T, p.use_V), p, cross_entropy, 0.4, 1)
    losses = meta_train(learner, fs.batches("train", 4, seed=0), steps=150, progress=False)
    acc, ci = evaluate(learner, fs.batches("test", 4, seed=1), tasks=100, steps=3, metric=accuracy, progress=False)
    print(f"\nomniglot 5w1s tuv, 150 meta-steps: test accuracy {acc:.3f} ± {ci:.3f}")
    print(f"meta-loss {losses[0]:.2f} -> {losses[-1]:.2f}")
    assert acc - ci > 0.4  # chance is 0.2


def test_vinyals_bad_line_names_file_and_line(data_root, tmp_path, cache_dir):
    root = tmp_path / "omniglot"
    (root / "splits" / "vinyals").mkdir(parents=True)
    for part in ("images_background.zip", "images_evaluation.zip"):
        (root / part).symlink_to(data_root / "omniglot" / part)
    for split in ("train", "val", "test"):
        (root / "splits" / "vinyals" / f"{split}.txt").write_text("Angelic/character01/rot000\n")
    (root / "splits" / "vinyals" / "val.txt").write_text("Angelic/character01/rot000\n\nAngelic/character01/rot045\n")
    with pytest.raises(ValueError, match="val.txt:3: 'Angelic/character01/rot045' names no Omniglot"):
        omniglot_splits(root, "vinyals", 28, cache_dir)
