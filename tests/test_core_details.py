"""Small core functions no other fast test reached (found by mutation testing, docs/mutation.md): the compiled
meta-gradient's bookkeeping (run eagerly), the optimizer factory, score formatting, the statistics tracker's state,
layer reprs."""

import functools
import math

import pytest
import torch
from conftest import random_factors

import metatuv.meta.learner as learner_module
from metatuv.meta import MetaLearner, build_optimizer, format_score, mse
from metatuv.metric import StatisticsTracker
from metatuv.nn import TUVConv2d, TUVLayer, TUVLinear, mlp

D = torch.float64


def mtuv_learner(**kw):
    torch.manual_seed(0)
    model = mlp([2, 4, 3], use_T=True, use_V=True, use_mask=True).double()
    for m in model.modules():
        if isinstance(m, TUVLayer):
            random_factors(m)
    return MetaLearner(model, mse, lr=0.2, steps=2, **kw)


@pytest.mark.parametrize("chunk_size", [None, 1])
def test_compiled_backward_bookkeeping_equals_autograd(monkeypatch, chunk_size):
    """MetaLearner.backward with compile=True, the compiler replaced by the identity: torch.func.grad of the summed
    query losses / tasks gives the autograd meta-gradient, accumulated over chunks, the frozen parameters excluded;
    on CPU the C++ wrapper is asked for."""
    asked = []

    def eager(fn, cpp_wrapper=False, cache=None):
        asked.append((cpp_wrapper, cache))
        return fn

    monkeypatch.setattr(learner_module, "compiled", eager)
    g = torch.Generator().manual_seed(1)
    batch = tuple(torch.randn(3, 5, n, dtype=D, generator=g) for n in (2, 3, 2, 3))
    grads, losses = {}, {}
    for compile in (False, True):
        learner = mtuv_learner(chunk_size=chunk_size, compile=compile)
        learner.model[0].T.requires_grad_(False)  # a frozen meta parameter (metric=statistics)
        learner.model[2].V.grad = torch.ones_like(learner.model[2].V)  # .grad accumulates
        losses[compile] = learner.backward(batch, torch.Generator().manual_seed(7))
        grads[compile] = {n: p.grad for n, p in learner.named_parameters()}
    assert asked and all(cpp for cpp, _ in asked)
    assert all(isinstance(cache, dict) and cache is learner._compiled for _, cache in asked)  # one per learner
    assert losses[True].item() == pytest.approx(losses[False].item(), rel=1e-12)
    assert grads[True]["model.0.T"] is None and grads[False]["model.0.T"] is None
    for n, g_ref in grads[False].items():
        if g_ref is not None:
            assert torch.allclose(grads[True][n], g_ref, atol=1e-12, rtol=1e-10), n
    assert grads[True]["model.0.mask_logit"].abs().sum() > 0


def test_build_optimizer_passes_lr_and_chooses_fused():
    params = [torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2, 2))]
    opt = build_optimizer(torch.optim.Adam, params, 0.003)
    assert opt.defaults["lr"] == 0.003 and opt.defaults["fused"] is True
    assert [p for g in opt.param_groups for p in g["params"]] == params
    chosen = build_optimizer(functools.partial(torch.optim.Adam, fused=False), params, 0.01)  # Hydra's _partial_
    assert chosen.defaults["fused"] is False and chosen.defaults["lr"] == 0.01
    ints = [torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))]
    assert build_optimizer(torch.optim.Adam, ints, 0.1).defaults["fused"] is False  # not floating point
    sgd = build_optimizer(torch.optim.SGD, params, 0.5)
    assert sgd.defaults["lr"] == 0.5 and sgd.defaults["fused"] is True

    def factory(ps, lr):  # takes no `fused`
        return torch.optim.Adagrad(ps, lr=lr)

    assert build_optimizer(factory, params, 0.2).defaults["lr"] == 0.2
    assert build_optimizer(torch.optim.LBFGS, params, 0.2).defaults["lr"] == 0.2  # no `fused` either


def test_format_score():
    assert format_score("accuracy", 0.927444, 0.005348) == "92.7444% ± 0.5348%"
    assert format_score("MSE", 0.02134567, 0.0029) == "0.0213 ± 0.0029"


