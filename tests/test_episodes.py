"""Omniglot's background protocol, user split lists, the content-keyed cache and the public preprocessing on tiny
fake zips (the counts patched down); episode folders and metatuv-eval --episodes without any dataset."""

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from metatuv.build import build_learner, run_config
from metatuv.checkpoint import save_checkpoint
from metatuv.data import load_splits, read_episodes
from metatuv.data import omniglot as og
from metatuv.evaluate import evaluate_episodes
from metatuv.evaluate import main as eval_main
from metatuv.meta import accuracy, evaluate
from metatuv.runstate import CHECKPOINT
from metatuv.train import CONF_DIR

ALPHABETS = {"images_background": ("Latin", "Sanskrit"), "images_evaluation": ("Angelic",)}
CHARS, DRAWINGS = 3, 4  # per alphabet, per character


def drawing(rng, size=105) -> bytes:
    """A random 1-bit Omniglot-like PNG: a few dark strokes (False) on white (True)."""
    arr = np.ones((size, size), dtype=bool)
    for _ in range(3):
        r, c = rng.integers(10, size - 20, 2)
        arr[r : r + 12, c : c + 3] = False
    buf = io.BytesIO()
    Image.fromarray(arr).convert("1").save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """<tmp>/a/omniglot with both zips (2 + 1 alphabets, 3 characters each, 4 drawings); the loader's counts patched."""
    monkeypatch.setattr(og, "COUNTS", {part: len(a) * CHARS for part, a in ALPHABETS.items()})
    monkeypatch.setattr(og, "DRAWINGS", DRAWINGS)
    root = tmp_path / "a" / "omniglot"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for part, alphabets in ALPHABETS.items():
        with zipfile.ZipFile(root / f"{part}.zip", "w") as z:
            for a in alphabets:
                for c in range(1, CHARS + 1):
                    for d in range(1, DRAWINGS + 1):
                        z.writestr(f"{part}/{a}/character{c:02d}/{c:04d}_{d:02d}.png", drawing(rng))
    return root


def test_preprocess_is_what_the_loader_stores(fake, tmp_path):
    images, names = og.load_omniglot(fake, 28, tmp_path / "cache")
    with zipfile.ZipFile(fake / "images_evaluation.zip") as z:
        data = z.read("images_evaluation/Angelic/character02/0002_03.png")
    i = names.index("Angelic/character02")
    assert torch.equal(og.preprocess(data, 28, torch.uint8), images[i, 2])
    (tmp_path / "x.png").write_bytes(data)
    x = og.preprocess(tmp_path / "x.png")  # float for the network: the sampler's uint8 / 255
    assert x.dtype == torch.float32 and x.shape == (1, 28, 28)
    assert torch.equal(x, images[i, 2].float() / 255.0)
    assert torch.equal(og.preprocess(Image.open(tmp_path / "x.png"), 28, torch.uint8), images[i, 2])
    assert torch.equal(og.preprocess(str(tmp_path / "x.png"), 14, torch.uint8), og.preprocess(data, 14, torch.uint8))
    # strokes high: the dark pixels of the PNG become the large values
    raw = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
    assert (raw == 0).mean() < 0.5 and images[i, 2].float().mean() < 127
    (tmp_path / "junk.png").write_bytes(b"no png")
    with pytest.raises(ValueError, match="cannot read image .*junk.png"):
        og.preprocess(tmp_path / "junk.png")


def test_background_protocol_splits_by_alphabet(fake, tmp_path, monkeypatch):
    monkeypatch.setattr(og, "BACKGROUND_VAL_ALPHABETS", ("Sanskrit",))
    s = load_splits("omniglot", fake.parent, "background", 28, tmp_path / "cache")
    alphabets = {k: {n.split("/")[0] for n in v.names} for k, v in s.items()}
    assert alphabets == {"train": {"Latin"}, "val": {"Sanskrit"}, "test": {"Angelic"}}
    assert {k: v.num_classes for k, v in s.items()} == {"train": 3, "val": 3, "test": 3}
    assert all(int(v.counts.min()) == DRAWINGS for v in s.values())
    monkeypatch.setattr(og, "BACKGROUND_VAL_ALPHABETS", ("Angelic",))  # an evaluation alphabet: refused
    with pytest.raises(ValueError, match="validation alphabets \\['Angelic'\\] are not in images_background"):
        load_splits("omniglot", fake.parent, "background", 28, tmp_path / "cache")


