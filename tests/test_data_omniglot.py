"""Real Omniglot (data-marked: read from ../shared/data or METATUV_DATA_ROOT; run in CI)."""

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from metatuv.build import TEST_SEED_OFFSET, build_learner
from metatuv.checkpoint import load_checkpoint
from metatuv.data import EpisodeSampler, FewShot, load_splits
from metatuv.data.omniglot import BACKGROUND_VAL_ALPHABETS, load_omniglot, omniglot_splits, preprocess
from metatuv.meta import MetaLearner, accuracy, cross_entropy, evaluate, get_preset, meta_train
from metatuv.nn import conv4
from metatuv.runstate import CHECKPOINT
from metatuv.train import CONF_DIR, run

pytestmark = pytest.mark.data
BIN = Path(sys.executable).parent


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


def _alphabets(part: Path) -> set[str]:
    with zipfile.ZipFile(part) as z:
        return {n.split("/")[1] for n in z.namelist() if n.endswith(".png")}


def test_background_protocol_sizes_and_alphabets(data_root, cache_dir):
    s = omniglot_splits(data_root / "omniglot", "background", 28, cache_dir)
    assert {k: v.num_classes for k, v in s.items()} == {"train": 804, "val": 160, "test": 659}
    background = _alphabets(data_root / "omniglot" / "images_background.zip")
    evaluation = _alphabets(data_root / "omniglot" / "images_evaluation.zip")
    alph = {k: {n.split("/")[0] for n in v.names} for k, v in s.items()}
    assert alph["val"] == set(BACKGROUND_VAL_ALPHABETS) and len(alph["train"]) == 25
    assert alph["train"] | alph["val"] == background and not alph["train"] & alph["val"]
    assert alph["test"] == evaluation and len(evaluation) == 20


def test_which_protocols_train_on_evaluation_alphabets(data_root, cache_dir):
    """The README's table: evaluation-alphabet characters in each protocol's train / val / test split."""
    evaluation = _alphabets(data_root / "omniglot" / "images_evaluation.zip")
    counts = {}
    for protocol in ("vinyals", "maml", "background"):
        s = omniglot_splits(data_root / "omniglot", protocol, 28, cache_dir)
        chars = {k: {n.rsplit("/", 1)[0] if protocol == "vinyals" else n for n in v.names} for k, v in s.items()}
        counts[protocol] = {k: (sum(c.split("/")[0] in evaluation for c in v), len(v)) for k, v in chars.items()}
    assert counts == {
        "vinyals": {"train": (236, 1028), "val": (0, 172), "test": (423, 423)},
        "maml": {"train": (430, 1100), "val": (49, 100), "test": (180, 423)},
        "background": {"train": (0, 804), "val": (0, 160), "test": (659, 659)},
    }


def test_preprocess_and_content_cache_on_the_real_zips(data_root, cache_dir, tmp_path, capsys):
    images, names = load_omniglot(data_root / "omniglot", 28, cache_dir)
    with zipfile.ZipFile(data_root / "omniglot" / "images_evaluation.zip") as z:
        data = z.read("images_evaluation/Tengwar/character05/1535_07.png")
    assert torch.equal(preprocess(data, 28, torch.uint8), images[names.index("Tengwar/character05"), 6])
    other = tmp_path / "elsewhere" / "omniglot"  # a second data root over the same zips
    other.mkdir(parents=True)
    for part in ("images_background.zip", "images_evaluation.zip"):
        (other / part).symlink_to(data_root / "omniglot" / part)
    capsys.readouterr()
    again, _ = load_omniglot(other, 28, cache_dir)
    assert "decoded" not in capsys.readouterr().out and torch.equal(again, images)
    assert len(list(Path(cache_dir).glob("omniglot-28-*.pt"))) == 1