def test_statistics_tracker_state_round_trip():
    layer = TUVLinear(3, 2, dtype=D)
    tracker = StatisticsTracker(layer, decay=0.5)
    tracker.observe(lambda o, y: ((o - y) ** 2).mean(), torch.randn(4, 3, dtype=D), torch.randn(4, 2, dtype=D))
    state = tracker.state_dict()
    assert set(state) == {"A", "G"} and set(state["A"]) == {""} and set(state["G"]) == {""}
    other = StatisticsTracker(layer, decay=0.5)
    other.load_state_dict(state)
    assert torch.equal(other.A[""], tracker.A[""]) and torch.equal(other.G[""], tracker.G[""])
    other.A[""] = torch.zeros(3, 3, dtype=D)  # the loaded dicts are copies
    assert not torch.equal(tracker.A[""], other.A[""])
    with pytest.raises(ValueError, match="decay=1"):
        StatisticsTracker(layer, decay=1)


def test_layer_reprs_name_shapes_and_factors():
    assert repr(TUVLinear(3, 2, use_V=False)) == ("TUVLinear(U=(2, 3), T=True, V=False, bias=True, mask_logit=False)")
    assert "U=(4, 1, 3, 3), T=False, V=True, bias=False, mask_logit=True" in repr(
        TUVConv2d(1, 4, 3, bias=False, use_T=False, use_mask=True)
    )


def test_build_optimizer_without_a_readable_signature_passes_no_fused():
    class NoSignature:  # inspect.signature fails on it: it must be called without `fused`
        __signature__ = 1

        def __call__(self, params, lr):
            return torch.optim.SGD(params, lr=lr)

    params = [torch.nn.Parameter(torch.randn(3))]
    assert build_optimizer(NoSignature(), params, 0.25).defaults["lr"] == 0.25


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_build_optimizer_fuses_on_cuda():
    params = [torch.nn.Parameter(torch.randn(3, device="cuda"))]
    assert build_optimizer(torch.optim.Adam, params, 0.1).defaults["fused"] is True


def test_dense_preconditioner_of_a_conv_and_at_the_size_limit():
    from conftest import vec

    from metatuv.metric import dense_preconditioner, factors
    from metatuv.metric.factors import MAX_DENSE

    conv = TUVConv2d(2, 3, 3, dtype=D)
    random_factors(conv)
    left, right = factors(conv)
    P = dense_preconditioner(conv).detach()
    assert P.shape == (6, 6) and torch.allclose(P, torch.kron(right, left).detach())
    G = torch.randn(3, 2, dtype=D)
    assert torch.allclose(P @ vec(G), vec(left.detach() @ G @ right.detach()))
    assert MAX_DENSE == 64 * 64
    assert dense_preconditioner(TUVLinear(64, 64, use_T=False, use_V=False)).shape == (4096, 4096)  # = limit: built
    with pytest.raises(ValueError, match="m×n = 17×241 = 4097 exceeds 4096"):
        dense_preconditioner(TUVLinear(241, 17, use_T=False, use_V=False))


def test_learned_metrics_layers_labels_and_given_spectra():
    from metatuv.metric.summary import _factor_stats, learned_metrics, tuv_layers

    net = torch.nn.Sequential(
        TUVLinear(2, 2, use_T=True, use_V=False),
        TUVLinear(2, 2, use_T=False, use_V=True),
        TUVLinear(2, 2, use_T=False, use_V=False),  # MAML layer: no metric
    )
    assert list(tuv_layers(net)) == ["0", "1"]
    stats = _factor_stats(torch.tensor([0.0, 2.0], dtype=D))  # singular: infinite condition number
    assert stats["cond"] == math.inf and stats["eig_max"] == 2.0 and stats["eig_min"] == 0.0
    stats = _factor_stats(torch.tensor([0.5, 2.0], dtype=D))
    assert stats["cond"] == 4.0 and stats["eig_min"] == 0.5
    lone = TUVLinear(2, 3, use_mask=True)  # the model is the layer itself: named "layer"
    given = {"": {"TT": torch.tensor([1.0, 4.0], dtype=D), "VV": torch.tensor([3.0], dtype=D)}}
    m = learned_metrics(lone, lr=0.5, spectra=given)  # the spectra passed in are used, not recomputed
    assert m["metric/layer/TT/eig_max"] == 4.0 and m["metric/layer/VV/eig_min"] == 3.0
    assert m["metric/layer/max_step"] == 0.5 * 4.0 * 3.0
    assert m["mask/layer/hard"] == 0.0 and m["mask/layer/expected"] == 0.5


