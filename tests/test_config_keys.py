"""Every Hydra key that changes numbers reaches the code it changes (issue 22): each test composes the config,
builds through metatuv.train's own building code (build, build_learner, statistics_hook, run) and checks the
*effect* against a reference written here from torch alone — not the attribute. docs/mutation.md lists every key
of conf/ with the test that would fail if it were ignored. Tiny sinusoid networks, a few steps: seconds each."""

import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch.func import functional_call

from metatuv.build import STATS_SEED_OFFSET, TEST_SEED_OFFSET, build, build_learner, statistics_hook
from metatuv.data import Polynomial, Sinusoid
from metatuv.train import CONF_DIR, run

D = torch.float64
TINY = ["benchmark.arch.sizes=[1,6,1]", "progress=false", "logger=none"]


def cfg_of(*overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", [*TINY, *overrides])


def mse(pred, y):
    return ((pred - y) ** 2).mean()


def hand_adapt(model, params, fast, xs, ys, lr, steps, first_order=False, create_graph=True):
    """``steps`` plain SGD steps θ ← θ − lr·∇θ L_support on the parameters named in ``fast`` (torch.autograd only)."""
    params = dict(params)
    for _ in range(steps):
        loss = mse(functional_call(model, params, (xs,)), ys)
        grads = torch.autograd.grad(loss, [params[n] for n in fast], create_graph=create_graph and not first_order)
        params.update({n: params[n] - lr * g for n, g in zip(fast, grads, strict=True)})
    return params


def hand_meta_loss(model, params, fast, batch, lr, steps, first_order=False):
    xs, ys, xq, yq = batch
    losses = [
        mse(
            functional_call(model, hand_adapt(model, params, fast, xs[t], ys[t], lr, steps, first_order), (xq[t],)),
            yq[t],
        )
        for t in range(len(xs))
    ]
    return torch.stack(losses).mean()


def sinusoid_of(cfg):
    b = cfg.benchmark
    return Sinusoid(b.shots, b.queries, tuple(b.amplitude), tuple(b.phase), tuple(b.x_range))


def leaves(learner):
    return {n: p.detach().clone().requires_grad_() for n, p in learner.model.named_parameters()}


# --- inner.lr, inner.steps, inner.first_order (and preset fomaml) at meta-training ---------------------------------


@pytest.mark.parametrize(
    "preset,first_order,lr,steps",
    [
        ("maml", False, 0.05, 1),
        ("maml", False, 0.3, 2),
        ("maml", True, 0.3, 2),
        ("tuv", True, 0.1, 1),
        ("fomaml", False, 0.1, 1),
    ],
)
def test_inner_keys_reach_the_meta_gradient(preset, first_order, lr, steps):
    """The learner built from the config has the meta-loss and meta-gradient of ``steps`` hand-written SGD steps of
    size ``lr`` — first order (support gradients held constant) when ``inner.first_order=true`` or preset fomaml."""
    cfg = cfg_of(
        f"model={preset}",
        f"inner.first_order={str(first_order).lower()}",
        f"inner.lr={lr}",
        f"inner.steps={steps}",
        "outer.meta_batch=3",
    )
    setup, _, learner = build_learner(cfg)
    learner.double()
    batch = tuple(t.double() for t in next(setup.train))
    loss = learner.meta_loss(batch)
    loss.backward()
    got = {n: p.grad for n, p in learner.model.named_parameters()}

    model, fast = learner.model, [n for n, _ in learner.model.named_parameters() if n.endswith(("U", "bias"))]
    ref = {}
    for order in (True, False):
        params = leaves(learner)
        ref_loss = hand_meta_loss(model, params, fast, batch, lr, steps, first_order=order)
        ref[order] = dict(zip(params, torch.autograd.grad(ref_loss, list(params.values())), strict=True))
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-12)
    expect_first = first_order or preset == "fomaml"
    for n, g in got.items():
        assert torch.allclose(g, ref[expect_first][n], atol=1e-12, rtol=1e-9), n
    assert any(not torch.allclose(ref[True][n], ref[False][n], atol=1e-8) for n in got)  # the orders differ here