@pytest.mark.slow
def test_background_run_scored_on_episode_folders_from_evaluation_alphabets(data_root, cache_dir, tmp_path):
    """Done-when of issue 18: a short protocol=background run, then metatuv-eval RUN --episodes DIR on folders built
    here from evaluation-alphabet PNGs, checked against evaluate() on the loader's own tensors of the same images."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            [
                "benchmark=omniglot",
                "benchmark.protocol=background",
                "benchmark.arch.hidden=16",
                "debug=default",
                "outer.steps=20",
                "outer.meta_batch=4",
                f"paths.data_root={data_root}",
                f"paths.cache_dir={cache_dir}",
            ],
        )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run(cfg, run_dir)
    splits = omniglot_splits(data_root / "omniglot", "background", 28, cache_dir)
    seen = set(splits["train"].names) | set(splits["val"].names)

    # 4 episodes, 5-way 1-shot 3-query, from evaluation-alphabet characters (the original PNG bytes)
    rng = np.random.default_rng(18)
    with zipfile.ZipFile(data_root / "omniglot" / "images_evaluation.zip") as z:
        members = sorted(n for n in z.namelist() if n.endswith(".png"))
        by_char: dict[str, list[str]] = {}
        for n in members:
            by_char.setdefault(n.split("/", 1)[1].rsplit("/", 1)[0], []).append(n)
        chars = sorted(by_char)
        episodes, eps_dir = [], tmp_path / "my episodes"
        for e in range(4):
            picked = [chars[i] for i in rng.choice(len(chars), 5, replace=False)]
            assert not set(picked) & seen and set(picked) <= set(splits["test"].names)  # held out
            classes = sorted(c.replace("/", "__") for c in picked)  # folder name = label; sorted = label order
            episode = []
            for c in classes:
                drawers = rng.choice(20, 4, replace=False)
                files = [by_char[c.replace("__", "/")][d] for d in drawers]
                for part, chosen in (("support", files[:1]), ("query", files[1:])):
                    folder = eps_dir / f"ep{e}" / part / c
                    folder.mkdir(parents=True)
                    for f in chosen:
                        (folder / f.rsplit("/", 1)[1]).write_bytes(z.read(f))
                episode.append((c.replace("__", "/"), [int(d) for d in drawers]))
            episodes.append(episode)

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = subprocess.run(
        [str(BIN / "metatuv-eval"), str(run_dir), "--episodes", str(eps_dir), "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "accuracy over the 4 episodes" in out.stdout
    r = json.loads(next(run_dir.glob("eval-episodes-my_episodes-*-3steps.json")).read_text())
    accs = [e["accuracy"] for e in r["per_episode"]]
    assert r["episodes"] == len(accs) == 4 and [e["episode"] for e in r["per_episode"]] == ["ep0", "ep1", "ep2", "ep3"]
    assert all(e["support"] == 5 and e["query"] == 15 for e in r["per_episode"])
    assert 0 <= r["mean"] <= 1 and r["mean"] == pytest.approx(float(np.mean(accs)), abs=1e-12)
    assert f"{100 * r['mean']:.4f}% ± {100 * r['ci95']:.4f}%" in out.stdout
    print(
        f"\nbackground run, 20 meta-steps: {r['mean']:.3f} ± {r['ci95']:.3f} on 4 evaluation-alphabet episodes {accs}"
    )

    # reference: the loader's tensors of the same drawings, the learner rebuilt with its data, evaluate() in process
    images, names = load_omniglot(data_root / "omniglot", 28, cache_dir)
    state, _ = load_checkpoint(run_dir / CHECKPOINT)
    saved = OmegaConf.create(state["config"])
    _, _, learner = build_learner(saved)
    learner.load_state_dict(state["learner"])
    batches = []
    for episode in episodes:
        xs = torch.stack([images[names.index(c), d[0]] for c, d in episode]).float() / 255
        xq = torch.stack([images[names.index(c), i] for c, d in episode for i in d[1:]]).float() / 255
        ys, yq = torch.arange(5), torch.arange(5).repeat_interleave(3)
        batches.append((xs[None], ys[None], xq[None], yq[None]))
    mean, ci, per = evaluate(
        learner, iter(batches), 4, saved.inner.test_steps, accuracy, False, saved.seed + TEST_SEED_OFFSET, True
    )
    assert per.tolist() == pytest.approx(accs, abs=1e-6)
    assert mean == pytest.approx(r["mean"], abs=1e-6) and ci == pytest.approx(r["ci95"], abs=1e-6)
