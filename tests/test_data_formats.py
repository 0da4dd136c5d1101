"""Loaders on small fake datasets written in the exact on-disk formats, the Taskset adapter, bad input."""

import csv
import io
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from metatuv.data import ClassImages, EpisodeSampler, FewShot, Polynomial, load_splits, taskset_batches
from metatuv.data.imagenet_like import l2l_splits, load_restricted_pickle, mini_imagenet_splits
from metatuv.inner.backends import _import_learn2learn

SPLITS = ("train", "val", "test")


def png_bytes(rng, size, mode="RGB"):
    arr = rng.integers(0, 256, (size, size, 3) if mode == "RGB" else (size, size), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_mini_csv(root, classes=3, per_class=6, size=100):  # noqa: D103
    """The Ravi & Larochelle layout: <split>.csv 'filename,label' (as ../shared/data/mini-imagenet-splits) + images/."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    for s, split in enumerate(SPLITS):
        with (root / f"{split}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["filename", "label"])
            for c in range(classes):
                wnid = f"n0{s}{c:07d}"
                for i in range(per_class):
                    name = f"{wnid}{i + 1:08d}.jpg"
                    arr = rng.integers(0, 256, (size, size + 10, 3), dtype=np.uint8)
                    Image.fromarray(arr).save(root / "images" / name, quality=90)
                    w.writerow([name, wnid])


def test_real_split_csv_format_matches_the_fake(data_root):
    head = (data_root / "mini-imagenet-splits" / "train.csv").read_text().splitlines()[:2]
    assert head[0] == "filename,label" and head[1] == "n0153282900000005.jpg,n01532829"


def test_mini_imagenet_csv_layout(tmp_path):
    write_mini_csv(tmp_path / "mini-imagenet")
    splits = load_splits("mini-imagenet", tmp_path, cache_dir=tmp_path / "cache")
    for s in SPLITS:
        assert splits[s].images.shape == (18, 3, 84, 84) and splits[s].counts.tolist() == [6, 6, 6]
    assert splits["train"].names[0] == "n000000000"
    fs = FewShot(splits, ways=3, shots=2, queries=3)
    xs, ys, xq, yq = next(fs.batches("train", 2, seed=0))
    assert xs.shape == (2, 6, 3, 84, 84) and yq.shape == (2, 9)
    again = load_splits("mini-imagenet", tmp_path, cache_dir=tmp_path / "cache")  # from the cache
    assert torch.equal(again["val"].images, splits["val"].images)


def test_mini_imagenet_missing_image_names_the_file(tmp_path):
    write_mini_csv(tmp_path / "mini-imagenet")
    victim = sorted((tmp_path / "mini-imagenet" / "images").iterdir())[3]
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=victim.name):
        mini_imagenet_splits(tmp_path / "mini-imagenet", cache_dir=tmp_path / "cache")


def test_unreadable_image_names_the_file(tmp_path):
    write_mini_csv(tmp_path / "mini-imagenet")
    victim = sorted((tmp_path / "mini-imagenet" / "images").iterdir())[5]
    victim.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=f"cannot read image .*{victim.name}"):
        mini_imagenet_splits(tmp_path / "mini-imagenet", cache_dir=tmp_path / "cache")


def test_mini_imagenet_learn2learn_pickle(tmp_path):
    root = tmp_path / "mini-imagenet"
    root.mkdir()
    rng = np.random.default_rng(1)
    for mode in ("train", "validation", "test"):
        data = rng.integers(0, 256, (12, 84, 84, 3), dtype=np.uint8)
        order = rng.permutation(12)  # rows of a class need not be contiguous in the pickle
        class_dict = {f"{mode}_a": order[:5].tolist(), f"{mode}_b": order[5:].tolist()}
        with (root / f"mini-imagenet-cache-{mode}.pkl").open("wb") as f:
            pickle.dump({"image_data": data, "class_dict": class_dict}, f)
    splits = mini_imagenet_splits(root, cache_dir=tmp_path / "cache")
    assert splits["val"].counts.tolist() == [5, 7] and splits["val"].names == ["validation_a", "validation_b"]
    row = int(min(order[:5]))  # classes in class_dict order, rows within a class ascending
    first = torch.from_numpy(data[row]).permute(2, 0, 1)
    assert torch.equal(splits["test"].images[0], first)
    # learn2learn reads the same file to the same images and labels
    l2l = _import_learn2learn()
    ds = l2l.vision.datasets.MiniImagenet(str(root), mode="test")
    assert torch.equal(ds[row][0].to(torch.uint8), first)


def test_tiered_imagenet_through_learn2learn(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "tiered-imagenet"
    folder.mkdir()
    for split in SPLITS:
        labels = [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
        with (folder / f"{split}_images_png.pkl").open("wb") as f:
            pickle.dump([png_bytes(rng, 84) for _ in labels], f)
        with (folder / f"{split}_labels.pkl").open("wb") as f:
            pickle.dump({"label_specific": np.array(labels), "label_general": np.zeros(10)}, f)
    splits = l2l_splits("tiered-imagenet", tmp_path, cache_dir=tmp_path / "cache")
    assert splits["train"].counts.tolist() == [3, 4, 3] and splits["train"].images.shape == (10, 3, 84, 84)
    xs, *_ = EpisodeSampler(splits["test"], ways=3, shots=1, queries=2).sample(2, torch.Generator().manual_seed(0))
    assert xs.shape == (2, 3, 3, 84, 84)


def test_fc100_through_learn2learn(tmp_path):
    rng = np.random.default_rng(3)
    for split in SPLITS:
        with (tmp_path / f"FC100_{split}.pickle").open("wb") as f:
            pickle.dump(
                {"data": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), "labels": [5, 5, 5, 5, 9, 9, 9, 9]}, f
            )
    splits = load_splits("fc100", tmp_path, cache_dir=tmp_path / "cache")
    assert splits["val"].counts.tolist() == [4, 4] and splits["val"].images.shape == (8, 3, 32, 32)


def test_cifar_fs_through_learn2learn(tmp_path):
    rng = np.random.default_rng(4)
    base = tmp_path / "cifarfs" / "cifar100"
    (base / "splits" / "bertinetto").mkdir(parents=True)
    for s, split in enumerate(SPLITS):
        names = [f"class_{s}_{c}" for c in range(2)]
        (base / "splits" / "bertinetto" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for name in names:
            (base / "data" / name).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                    base / "data" / name / f"{i}.png"
                )
    splits = load_splits("cifar-fs", tmp_path, cache_dir=tmp_path / "cache")
    assert splits["test"].counts.tolist() == [3, 3] and splits["test"].images.shape == (6, 3, 32, 32)


def test_learn2learn_taskset_adapter():
    l2l = _import_learn2learn()
    x = torch.arange(10 * 6, dtype=torch.float32).view(60, 1).repeat(1, 4)
    y = torch.arange(10).repeat_interleave(6)
    dataset = l2l.data.MetaDataset(torch.utils.data.TensorDataset(x, y))
    transforms = [
        l2l.data.transforms.NWays(dataset, 3),
        l2l.data.transforms.KShots(dataset, 2 + 3),
        l2l.data.transforms.LoadData(dataset),
        l2l.data.transforms.RemapLabels(dataset),
    ]
    taskset = l2l.data.Taskset(dataset, transforms, num_tasks=50)
    xs, ys, xq, yq = next(taskset_batches(taskset, tasks=4, ways=3, shots=2, queries=3))
    assert xs.shape == (4, 6, 4) and ys.shape == (4, 6) and xq.shape == (4, 9, 4) and yq.shape == (4, 9)
    for t in range(4):
        for c in range(3):  # support and query of one label come from one original class (x // 6)
            orig = torch.cat([xs[t][ys[t] == c][:, 0], xq[t][yq[t] == c][:, 0]]) // 6
            assert len(orig.unique()) == 1
    with pytest.raises(ValueError, match="fewer than shots \\+ queries = 6"):
        next(taskset_batches(taskset, tasks=1, ways=3, shots=3, queries=3))


def test_missing_data_root_and_incomplete_omniglot(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"data root {tmp_path / 'nope'} does not exist"):
        load_splits("omniglot", tmp_path / "nope")
    (tmp_path / "omniglot").mkdir()
    (tmp_path / "omniglot" / "images_background.zip").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="images_evaluation.zip .*brendenlake/omniglot"):
        load_splits("omniglot", tmp_path)


def fake_omniglot(tmp_path, broken: bool) -> None:
    """Both official zips with one character: one good drawing (and one corrupt one if ``broken``)."""
    root = tmp_path / "omniglot"
    root.mkdir()
    rng = np.random.default_rng(0)
    for part in ("images_background", "images_evaluation"):
        with zipfile.ZipFile(root / f"{part}.zip", "w") as z:
            z.writestr(f"{part}/Alpha/character01/0001_01.png", png_bytes(rng, 105, "L"))
            if broken:
                z.writestr(f"{part}/Alpha/character01/0001_02.png", b"\x89PNG broken")


def test_unreadable_omniglot_png_names_the_file(tmp_path):
    fake_omniglot(tmp_path, broken=True)
    with pytest.raises(ValueError, match="cannot read image .*images_background.zip:Alpha/character01/0001_02.png"):
        load_splits("omniglot", tmp_path, cache_dir=tmp_path / "cache")


def test_incomplete_omniglot_counts_fail(tmp_path):
    fake_omniglot(tmp_path, broken=False)
    with pytest.raises(ValueError, match="incomplete: 1 characters \\(expected 964\\)"):
        load_splits("omniglot", tmp_path, cache_dir=tmp_path / "cache")


def test_sampler_ragged_classes_never_pick_padding():
    counts = torch.tensor([3, 7, 4])
    images = torch.cat([torch.full((n, 1, 2, 2), c, dtype=torch.uint8) for c, n in enumerate(counts.tolist())])
    sampler = EpisodeSampler(ClassImages(images, counts), ways=3, shots=1, queries=2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        xs, ys, xq, yq = sampler.sample(5, gen)
        for t in range(5):
            for c in range(3):  # all images of one label carry the same class id
                vals = torch.cat([xs[t][ys[t] == c], xq[t][yq[t] == c]]).mul(255).round().unique()
                assert len(vals) == 1
    rot = EpisodeSampler(ClassImages(images, counts), ways=3, shots=1, queries=2, rotate=True)
    assert rot.sample(2, gen)[0].shape == (2, 3, 1, 2, 2)


def test_polynomial_tasks():
    gen = torch.Generator().manual_seed(0)
    xs, ys, xq, yq = Polynomial(order=0, shots=5, queries=4).sample(3, gen)
    assert torch.allclose(ys, ys[:, :1].expand_as(ys)) and torch.allclose(yq[:, 0], ys[:, 0])
    assert ys.abs().max() <= 1 and xs.abs().max() <= 2
    xs, ys, xq, yq = Polynomial(order=2, shots=30, queries=4).sample(2, gen)
    for t in range(2):  # a quadratic fits the support exactly, with |c_i| <= 1/2^i
        X = torch.cat([xs[t] ** 0, xs[t], xs[t] ** 2], 1).double()
        c = torch.linalg.lstsq(X, ys[t].double()).solution.flatten()
        assert torch.allclose(X @ c, ys[t].double().flatten(), atol=1e-5)
        assert (c.abs() <= torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64) + 1e-5).all()


def test_mini_imagenet_pickle_rows_must_partition(tmp_path):
    root = tmp_path / "mini-imagenet"
    root.mkdir()
    data = np.zeros((4, 84, 84, 3), dtype=np.uint8)
    for mode in ("train", "validation", "test"):
        with (root / f"mini-imagenet-cache-{mode}.pkl").open("wb") as f:
            pickle.dump({"image_data": data, "class_dict": {"a": [0, 1], "b": [1, 2]}}, f)
    with pytest.raises(ValueError, match="exactly one class; it lists 4 rows \\(3 distinct\\)"):
        mini_imagenet_splits(root, cache_dir=tmp_path / "cache")


def test_image_size_mismatch_and_unwritable_cache(tmp_path):
    rng = np.random.default_rng(3)
    for split in SPLITS:
        with (tmp_path / f"FC100_{split}.pickle").open("wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), "labels": [1, 1, 2, 2]}, f)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="benchmark.image_size=84, but fc100 is stored at 32×32"):
        load_splits("fc100", tmp_path, image_size=84, cache_dir=blocker)  # the cache cannot be written: not fatal
    assert load_splits("fc100", tmp_path, image_size=32, cache_dir=blocker)["train"].num_classes == 2


def test_cache_sees_changes_inside_image_folders(tmp_path):
    write_mini_csv(tmp_path / "mini-imagenet", classes=2, per_class=3)
    first = mini_imagenet_splits(tmp_path / "mini-imagenet", cache_dir=tmp_path / "cache")["train"].images.clone()
    victim = sorted((tmp_path / "mini-imagenet" / "images").iterdir())[0]  # the first image of train's class 0
    Image.fromarray(np.zeros((100, 110, 3), dtype=np.uint8)).save(victim)
    again = mini_imagenet_splits(tmp_path / "mini-imagenet", cache_dir=tmp_path / "cache")["train"].images
    assert not torch.equal(first, again) and again[0].sum() == 0


def test_overlapping_mini_imagenet_split_lists_are_refused(tmp_path):
    root = tmp_path / "mini-imagenet"
    write_mini_csv(root, classes=3, per_class=3, size=20)
    (root / "test.csv").write_text((root / "train.csv").read_text())  # test = train
    with pytest.raises(ValueError) as err:
        load_splits("mini-imagenet", tmp_path, cache_dir=tmp_path / "cache")
    assert str(err.value) == (
        f"mini-imagenet under {tmp_path}: the train and test splits share 3 class(es) (e.g. 'n000000000'); a "
        "meta-test on training classes is not a meta-test: fix the split lists so that train/val/test are disjoint."
    )


def test_the_same_class_under_another_name_is_found_by_content(tmp_path):
    rng = np.random.default_rng(5)
    data = {s: rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8) for s in SPLITS}
    data["val"][3:] = data["train"][:3]  # val's second class is train's first, images and all
    for split in SPLITS:
        with (tmp_path / f"FC100_{split}.pickle").open("wb") as f:
            pickle.dump({"data": data[split], "labels": [7, 7, 7, 9, 9, 9]}, f)  # learn2learn: labels per split
    with pytest.raises(ValueError, match=r"the train and val splits share 1 class\(es\) \(e.g. '9'\)"):
        load_splits("fc100", tmp_path, cache_dir=tmp_path / "cache")
    data["val"][3:] = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)  # same label numbers, other images: fine
    with (tmp_path / "FC100_val.pickle").open("wb") as f:
        pickle.dump({"data": data["val"], "labels": [7, 7, 7, 9, 9, 9]}, f)
    assert load_splits("fc100", tmp_path, cache_dir=tmp_path / "cache2")["val"].num_classes == 2


def fake_vinyals(tmp_path, monkeypatch, lists: dict[str, list[str]]):
    """Omniglot's vinyals route on a fake decoded set of 6 characters (the zips' decoding is tested above)."""
    import metatuv.data.omniglot as omniglot

    names = [f"Alpha/character{i:02d}" for i in range(1, 7)]
    images = torch.randint(0, 256, (6, 20, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(omniglot, "load_omniglot", lambda root, size, cache: (images, names))
    folder = tmp_path / "omniglot" / "splits" / "vinyals"
    folder.mkdir(parents=True)
    for split, lines in lists.items():
        (folder / f"{split}.txt").write_text("".join(f"{line}\n" for line in lines))


def test_overlapping_omniglot_split_lists_are_refused(tmp_path, monkeypatch):
    train = ["Alpha/character01/rot000", "Alpha/character02/rot000", "Alpha/character03/rot090"]
    lists = {"train": train, "val": ["Alpha/character04/rot000"], "test": [*train[1:], "Alpha/character05/rot000"]}
    fake_vinyals(tmp_path, monkeypatch, lists)
    with pytest.raises(
        ValueError, match=r"the train and test splits share 2 class\(es\) \(e.g. 'Alpha/character02/rot000'"
    ):
        load_splits("omniglot", tmp_path)
    lists["test"] = ["Alpha/character05/rot000", "Alpha/character06/rot000"]  # disjoint: loads
    (tmp_path / "omniglot" / "splits" / "vinyals" / "test.txt").write_text("\n".join(lists["test"]))
    assert [s.num_classes for s in load_splits("omniglot", tmp_path).values()] == [3, 1, 2]


def test_empty_split_file_is_one_line(tmp_path, monkeypatch):
    fake_vinyals(tmp_path, monkeypatch, {"train": ["Alpha/character01/rot000"], "val": [], "test": ["\n"]})
    path = tmp_path / "omniglot" / "splits" / "vinyals" / "val.txt"
    with pytest.raises(ValueError) as err:
        load_splits("omniglot", tmp_path)
    assert str(err.value) == f"{path} is empty; list the val classes, one Alphabet/characterNN/rotDDD a line."


def test_damaged_omniglot_zip_names_the_file(tmp_path):
    fake_omniglot(tmp_path, broken=False)
    archive = tmp_path / "omniglot" / "images_background.zip"
    raw = archive.read_bytes()
    with zipfile.ZipFile(archive) as z:  # flip one byte inside the (stored) PNG: the CRC no longer matches
        info = z.infolist()[0]
        assert info.compress_type == zipfile.ZIP_STORED
        at = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size // 2
    archive.write_bytes(raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1 :])
    with pytest.raises(ValueError) as err:
        load_splits("omniglot", tmp_path, cache_dir=tmp_path / "cache")
    message = str(err.value)
    assert message.startswith(f"{archive} is damaged at images_background/Alpha/character01/0001_01.png (Bad CRC-32")
    assert message.endswith(
        "download it again: the official zips from github.com/brendenlake/omniglot "
        "(python/images_background.zip, images_evaluation.zip)."
    )
    archive.write_bytes(raw[: len(raw) // 2])  # truncated
    with pytest.raises(ValueError, match=rf"^{archive} is damaged \(File is not a zip file\); download it again"):
        load_splits("omniglot", tmp_path, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_restricted_unpickler_reads_plain_data(tmp_path, protocol):
    blob = {"image_data": np.arange(24, dtype=np.uint8).reshape(2, 3, 4), "class_dict": {"a": [0], "b": [np.int64(1)]}}
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps(blob, protocol=protocol))
    got = load_restricted_pickle(path)
    assert (got["image_data"] == blob["image_data"]).all() and got["class_dict"] == {"a": [0], "b": [1]}


class _Runs:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_mini_imagenet_pickle_is_refused_and_never_run(tmp_path):
    root = tmp_path / "mini-imagenet"
    root.mkdir()
    marker = tmp_path / "ran"
    data = np.zeros((2, 84, 84, 3), dtype=np.uint8)
    for mode in ("train", "validation", "test"):
        with (root / f"mini-imagenet-cache-{mode}.pkl").open("wb") as f:
            pickle.dump({"image_data": data, "class_dict": {"a": [0], "b": [1]}, "x": _Runs(marker)}, f)
    with pytest.raises(ValueError, match=r"refused, not a plain-data pickle \(refused global posix.system") as err:
        mini_imagenet_splits(root, cache_dir=tmp_path / "cache")
    assert "\n" not in str(err.value) and not marker.exists()
    with (root / "mini-imagenet-cache-train.pkl").open("rb") as f:
        pickle.load(f)  # the control: plain pickle does run it
    assert marker.exists()


def test_learn2learn_pickles_pass_the_restricted_unpickler_first(tmp_path):
    """FC100 is read by learn2learn with plain pickle: a crafted file is refused before learn2learn sees it."""
    marker = tmp_path / "ran"
    for split in SPLITS:
        with (tmp_path / f"FC100_{split}.pickle").open("wb") as f:
            pickle.dump({"data": np.zeros((4, 32, 32, 3), dtype=np.uint8), "labels": _Runs(marker)}, f)
    with pytest.raises(ValueError, match=r"FC100_train.pickle: refused, not a plain-data pickle"):
        l2l_splits("fc100", tmp_path, cache_dir=tmp_path / "cache")
    assert not marker.exists()