def test_conv_statistics_are_channel_covariances_by_hand():
    """A = E[x xᵀ] and Γ = E[δ δᵀ] over samples and positions, channel by channel (δ = batch × ∂L/∂output)."""
    conv = TUVConv2d(2, 3, 3, padding=1, dtype=D)
    x, y = torch.randn(4, 2, 5, 5, dtype=D), torch.randn(4, 3, 5, 5, dtype=D)
    tracker = StatisticsTracker(conv, decay=0.0)  # decay 0: the last observation only
    tracker.observe(mse, torch.randn(4, 2, 5, 5, dtype=D), y)
    tracker.observe(mse, x, y)
    out = conv(x).detach().requires_grad_()
    (delta,) = torch.autograd.grad(mse(out, y), out)
    delta = 4 * delta
    assert torch.allclose(tracker.A[""], torch.einsum("bihw,bjhw->ij", x, x) / (4 * 25), atol=1e-12)
    assert torch.allclose(tracker.G[""], torch.einsum("bihw,bjhw->ij", delta, delta) / (4 * 25), atol=1e-12)


def test_reestimate_default_damping_and_unused_mask_logits():
    """reestimate() damps with λ = 1e-3 by default; MT-net mask logits (unused by the forward pass) are allowed."""
    from metatuv.metric import factors, reestimate

    layer = TUVLinear(3, 2, use_mask=True, dtype=D)
    x, y = torch.randn(8, 3, dtype=D), torch.randn(8, 2, dtype=D)
    tracker = reestimate(layer, mse, [(x, y)])
    left, right = factors(layer)
    eye = lambda k: torch.eye(k, dtype=D)  # noqa: E731
    assert torch.allclose(left, torch.linalg.inv(tracker.G[""] + 1e-3 * eye(2)), atol=1e-8)
    assert torch.allclose(right, torch.linalg.inv(tracker.A[""] + 1e-3 * eye(3)), atol=1e-8)


def test_mask_fractions_hard_is_the_share_of_positive_logits():
    from metatuv.metric import mask_fractions

    layer = TUVLinear(2, 3, use_mask=True, dtype=D)
    with torch.no_grad():
        layer.mask_logit.copy_(torch.tensor([0.5, -0.5, 2.0], dtype=D))
    f = mask_fractions(torch.nn.Sequential(layer))["0"]
    assert f["hard"] == pytest.approx(2 / 3)
    assert f["expected"] == pytest.approx(torch.sigmoid(torch.tensor([0.5, -0.5, 2.0])).mean().item(), rel=1e-6)


def tiny(mask=False, scale=1.0):
    torch.manual_seed(0)
    model = mlp([1, 4, 1], use_T=True, use_V=False, use_mask=mask).double()
    return MetaLearner(model, lambda p, y: scale * mse(p, y), lr=0.1, steps=1)


def tiny_batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    while True:
        yield tuple(torch.randn(2, 3, 1, dtype=D, generator=g) for _ in range(4))


def flat(learner):
    return torch.cat([p.detach().flatten() for p in learner.parameters()])


def test_meta_train_defaults_adam_lr_and_clip():
    """No optimizer: Adam with meta_lr = 1e-3, so the first step is −1e-3·g/(|g| + 1e-8); clip defaults to 10."""
    from metatuv.meta import meta_train

    learner = tiny()
    before = flat(learner)
    learner.meta_loss(next(tiny_batches())).backward()
    g = torch.cat([p.grad.flatten() for p in learner.parameters()])
    learner.zero_grad()
    meta_train(learner, tiny_batches(), 1, progress=False)
    assert torch.allclose(flat(learner) - before, -1e-3 * g / (g.abs() + 1e-8), atol=1e-12, rtol=1e-9)
    big = tiny(scale=1e4)  # gradient norm far above 10
    before = flat(big)
    meta_train(big, tiny_batches(), 1, optimizer=torch.optim.SGD(big.parameters(), lr=1.0), progress=False)
    assert (flat(big) - before).norm().item() == pytest.approx(10.0, rel=1e-5)