def test_mask_temperature_reaches_the_inner_rule():
    """model=mtnet with inner.mask_temperature=0.5: the mask gradient in the built learner's step is σ'/0.5."""
    from test_protocol import assert_mask_gradient

    cfg = cfg_of("model=mtnet", "benchmark.arch.sizes=[2,4,3]", "inner.mask_temperature=0.5", "inner.lr=0.3")
    _, _, learner = build_learner(cfg)
    assert_mask_gradient(learner.double(), tau=0.5, alpha=0.3)


# --- the evaluation a run reports: inner.test_steps, inner.lr, eval.tasks, eval.batch, seed -----------------------


def test_run_reports_the_hand_computed_evaluation(tmp_path):
    """outer.steps=0: the run's test score is the un-trained network adapted by hand on each test task's support
    set (inner.test_steps steps of inner.lr) and scored on its query set, over the first eval.tasks tasks of the
    test stream drawn eval.batch at a time from seed + TEST_SEED_OFFSET; mean and 1.96·s/√n by hand."""
    cfg = cfg_of(
        "model=maml",
        "seed=3",
        "outer.steps=0",
        "inner.steps=1",
        "inner.test_steps=2",
        "inner.lr=0.05",
        "eval.tasks=5",
        "eval.batch=3",
    )
    results = run(cfg, tmp_path)
    _, _, learner = build_learner(cfg)  # the same initialization (seeded)
    stream = sinusoid_of(cfg).batches(3, 3 + TEST_SEED_OFFSET)
    batches = [next(stream), next(stream)]
    tasks = [tuple(b[i] for b in batch) for batch in batches for i in range(3)][:5]
    model, params = learner.model, leaves(learner)
    scores, leaked = [], []
    for xs, ys, xq, yq in tasks:
        adapted = hand_adapt(model, params, list(params), xs, ys, 0.05, 2, create_graph=False)
        scores.append(mse(functional_call(model, adapted, (xq,)), yq).item())
        adapted = hand_adapt(model, params, list(params), xq, yq, 0.05, 2, create_graph=False)
        leaked.append(mse(functional_call(model, adapted, (xq,)), yq).item())
    mean = sum(scores) / 5
    ci = 1.96 * math.sqrt(sum((s - mean) ** 2 for s in scores) / 4) / math.sqrt(5)
    assert results["test"] == pytest.approx(mean, rel=1e-5)
    assert results["test_ci95"] == pytest.approx(ci, rel=1e-4)
    assert results["baseline"] == results["test"]  # nothing was meta-trained
    assert abs(sum(leaked) / 5 - mean) > 1e-3 * mean  # adapting on the query set would show


# --- outer.lr, outer.clip, outer.optimizer, outer.meta_batch, seed: one meta-step of a run ------------------------


def one_step(tmp_path, name, *overrides):
    cfg = cfg_of(
        "model=maml",
        "seed=2",
        "outer.steps=1",
        "outer.meta_batch=2",
        "outer.optimizer._target_=torch.optim.SGD",
        "eval.tasks=2",
        "eval.baseline=false",
        "inner.test_steps=0",
        *overrides,
    )
    (tmp_path / name).mkdir()
    run(cfg, tmp_path / name)
    after = torch.load(tmp_path / name / "model.pt", weights_only=True)
    _, _, learner = build_learner(cfg)
    before = learner.state_dict()
    return cfg, learner, torch.cat([(after[k] - before[k]).flatten() for k in before]).double()


def test_outer_keys_reach_the_meta_step(tmp_path):
    """SGD (outer.optimizer) with outer.lr = 0.5 moves the meta parameters by −0.5·g, g the meta-gradient on the first
    meta-batch (outer.meta_batch tasks of the stream seeded by ``seed``, drawn here from the benchmark itself);
    outer.clip = 1e-3 rescales g to that global norm first."""
    cfg, learner, free = one_step(tmp_path, "free", "outer.lr=0.5", "outer.clip=null")
    _, _, clipped = one_step(tmp_path, "clipped", "outer.lr=0.5", "outer.clip=0.001")
    _, _, small = one_step(tmp_path, "small", "outer.lr=0.125", "outer.clip=null")
    batch = next(sinusoid_of(cfg).batches(2, 2))
    params = leaves(learner)
    loss = hand_meta_loss(learner.model, params, list(params), batch, cfg.inner.lr, cfg.inner.steps)
    g = torch.cat([gi.flatten() for gi in torch.autograd.grad(loss, list(params.values()))]).double()
    assert g.norm() > 0.01
    assert torch.allclose(free, -0.5 * g, atol=1e-6, rtol=1e-4)
    assert torch.allclose(small, -0.125 * g, atol=1e-6, rtol=1e-4)
    assert clipped.norm().item() == pytest.approx(0.5 * 1e-3, rel=1e-4)
    assert torch.allclose(clipped, -0.5 * 1e-3 * g / g.norm(), atol=5e-7, rtol=1e-3)  # float32 parameters