def test_split_dir_reads_user_lists(fake, tmp_path):
    mine = tmp_path / "mysplit"
    mine.mkdir()
    lines = {
        "train": ["Latin/character01/rot000", "Latin/character01/rot090", "Sanskrit/character02/rot000"],
        "val": ["Latin/character03/rot000", "Sanskrit/character01/rot000"],
        "test": ["Angelic/character01/rot180", "Angelic/character02/rot000", "Angelic/character03/rot000"],
    }
    for k, v in lines.items():
        (mine / f"{k}.txt").write_text("\n".join(v) + "\n")
    s = load_splits("omniglot", fake.parent, "vinyals", 28, tmp_path / "cache", split_dir=mine)
    assert {k: v.names for k, v in s.items()} == lines
    images, names = og.load_omniglot(fake, 28, tmp_path / "cache")
    turned = torch.rot90(images[names.index("Angelic/character01")], 2, dims=(-2, -1))
    assert torch.equal(s["test"].images[:DRAWINGS], turned)
    with pytest.raises(ValueError, match="split_dir=.* is read only by protocol=vinyals"):
        load_splits("omniglot", fake.parent, "maml", 28, tmp_path / "cache", split_dir=mine)
    with pytest.raises(FileNotFoundError, match="split_dir=.*nope.* is not a folder"):
        load_splits("omniglot", fake.parent, "vinyals", 28, tmp_path / "cache", split_dir=tmp_path / "nope")
    (mine / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match="val.txt not found; benchmark.split_dir must hold"):
        load_splits("omniglot", fake.parent, "vinyals", 28, tmp_path / "cache", split_dir=mine)