def test_meta_train_inner_generator_defaults_to_seed_plus_offset():
    """MT-net masks: the default generator is seeded with seed + 0x5EED (seed defaults to 0)."""
    from metatuv.meta import meta_train

    runs = {}
    for key, kw in {
        "default": {},
        "explicit": {"generator": torch.Generator().manual_seed(0x5EED)},
        "seed1": {"seed": 1},
    }.items():
        learner = tiny(mask=True)
        meta_train(
            learner, tiny_batches(), 3, optimizer=torch.optim.SGD(learner.parameters(), lr=0.5), progress=False, **kw
        )
        runs[key] = flat(learner)
    assert torch.equal(runs["default"], runs["explicit"])
    assert not torch.equal(runs["default"], runs["seed1"])


def test_meta_train_argument_checks_and_progress(capsys):
    from metatuv.meta import meta_train

    learner = tiny()
    for kw in ({"steps": -1}, {"steps": 2, "meta_lr": 0.0}, {"steps": 2, "start": 3}, {"steps": 2, "start": -1}):
        with pytest.raises(ValueError, match="meta_train: need 0 <= start"):
            meta_train(learner, tiny_batches(), **kw)
    assert meta_train(learner, tiny_batches(), 0, progress=False) == []
    assert meta_train(learner, tiny_batches(), 2, start=2, history=[1.0, 2.0], progress=False) == [1.0, 2.0]
    capsys.readouterr()
    meta_train(learner, tiny_batches(), 1)  # progress bar by default
    assert "meta-train: " in capsys.readouterr().err
    meta_train(learner, tiny_batches(), 1, progress=False)
    assert capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="the task stream ended after 2 meta-batches"):
        meta_train(learner, iter([next(tiny_batches())] * 2), 3, progress=False)


def test_meta_train_checks_for_nan_every_log_every_steps():
    """A NaN at step 0 is found at the first synchronization: after log_every = 100 steps by default."""
    from metatuv.meta import NonFiniteLoss, meta_train

    def poisoned():
        for i, (xs, ys, xq, yq) in enumerate(tiny_batches()):
            yield xs, ys, xq, yq * (float("nan") if i == 0 else 1.0)

    for kw, ran in (({}, 100), ({"log_every": 7}, 7)):
        steps = []
        learner = tiny()
        opt = torch.optim.SGD(learner.parameters(), lr=0.0)
        with pytest.raises(NonFiniteLoss, match="at meta-step 0"):
            meta_train(learner, poisoned(), 300, optimizer=opt, progress=False, on_step=steps.append, **kw)
        assert steps == list(range(ran))


def test_class_images_from_grouped_names():
    from metatuv.data.episodes import ClassImages

    x = torch.zeros(3, 2, 1, 4, 4, dtype=torch.uint8)
    assert ClassImages.from_grouped(x).names == []
    data = ClassImages.from_grouped(x, ["a", "b", "c"])
    assert data.names == ["a", "b", "c"] and data.counts.tolist() == [2, 2, 2] and data.offsets.tolist() == [0, 2, 4]


def poisoned(bad):
    for i, (xs, ys, xq, yq) in enumerate(tiny_batches()):
        yield xs, ys, xq, yq * (float("nan") if i in bad else 1.0)


def test_meta_train_stop_names_the_first_bad_step():
    from metatuv.meta import NonFiniteLoss, meta_train

    learner = tiny()
    opt = torch.optim.SGD(learner.parameters(), lr=0.0)
    with pytest.raises(NonFiniteLoss, match=r"meta-loss is nan at meta-step 3; stopped"):
        meta_train(learner, poisoned({3, 5}), 8, optimizer=opt, progress=False, log_every=2, nonfinite="stop")