def test_seed_sets_the_initialization():
    a, b, c = (build_learner(cfg_of(f"seed={s}"))[2].model.state_dict() for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["0.U"], c["0.U"])


# model.name: the preset's factors, masks, rule parameters and fast set, written out here by hand
EXPECTED = {  # preset: (parameters of layer 0 besides U and bias, rule parameters, fast parameters)
    "maml": ([], [], ["0.U", "0.bias", "2.U", "2.bias"]),
    "fomaml": ([], [], ["0.U", "0.bias", "2.U", "2.bias"]),
    "metasgd": ([], ["lrs.0__U", "lrs.0__bias", "lrs.2__U", "lrs.2__bias"], ["0.U", "0.bias", "2.U", "2.bias"]),
    "lslr": ([], ["lrs.0__U", "lrs.0__bias", "lrs.2__U", "lrs.2__bias"], ["0.U", "0.bias", "2.U", "2.bias"]),
    "anil": ([], [], ["2.U", "2.bias"]),
    "metacurvature": (
        [],
        ["curvature.0__U_o", "curvature.0__U_i", "curvature.2__U_o", "curvature.2__U_i"],
        ["0.U", "0.bias", "2.U", "2.bias"],
    ),
    "tnet": (["0.T"], [], ["0.U", "0.bias", "2.U", "2.bias"]),
    "mtnet": (["0.T", "0.mask_logit"], [], ["0.U", "0.bias", "2.U", "2.bias"]),
    "tuv": (["0.T", "0.V"], [], ["0.U", "0.bias", "2.U", "2.bias"]),
    "mtuv": (["0.T", "0.V", "0.mask_logit"], [], ["0.U", "0.bias", "2.U", "2.bias"]),
}


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_model_name_builds_that_preset(preset):
    _, _, learner = build_learner(cfg_of(f"model={preset}"))
    layer0, rule, fast = EXPECTED[preset]
    names = [n for n, _ in learner.model.named_parameters() if n.startswith("0.")]
    assert sorted(names) == sorted(["0.U", "0.bias", *layer0])
    assert sorted(n for n, _ in learner.rule.named_parameters()) == sorted(rule)
    assert learner.fast_names == fast