def test_cache_is_keyed_by_content_not_path(fake, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    decoded = []
    real = og._decode_all
    monkeypatch.setattr(og, "_decode_all", lambda *a: decoded.append(a[0]) or real(*a))
    first, _ = og.load_omniglot(fake, 28, cache)
    other = tmp_path / "b" / "omniglot"  # a second root over the same bytes (copied: other path, other mtime)
    shutil.copytree(fake, other)
    again, _ = og.load_omniglot(other, 28, cache)
    assert len(decoded) == 1 and torch.equal(first, again)
    assert len(list(cache.glob("omniglot-28-*.pt"))) == 1
    # different content under a third root: its own entry, and the first stays valid (never overwritten)
    changed = tmp_path / "c" / "omniglot"
    shutil.copytree(fake, changed)
    with zipfile.ZipFile(changed / "images_evaluation.zip") as z:
        members = {n: z.read(n) for n in z.namelist()}
    victim = "images_evaluation/Angelic/character01/0001_01.png"
    members[victim] = drawing(np.random.default_rng(99))
    with zipfile.ZipFile(changed / "images_evaluation.zip", "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    third, names = og.load_omniglot(changed, 28, cache)
    assert len(decoded) == 2 and len(list(cache.glob("omniglot-28-*.pt"))) == 2
    assert not torch.equal(third, first)
    og.load_omniglot(fake, 28, cache)
    og.load_omniglot(changed, 28, cache)
    og.load_omniglot(fake, 14, cache)  # other preprocessing (size): another entry
    assert len(decoded) == 3 and len(list(cache.glob("omniglot-*.pt"))) == 3


# ---- episode folders ----------------------------------------------------------------------------------------------


def write_episode(root, name, classes, shots, queries, rng, query_classes=None):
    for part, n, cls in (("support", shots, classes), ("query", queries, query_classes or classes)):
        for c in cls:
            (root / name / part / c).mkdir(parents=True)
            for i in range(n):
                (root / name / part / c / f"{i}.png").write_bytes(drawing(rng))


def test_read_episodes_labels_and_order(tmp_path):
    rng = np.random.default_rng(1)
    write_episode(tmp_path, "ep2", ["zeta", "alpha", "mid"], 2, 3, rng)
    write_episode(tmp_path, "ep1", ["b", "a", "c"], 1, 1, rng)
    (tmp_path / "README.txt").write_text("how these were made")  # files beside the episode folders are ignored
    eps = read_episodes(tmp_path, lambda p: og.preprocess(p, 28), ways=3)
    assert [e.name for e in eps] == ["ep1", "ep2"]
    e = eps[1]
    assert e.classes == ["alpha", "mid", "zeta"]
    assert e.xs.shape == (6, 1, 28, 28) and e.xq.shape == (9, 1, 28, 28)
    assert e.ys.tolist() == [0, 0, 1, 1, 2, 2] and e.yq.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    want = og.preprocess(tmp_path / "ep2" / "query" / "mid" / "1.png")
    assert torch.equal(e.xq[4], want)
    xs, ys, xq, yq = e.batch
    assert xs.shape == (1, 6, 1, 28, 28) and yq.shape == (1, 9)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda r, g: write_episode(r, "e", ["a", "b"], 1, 1, g) or shutil.rmtree(r / "e" / "query"), "has no query/"),
        (lambda r, g: write_episode(r, "e", ["a", "b"], 1, 1, g, ["a", "c"]), "only in support: \\['b'\\]"),
        (lambda r, g: write_episode(r, "e", ["a", "b"], 1, 0, g), "query/a holds no images"),
        (lambda r, g: write_episode(r, "e", ["a", "b", "c"], 1, 1, g), "has 3 classes but the model was trained 2-way"),
        (
            lambda r, g: (r / "e" / "support").mkdir(parents=True) or (r / "e" / "query").mkdir(),
            "support holds no class",
        ),
        (lambda r, g: write_episode(r, ".", ["a", "b"], 1, 1, g), "holds support/ or query/ itself"),
        (lambda r, g: None, "holds no episode folders"),
        (
            lambda r, g: write_episode(r, "e", ["a", "b"], 1, 1, g) or (r / "e/support/a/notes.txt").write_text("x"),
            "notes.txt is not an image",
        ),
    ],
)
def test_malformed_episode_folders_fail_with_one_line(tmp_path, make, message):
    make(tmp_path, np.random.default_rng(0))
    with pytest.raises(ValueError, match=message) as e:
        read_episodes(tmp_path, lambda p: og.preprocess(p, 28), ways=2)
    assert "\n" not in str(e.value)