def test_meta_train_skip_drops_bad_batches_and_gives_up_after_eleven():
    from metatuv.meta import NonFiniteLoss, meta_train

    learner = tiny()
    before = flat(learner)
    opt = torch.optim.SGD(learner.parameters(), lr=0.1)
    history = meta_train(learner, poisoned({1}), 3, optimizer=opt, progress=False, log_every=1, nonfinite="skip")
    assert len(history) == 3 and math.isnan(history[1]) and math.isfinite(history[2])
    assert torch.isfinite(flat(learner)).all() and not torch.equal(flat(learner), before)
    steps = []
    with pytest.raises(
        NonFiniteLoss, match="11 meta-batches in a row had a non-finite loss or gradient up to meta-step 10"
    ):
        meta_train(
            tiny(), poisoned(set(range(100))), 50, optimizer=opt, progress=False, nonfinite="skip", on_step=steps.append
        )
    assert len(steps) == 11
    skipped_then_fine = poisoned(set(range(10)) | set(range(11, 21)))  # 10 bad, 1 good, 10 bad: never 11 in a row
    learner = tiny()
    out = meta_train(
        learner,
        skipped_then_fine,
        21,
        optimizer=torch.optim.SGD(learner.parameters(), lr=0.1),
        progress=False,
        nonfinite="skip",
    )
    assert sum(math.isfinite(v) for v in out) == 1
    with pytest.raises(ValueError, match="nonfinite='ignore'"):
        meta_train(learner, tiny_batches(), 1, nonfinite="ignore")


def test_meta_train_after_step_and_progress_postfix(capsys):
    """after_step(step, losses) after every meta-step with the history so far; the bar shows the mean of the last
    log_every losses."""
    from metatuv.meta import meta_train

    learner = tiny()
    seen = []
    history = meta_train(
        learner,
        tiny_batches(),
        3,
        optimizer=torch.optim.SGD(learner.parameters(), lr=0.0),
        progress=False,
        after_step=lambda step, losses: seen.append((step, list(losses()))),
    )
    assert [s for s, _ in seen] == [0, 1, 2] and [len(h) for _, h in seen] == [1, 2, 3] and seen[-1][1] == history
    capsys.readouterr()
    history = meta_train(
        learner, tiny_batches(), 4, optimizer=torch.optim.SGD(learner.parameters(), lr=0.0), log_every=2
    )
    assert f"loss={(history[2] + history[3]) / 2:.4f}" in capsys.readouterr().err


def id_images(classes=3, per_class=4):
    """ClassImages whose every pixel holds the image's id = class·per_class + index (read back as x·255)."""
    from metatuv.data.episodes import ClassImages

    ids = torch.arange(classes * per_class, dtype=torch.uint8)
    return ClassImages.from_grouped(ids.view(classes, per_class, 1, 1, 1).expand(-1, -1, 1, 2, 2).contiguous())


def ids_of(x):
    return x.mul(255).round().long()[..., 0, 0, 0]


def test_episode_sampler_draws_without_replacement_independently_per_task_and_seeded():
    from metatuv.data.episodes import EpisodeSampler

    data = id_images()
    sampler = EpisodeSampler(data, ways=2, shots=2, queries=2)  # k + q = the whole class
    xs, ys, xq, yq = next(sampler.batches(60, seed=4, dtype=torch.float64))
    assert xs.dtype == torch.float64 and not sampler.rotate  # no rotation unless asked
    seen = set()
    for t in range(60):
        for c in range(2):
            got = torch.cat([ids_of(xs[t][ys[t] == c]), ids_of(xq[t][yq[t] == c])]).sort().values
            cls = got[0].item() // 4
            assert got.tolist() == list(range(4 * cls, 4 * cls + 4))  # every image of the class, once
        seen.add(tuple(ids_of(xs[t]).tolist()))
    assert len(seen) > 20  # tasks draw their own classes and images
    torch.manual_seed(123)  # the global RNG plays no part: the stream's own generator does
    again = next(sampler.batches(60, seed=4, dtype=torch.float64))
    assert all(torch.equal(a, b) for a, b in zip((xs, ys, xq, yq), again, strict=True))
    assert not torch.equal(next(sampler.batches(60, seed=5, dtype=torch.float64))[0], xs)