def test_validation_scores_use_logger_eval_tasks(tmp_path):
    """monitor.eval_every=1, monitor.eval_tasks=3: the logged val/MSE is the trained network adapted by hand on the
    first 3 validation tasks (stream seed + VAL_SEED_OFFSET, eval.batch at a time)."""
    import json

    from metatuv.build import VAL_SEED_OFFSET

    cfg = cfg_of(
        "model=maml",
        "outer.steps=1",
        "monitor.every=1",
        "monitor.eval_every=1",
        "monitor.eval_tasks=3",
        "eval.tasks=2",
        "eval.batch=4",
        "eval.baseline=false",
        "inner.test_steps=1",
        "inner.lr=0.05",
    )
    run(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    (logged,) = [r["val/MSE"] for r in rows if "val/MSE" in r]
    _, _, learner = build_learner(cfg)
    learner.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    xs, ys, xq, yq = next(sinusoid_of(cfg).batches(4, cfg.seed + VAL_SEED_OFFSET))
    model, params = learner.model, leaves(learner)
    scores = []
    for t in range(3):
        adapted = hand_adapt(model, params, list(params), xs[t], ys[t], 0.05, 1, create_graph=False)
        scores.append(mse(functional_call(model, adapted, (xq[t],)), yq[t]).item())
    assert logged == pytest.approx(sum(scores) / 3, rel=1e-5)
    four = scores + [
        mse(
            functional_call(
                model, hand_adapt(model, params, list(params), xs[3], ys[3], 0.05, 1, create_graph=False), (xq[3],)
            ),
            yq[3],
        ).item()
    ]
    assert abs(sum(four) / 4 - logged) > 1e-6 * logged  # the count matters


# --- benchmark keys: the tasks the trainer sees ---------------------------------------------------------------------


def test_sinusoid_keys_shape_the_tasks():
    cfg = cfg_of(
        "benchmark.shots=3",
        "benchmark.queries=4",
        "benchmark.amplitude=[1.5,1.5]",
        "benchmark.phase=[0.5,0.5]",
        "benchmark.x_range=[0.0,1.0]",
        "benchmark.arch.sizes=[1,5,3,1]",
        "outer.meta_batch=5",
        "eval.batch=6",
        "monitor.eval_every=1",
    )
    setup = build(cfg, build_learner(cfg)[1], with_val=True)
    for stream, tasks in ((setup.train, 5), (setup.observe, 5), (setup.test(), 6), (setup.val(), 6)):
        xs, ys, xq, yq = next(stream)
        assert xs.shape == ys.shape == (tasks, 3, 1) and xq.shape == yq.shape == (tasks, 4, 1)
        for x, y in ((xs, ys), (xq, yq)):
            assert 0.0 <= x.min() and x.max() <= 1.0
            assert torch.allclose(y, 1.5 * torch.sin(x - 0.5), atol=1e-6)
    assert [tuple(m.U.shape) for m in setup.model if hasattr(m, "U")] == [(5, 1), (3, 5), (1, 3)]


@pytest.mark.parametrize("order", [0, 2])
def test_polynomial_keys_shape_the_tasks(order):
    cfg = cfg_of("benchmark=polynomial", f"benchmark.order={order}", "benchmark.x_range=[1.0,3.0]", "benchmark.shots=6")
    setup = build(cfg, build_learner(cfg)[1])
    xs, ys, xq, yq = (t.double() for t in next(setup.train))
    assert xs.shape == (4, 6, 1) and xq.shape == (4, 10, 1)
    x, y = torch.cat([xs, xq], 1)[..., 0], torch.cat([ys, yq], 1)[..., 0]
    assert 1.0 <= x.min() and x.max() <= 3.0
    for xi, yi in zip(x, y, strict=True):  # exact fit by a polynomial of degree `order`, not by one less
        basis = xi[:, None] ** torch.arange(order + 1, dtype=D)
        coef = torch.linalg.lstsq(basis, yi[:, None]).solution[:, 0]
        assert torch.allclose(basis @ coef, yi, atol=1e-5)
        assert (coef.abs() <= 2.0 ** -torch.arange(order + 1, dtype=D) + 1e-4).all()  # c_i ~ U[-1, 1]/2^i
        if order > 0:
            fewer = basis[:, :-1]
            rest = yi - fewer @ torch.linalg.lstsq(fewer, yi[:, None]).solution[:, 0]
            assert rest.abs().max() > 1e-4
    assert isinstance(Polynomial(order), Polynomial)


# --- metric keys: T and V from statistics ----------------------------------------------------------------------


def test_statistics_keys_reach_the_estimate():
    """metric.batches=1 meta-batch of outer.meta_batch=2 tasks is observed; A of the first layer (its input x, 1×1) is
    the EMA with metric.decay=0.5 of mean(x²) over the two tasks (support + query); metric.damping=1e6 without
    metric.normalize makes TTᵀ = (Γ + 10⁶I)⁻¹ ≈ 10⁻⁶·I."""
    cfg = cfg_of(
        "metric=statistics_init",
        "metric.damping=1e6",
        "metric.normalize=false",
        "metric.decay=0.5",
        "metric.batches=1",
        "outer.meta_batch=2",
        "benchmark.arch.sizes=[1,4,1]",
    )
    setup, preset, learner = build_learner(cfg)
    hook, tracker = statistics_hook(cfg, setup, preset)
    hook(0)
    xs, _, xq, _ = next(sinusoid_of(cfg).batches(2, cfg.seed + STATS_SEED_OFFSET))
    a = [torch.cat([xs[t], xq[t]]).double().pow(2).mean().item() for t in range(2)]
    assert tracker.A["0"].item() == pytest.approx(0.5 * a[0] + 0.5 * a[1], rel=1e-5)
    T = learner.model[0].T.detach().double()
    assert torch.allclose(1e6 * T @ T.T, torch.eye(4, dtype=D), atol=1e-3)
    V = learner.model[0].V.detach().double()
    assert V.item() == pytest.approx((tracker.A["0"].item() + 1e6) ** -0.5, rel=1e-5)


@pytest.mark.data
def test_omniglot_keys_shape_the_episodes_and_the_network(data_root, cache_dir):
    """ways/shots/queries shape the episodes, rotate=train turns the training classes only (protocol=maml's
    splits), arch.hidden and arch.pool shape conv4."""
    from test_protocol import turned_fraction

    from metatuv.data import load_splits

    cfg = cfg_of(
        "benchmark=omniglot",
        f"paths.data_root={data_root}",
        f"paths.cache_dir={cache_dir}",
        "benchmark.protocol=maml",
        "benchmark.rotate=train",
        "benchmark.ways=3",
        "benchmark.shots=2",
        "benchmark.queries=1",
        "benchmark.arch.hidden=4",
        "benchmark.arch.pool=max",
        "outer.meta_batch=2",
        "eval.batch=2",
        "monitor.eval_every=1",
    )
    setup = build(cfg, build_learner(cfg)[1], with_val=True)
    splits = load_splits("omniglot", data_root, "maml", 28, cache_dir)
    assert {k: s.num_classes for k, s in splits.items()} == {"train": 1100, "val": 100, "test": 423}
    for split, stream in (("train", setup.train), ("test", setup.test()), ("val", setup.val())):
        xs, ys, xq, yq = next(stream)
        assert xs.shape == (2, 6, 1, 28, 28) and xq.shape == (2, 3, 1, 28, 28)
        assert ys[0].tolist() == [0, 0, 1, 1, 2, 2] and yq[0].tolist() == [0, 1, 2]
        frac = turned_fraction(splits[split], torch.cat([xs, xq], 1))
        assert (frac > 0.4) if split == "train" else (frac == 0.0), (split, frac)
    convs = [m for m in setup.model if hasattr(m, "U") and m.U.dim() == 4]
    assert [tuple(m.U.shape) for m in convs] == [(4, 1, 3, 3)] + [(4, 4, 3, 3)] * 3
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in setup.model) == 4 and setup.model[-1].U.shape == (3, 4)