def omniglot_checkpoint(folder, *overrides):
    """A checkpoint of a fresh (un-trained) Omniglot learner, written without any Omniglot data."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            ["benchmark=omniglot", "benchmark.arch.hidden=8", "inner.test_steps=2", "logger=none", *overrides],
        )
    setup, _, learner = build_learner(cfg, load_data=False)
    assert setup.train is None and setup.test is None  # no streams: nothing was read
    folder.mkdir(parents=True)
    state = {"step": 7, "learner": learner.state_dict(), "config": run_config(cfg)}
    save_checkpoint(folder / CHECKPOINT, state)
    return cfg, learner


def test_metatuv_eval_episodes_without_data(tmp_path, capsys):
    cfg, learner = omniglot_checkpoint(tmp_path / "run", "paths.data_root=/nonexistent", "model=mtuv")
    rng = np.random.default_rng(2)
    for k in range(3):
        write_episode(tmp_path / "eps", f"episode{k}", [f"c{i}" for i in range(5)], 1, 2, rng)
    eval_main([str(tmp_path / "run"), "--episodes", str(tmp_path / "eps"), "--no-progress"])
    out = capsys.readouterr().out
    assert "accuracy over the 3 episodes" in out and "2 inner steps" in out
    r = json.loads(next((tmp_path / "run").glob("eval-episodes-eps-*-2steps.json")).read_text())
    assert r["episodes"] == 3 and [e["episode"] for e in r["per_episode"]] == ["episode0", "episode1", "episode2"]
    accs = [e["accuracy"] for e in r["per_episode"]]
    assert all(0 <= a <= 1 and abs(10 * a - round(10 * a)) < 1e-6 for a in accs)  # 10 queries per episode
    assert r["mean"] == pytest.approx(float(np.mean(accs)), abs=1e-12)
    # the same episodes as tensors through evaluate() in process, MT-net masks from the same seed
    eps = read_episodes(tmp_path / "eps", lambda p: og.preprocess(p, 28))
    seed = cfg.seed + 1_000_003
    mean, ci, per = evaluate(learner, iter([e.batch for e in eps]), 3, 2, accuracy, False, seed, per_task=True)
    assert per.tolist() == accs and mean == pytest.approx(r["mean"]) and ci == pytest.approx(r["ci95"])
    # --steps 0: the un-adapted network
    again = evaluate_episodes(tmp_path / "run", tmp_path / "eps", steps=0, progress=False)
    assert again["inner_steps"] == 0 and Path(again["written"]).name.endswith("-0steps.json")
    # another folder of the same name elsewhere gets its own file: nothing is overwritten
    shutil.copytree(tmp_path / "eps", tmp_path / "elsewhere" / "eps")
    other = evaluate_episodes(tmp_path / "run", tmp_path / "elsewhere" / "eps", progress=False)
    assert other["per_episode"] == r["per_episode"] and other["written"] != again["written"]
    assert len(list((tmp_path / "run").glob("eval-episodes-eps-*-2steps.json"))) == 2


def test_metatuv_eval_episodes_errors_are_one_line(tmp_path, capsys):
    omniglot_checkpoint(tmp_path / "run")
    rng = np.random.default_rng(3)
    write_episode(tmp_path / "three", "e1", ["a", "b", "c"], 1, 1, rng)
    write_episode(tmp_path / "three", "e2", ["a", "b", "c"], 1, 1, rng)
    with pytest.raises(SystemExit, match="^metatuv-eval: episodes: .*e1 has 3 classes but the model was trained 5-way"):
        eval_main([str(tmp_path / "run"), "--episodes", str(tmp_path / "three")])
    write_episode(tmp_path / "one", "e1", list("abcde"), 1, 1, rng)
    with pytest.raises(SystemExit, match="holds 1 episode folder; a 95% CI needs at least 2"):
        eval_main([str(tmp_path / "run"), "--episodes", str(tmp_path / "one")])
    with pytest.raises(SystemExit, match="is not a folder"):
        eval_main([str(tmp_path / "run"), "--episodes", str(tmp_path / "missing")])
    with pytest.raises(SystemExit):
        eval_main([str(tmp_path / "run"), "--episodes", str(tmp_path / "one"), "--split", "val"])
    assert "drop --split, --tasks and --data-root" in capsys.readouterr().err


def test_metatuv_eval_episodes_refuses_a_regression_run(tmp_path):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", ["logger=none"])  # sinusoid
    _, _, learner = build_learner(cfg, load_data=False)
    (tmp_path / "run").mkdir()
    state = {"step": 1, "learner": learner.state_dict(), "config": run_config(cfg)}
    save_checkpoint(tmp_path / "run" / CHECKPOINT, state)
    write_episode(tmp_path / "eps", "e1", ["a", "b"], 1, 1, np.random.default_rng(0))
    with pytest.raises(SystemExit, match="^metatuv-eval: --episodes scores image classification; .* is sinusoid"):
        eval_main([str(tmp_path / "run"), "--episodes", str(tmp_path / "eps")])


def test_evaluate_per_task_default_unchanged():
    from metatuv.meta import MetaLearner, get_preset, mse
    from metatuv.nn import mlp

    p = get_preset("tuv")
    learner = MetaLearner.from_preset(mlp([1, 8, 1], p.use_T, p.use_V), p, mse, 0.01, 1)
    from metatuv.data import Sinusoid

    def stream():
        return Sinusoid(5, 5).batches(4, 0)

    plain = evaluate(learner, stream(), 10, 2, mse, False, 0)
    mean, ci, per = evaluate(learner, stream(), 10, 2, mse, False, 0, per_task=True)
    assert len(plain) == 2 and (mean, ci) == plain and per.shape == (10,) and per.dtype == torch.float64
    assert mean == pytest.approx(per.mean().item()) and ci == pytest.approx(1.96 * per.std().item() / 10**0.5)