def test_episode_sampler_argument_checks():
    from metatuv.data.episodes import EpisodeSampler

    data = id_images(classes=3, per_class=4)
    assert EpisodeSampler(data, ways=2, shots=1, queries=1).ways == 2  # the smallest allowed
    assert EpisodeSampler(data, ways=3, shots=3, queries=1).shots == 3  # k + q = 4 images: allowed
    for kw in (
        {"ways": 1, "shots": 1, "queries": 1},
        {"ways": 2, "shots": 0, "queries": 1},
        {"ways": 2, "shots": 1, "queries": 0},
    ):
        with pytest.raises(ValueError, match="episodes: ways="):
            EpisodeSampler(data, **kw)
    with pytest.raises(ValueError, match="shots \\+ queries = 3 \\+ 2 = 5 exceeds the 4 images .* in the split split"):
        EpisodeSampler(data, ways=2, shots=3, queries=2)
    with pytest.raises(ValueError, match="exceeds the 3 classes of the train split"):
        EpisodeSampler(data, ways=4, shots=1, queries=1, split="train")


def test_class_images_to_keeps_names():
    data = id_images().to("cpu")
    assert data.names == [] and data.counts.tolist() == [4, 4, 4]
    from metatuv.data.episodes import ClassImages

    named = ClassImages.from_grouped(torch.zeros(2, 3, 1, 2, 2, dtype=torch.uint8), ["a", "b"]).to("cpu")
    assert named.names == ["a", "b"]


def test_rotation_turns_come_from_the_stream_and_images_must_be_uint8_nchw():
    from metatuv.data.episodes import ClassImages, EpisodeSampler

    g = torch.Generator().manual_seed(0)
    data = ClassImages.from_grouped(torch.randint(0, 256, (4, 3, 1, 5, 5), generator=g, dtype=torch.uint8))
    sampler = EpisodeSampler(data, ways=3, shots=1, queries=1, rotate=True)
    torch.manual_seed(1)
    a = next(sampler.batches(8, seed=2))
    torch.manual_seed(2)  # the turns too come from the stream's generator, not the global one
    b = next(sampler.batches(8, seed=2))
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    with pytest.raises(ValueError, match="images must be uint8"):
        ClassImages(torch.zeros(4, 1, 2, 2), torch.tensor([2, 2]))  # float
    with pytest.raises(ValueError, match="images must be uint8"):
        ClassImages(torch.zeros(4, 2, 2, dtype=torch.uint8), torch.tensor([2, 2]))  # 3-D
    with pytest.raises(ValueError, match="counts sum to 3 but there are 4 images"):
        ClassImages(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.tensor([2, 1]))


def test_backward_shards_add_up_to_the_whole_meta_batch():
    """shard=(rank, world): each rank's tasks, each divided by the full count; the ranks' sums are the whole batch's
    gradient and loss (no process group needed to check the arithmetic); the returned loss is the mean query loss."""
    g = torch.Generator().manual_seed(3)
    batch = tuple(torch.randn(6, 3, 1, dtype=D, generator=g) for _ in range(4))
    whole = tiny()
    loss = whole.backward(batch)
    assert loss.dtype == D and loss.item() == pytest.approx(whole.meta_loss(batch).item(), rel=1e-12)
    for world, chunk in ((2, None), (3, 1)):
        total, grads = 0.0, None
        for rank in range(world):
            learner = tiny()
            learner.chunk_size = chunk
            total += learner.backward(batch, shard=(rank, world)).item()
            part = [p.grad.clone() for p in learner.parameters()]
            grads = part if grads is None else [a + b for a, b in zip(grads, part, strict=True)]
        assert total == pytest.approx(loss.item(), rel=1e-12)
        for a, p in zip(grads, whole.parameters(), strict=True):
            assert torch.allclose(a, p.grad, atol=1e-14, rtol=1e-10)
    with pytest.raises(ValueError, match="meta-batch of 6 tasks does not split over 4 processes"):
        tiny().backward(batch, shard=(0, 4))
    learner = tiny()  # a world of one needs no process group
    assert len(meta_train_one(learner, shard=(0, 1))) == 1


def meta_train_one(learner, **kw):
    from metatuv.meta import meta_train

    return meta_train(
        learner, tiny_batches(), 1, optimizer=torch.optim.SGD(learner.parameters(), lr=0.1), progress=False, **kw
    )