# --- engine keys: same numbers by design (tests/test_backends.py, test_compile.py), so checked by the code they reach


@pytest.mark.parametrize(
    "overrides,spied,expected_calls",
    [
        (["inner.backend=higher"], ("higher", "innerloop_ctx"), 4),  # one context per task
        (["inner.backend=learn2learn"], ("learn2learn", "clone_module"), 4),
        (["inner.vectorize=loop"], ("metatuv.inner.backends", "vmap"), 0),
        (["inner.vectorize=loop", "inner.chunk_size=3"], ("metatuv.inner.backends", "vmap"), 0),
        (["inner.chunk_size=2"], ("metatuv.inner.backends", "vmap"), 2),  # default (all 4 at once): 1 call
        (["inner.compile=true"], ("metatuv.meta.learner", "compiled"), 1),
    ],
)
def test_engine_keys_reach_the_inner_loop(monkeypatch, overrides, spied, expected_calls):
    import importlib

    module = importlib.import_module(spied[0])
    real, calls = getattr(module, spied[1]), []

    def spy(*args, **kwargs):
        calls.append(1)
        if spied[1] == "compiled":  # the compiler replaced by the identity: same numbers, eagerly
            return args[0]
        return real(*args, **kwargs)

    monkeypatch.setattr(module, spied[1], spy)
    cfg = cfg_of("model=maml", "outer.meta_batch=4", *overrides)
    setup, _, learner = build_learner(cfg)
    loss = learner.backward(next(setup.train))
    assert torch.isfinite(loss)
    assert len(calls) == expected_calls