def test_accuracy_by_hand_on_the_last_axis():
    from metatuv.meta.losses import accuracy

    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 1.0, 5.0], [4.0, 0.0, 0.0]])
    y = torch.tensor([0, 1, 0, 2])  # argmax per row: 0, 1, 2, 0 -> right, right, wrong, wrong
    assert accuracy(logits, y).item() == 0.5
    # tasks × queries × ways: the class axis is the last one, not the second
    stacked = torch.stack([logits, logits.flip(0)])  # (2, 4, 3)
    assert accuracy(stacked, torch.stack([y, y.flip(0)])).item() == 0.5
    assert accuracy(stacked, torch.stack([y, y])).item() == 0.375  # (2 + 1) / 8: the reversed task matches row 0 only


@pytest.mark.parametrize("head_only", [False, True])
def test_fast_parameters_are_the_fast_names_tensors_in_order(head_only):
    from metatuv.nn import fast_names, fast_parameters, mlp

    model = mlp([1, 8, 8, 1], True, True, False)
    names = fast_names(model, head_only)
    params = fast_parameters(model, head_only)
    named = dict(model.named_parameters())
    assert len(params) == len(names) and all(p is named[n] for p, n in zip(params, names, strict=True))
    assert names == (["4.U", "4.bias"] if head_only else ["0.U", "0.bias", "2.U", "2.bias", "4.U", "4.bias"])
    assert not any(p is named["0.T"] or p is named["0.V"] for p in params)  # T and V never adapt


def test_chunks_cover_the_tasks_in_order_and_mean_ci95_of_one_value():
    from metatuv.meta.batching import chunks
    from metatuv.meta.evaluation import mean_ci95

    batch = tuple(torch.arange(7).view(7, 1) * k for k in (1, 10, 100, 1000))
    extras = {"m": torch.arange(7) + 0.5}
    parts = list(chunks(batch, extras, 3))  # default: every task
    assert [p[0][0].flatten().tolist() for p in parts] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [p[1]["m"].tolist() for p in parts] == [[0.5, 1.5, 2.5], [3.5, 4.5, 5.5], [6.5]]
    assert [p[0][3].flatten().tolist() for p in chunks(batch, extras, 2, first=1, last=4)] == [[1000, 2000], [3000]]
    mean, ci = mean_ci95(torch.tensor([0.25]))  # one task: its value, and no interval
    assert mean == 0.25 and math.isnan(ci)


def test_adapt_is_second_order_by_default():
    from metatuv.inner import adapt

    a, lr = 3.0, 0.01
    w0 = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    # one step on L(w) = (a·w)²: w1 = w0 − lr·2a²·w0; query loss w1²: d/dw0 = 2·w1·(1 − 2·lr·a²) (second order)
    w1 = adapt(lambda f: (a * f["w"]) ** 2, {"w": w0}, 1, lr)["w"]
    (g,) = torch.autograd.grad(w1**2, w0)
    expected = 2 * w1.detach() * (1 - 2 * lr * a**2)
    torch.testing.assert_close(g, expected, rtol=1e-12, atol=0)
    assert abs(g.item() - 2 * w1.item()) > 1e-3  # the first-order value differs


@pytest.mark.parametrize("shape", [(2, 4, 5), (2, 3), (2, 3, 5, 5)])
def test_primitive_batch_norm_refuses_other_shapes(shape):
    from metatuv.nn import BatchNorm

    with pytest.raises(ValueError):
        BatchNorm(4)(torch.randn(*shape))


def test_fast_parameters_default_and_a_parameter_shared_by_two_modules():
    """Without ``head_only`` every layer adapts; a Parameter shared by two modules (tied biases) is listed under both
    of fast_names' names, so the list stays aligned with fast_names (same length and order)."""
    from metatuv.nn import fast_names, fast_parameters, mlp

    model = mlp([1, 8, 8, 1], True, True, False)
    assert fast_parameters(model) == fast_parameters(model, False) != fast_parameters(model, True)
    tied = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    tied[1].bias = tied[0].bias
    names, params = fast_names(tied), fast_parameters(tied)
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert len(params) == 4 and params[1] is params[3] is tied[0].bias
