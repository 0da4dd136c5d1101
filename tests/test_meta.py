"""Meta-gradients: a hand-derived second-order case, gradcheck, first order vs second order, one meta-step."""

import copy
import itertools
import re

import pytest
import torch
from conftest import random_factors
from torch import nn

from metatuv.meta import MetaLearner, meta_train, mse
from metatuv.meta.loop import NonFiniteLoss
from metatuv.nn import TUVLayer, TUVLinear, mlp, tuvify

D = torch.float64


def half_sse(pred, y):
    return 0.5 * ((pred - y) ** 2).sum()


def test_hand_derived_scalar_second_order():
    """w = t·u·v, L = ½(w·x − y)², one inner step of size α on u:

    u' = u − α·t·v·x_s·r_s with r_s = w·x_s − y_s, so w' = t·u'·v = w − α·t²v²·x_s·r_s.
    L_q = ½ r_q², r_q = w'·x_q − y_q, and dL_q/dθ = r_q·x_q·dw'/dθ with
      dw'/du = t·v·(1 − α·t²v²·x_s²)
      dw'/dt = u·v − α·t·v²·x_s·(2·r_s + t·u·v·x_s)
      dw'/dv = t·u − α·t²·v·x_s·(2·r_s + t·u·v·x_s)
    (the α-terms are the second-order part; first order keeps only dw'/du = t·v and
    dw'/dt = u'·v, dw'/dv = t·u' evaluated at the adapted u').
    """
    layer = TUVLinear(1, 1, bias=False, dtype=D)
    t, u, v, alpha = 1.3, -0.7, 0.8, 0.25
    with torch.no_grad():
        layer.T.fill_(t), layer.U.fill_(u), layer.V.fill_(v)
    xs, ys, xq, yq = 1.5, 0.4, -0.9, 1.1
    batch = tuple(torch.tensor([[[val]]], dtype=D) for val in (xs, ys, xq, yq))
    learner = MetaLearner(layer, half_sse, alpha, steps=1)
    learner.meta_loss(batch).backward()

    w = t * u * v
    r_s = w * xs - ys
    w1 = w - alpha * t**2 * v**2 * xs * r_s
    r_q = w1 * xq - yq
    dU = r_q * xq * t * v * (1 - alpha * t**2 * v**2 * xs**2)
    dT = r_q * xq * (u * v - alpha * t * v**2 * xs * (2 * r_s + t * u * v * xs))
    dV = r_q * xq * (t * u - alpha * t**2 * v * xs * (2 * r_s + t * u * v * xs))
    for p, expected in ((layer.U, dU), (layer.T, dT), (layer.V, dV)):
        assert abs(p.grad.item() - expected) < 1e-12


@pytest.mark.parametrize("first_order", [False, True])
def test_hand_derived_matrix_U_gradient(first_order):
    """W = T·U·V (m×n), L = ½‖W·x − y‖², one inner step on U, R = r_q·x_qᵀ at the adapted W':

    dW' = T·dU·V − α·TTᵀ·T·dU·V·x_s·x_sᵀ·VᵀV, hence
    ∂L_q/∂U₀ = Tᵀ·R·Vᵀ − α·TᵀTTᵀ·R·VᵀV·x_s·x_sᵀ·Vᵀ; first order keeps only the first term.
    """
    layer = TUVLinear(3, 2, bias=False, dtype=D)
    random_factors(layer, 0.5)
    alpha = 0.2
    xs, ys, xq, yq = (torch.randn(1, 1, k, dtype=D) for k in (3, 2, 3, 2))
    learner = MetaLearner(layer, half_sse, alpha, steps=1, first_order=first_order)
    learner.meta_loss((xs, ys, xq, yq)).backward()

    T, U, V = (p.detach() for p in (layer.T, layer.U, layer.V))
    x_s, y_s, x_q, y_q = (a.reshape(-1, 1) for a in (xs, ys, xq, yq))
    W = T @ U @ V
    W1 = W - alpha * T @ T.T @ (W @ x_s - y_s) @ x_s.T @ V.T @ V
    R = (W1 @ x_q - y_q) @ x_q.T
    expected = T.T @ R @ V.T
    if not first_order:
        expected = expected - alpha * T.T @ T @ T.T @ R @ V.T @ V @ x_s @ x_s.T @ V.T
    assert torch.allclose(layer.U.grad, expected, atol=1e-12, rtol=0)


def tiny_learner(steps=2, first_order=False):
    model = nn.Sequential(TUVLinear(2, 3, dtype=D), nn.Tanh(), TUVLinear(3, 2, dtype=D))
    for m in model.modules():
        if isinstance(m, TUVLayer):
            random_factors(m)
    return MetaLearner(model, lambda p, y: ((p - y) ** 2).mean(), lr=0.3, steps=steps, first_order=first_order)


def tiny_batch(tasks=2):
    return (torch.randn(tasks, 4, 2, dtype=D), torch.randn(tasks, 4, 2, dtype=D),
            torch.randn(tasks, 5, 2, dtype=D), torch.randn(tasks, 5, 2, dtype=D))  # fmt: skip


def test_gradcheck_meta_loss_wrt_T_V_and_U_init():
    learner = tiny_learner(steps=2)
    batch = tiny_batch()
    names, values = zip(*learner.params().items(), strict=True)
    inputs = tuple(v.detach().clone().requires_grad_() for v in values)
    assert {"0.T", "0.V", "0.U", "2.T", "2.V", "2.U"} <= set(names)

    def meta_loss(*flat):
        return learner.meta_loss(batch, dict(zip(names, flat, strict=True)))

    assert torch.autograd.gradcheck(meta_loss, inputs, eps=1e-6, atol=1e-7)
    assert torch.autograd.gradgradcheck(meta_loss, inputs, eps=1e-6, atol=1e-6)


def every_quantity_learner(lr_mode, curvature, kfo):
    """Conv and linear TUV layers with T, V and MT-net masks; every meta-parameter moved off its initial value."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 2, 2), nn.Tanh(), nn.Flatten(), nn.Linear(2, 3))
    model = tuvify(net, use_T=True, use_V=True, use_mask=True).double()
    learner = MetaLearner(model, mse, lr=0.3, steps=2, lr_mode=lr_mode, curvature=curvature, kfo=kfo)
    with torch.no_grad():
        for q in learner.parameters():
            q.add_(0.3 * torch.randn_like(q))
    return learner


@pytest.mark.parametrize("lr_mode,curvature,kfo", [("metasgd", True, False), ("lslr", False, True)])
def test_gradcheck_pure_meta_loss_over_every_learned_quantity(monkeypatch, lr_mode, curvature, kfo):
    """gradcheck of meta_loss(learner, θ, batch, extras) over all of θ: T, V, U₀, b₀, mask logits (conv and linear
    layers), Meta-SGD or LSLR rates, Meta-Curvature (M_o, M_i, M_f) or KFO factors — the step rule reads them
    from θ, not from the module. The mask's straight-through sample is piecewise constant in its logit, so for
    the finite differences it is replaced by its linearization at the unperturbed logit ζ₀:
    1[σ((ζ₀+ℓ)/τ) > ½] − σ((ζ₀+ℓ)/τ) + σ((ζ+ℓ)/τ), equal in value and gradient at ζ₀ (asserted first)."""
    import metatuv.inner.transforms as transforms
    from metatuv.meta.learner import meta_loss

    learner = every_quantity_learner(lr_mode, curvature, kfo)
    g = torch.Generator().manual_seed(1)
    batch = (torch.randn(2, 3, 2, 2, 2, dtype=D, generator=g), torch.randn(2, 3, 3, dtype=D, generator=g),
             torch.randn(2, 4, 2, 2, 2, dtype=D, generator=g), torch.randn(2, 4, 3, dtype=D, generator=g))  # fmt: skip
    extras = learner.sample_extras(2, torch.Generator().manual_seed(2))
    names = [n for n, _ in learner.named_parameters()]
    wanted = {"model.0.T", "model.0.V", "model.0.U", "model.0.mask_logit", "model.3.T", "model.3.mask_logit"}
    wanted |= {"rule.lrs.0__U", "rule.lrs.3__bias"}
    wanted |= {"rule.curvature.0__U_o", "rule.curvature.0__U_i", "rule.curvature.0__U_f"} if curvature else set()
    wanted |= {"rule.kfo.0__U_l", "rule.kfo.0__U_r", "rule.kfo.3__U_l", "rule.kfo.3__U_r"} if kfo else set()
    assert wanted <= set(names)
    inputs = tuple(p.detach().clone().requires_grad_() for _, p in learner.named_parameters())
    buffers = dict(learner.named_buffers())

    def loss(*flat):
        return meta_loss(learner, {**dict(zip(names, flat, strict=True)), **buffers}, batch, extras)

    exact = loss(*inputs)
    exact_grads = torch.autograd.grad(exact, inputs)
    frozen = {id(x): x.detach().clone() for n, x in zip(names, inputs, strict=True) if n.endswith("mask_logit")}

    def linearized(logit, noise, temperature):
        soft0 = torch.sigmoid((frozen[id(logit)] + noise) / temperature)
        return (soft0 > 0.5).to(soft0.dtype) - soft0 + torch.sigmoid((logit + noise) / temperature)

    monkeypatch.setattr(transforms, "mask_sample", linearized)
    assert loss(*inputs).item() == pytest.approx(exact.item(), rel=1e-14)
    for n, a, b in zip(names, torch.autograd.grad(loss(*inputs), inputs), exact_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14), n
        assert b.abs().max() > 1e-8, n  # every quantity gets a real gradient
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-7)


def test_first_order_drops_second_order_term():
    batch = tiny_batch()

    def grads(steps, first_order):
        torch.manual_seed(1)
        learner = tiny_learner(steps=steps, first_order=first_order)
        learner.meta_loss(batch).backward()
        return {n: p.grad.clone() for n, p in learner.model.named_parameters()}

    second, first = grads(1, False), grads(1, True)
    for n in second:
        assert not torch.allclose(second[n], first[n], atol=1e-8), n
    # with zero inner steps both are the plain query-loss gradient
    second, first = grads(0, False), grads(0, True)
    for n in second:
        assert torch.equal(second[n], first[n])


def test_one_meta_step_updates_only_leaf_meta_parameters():
    model = mlp([1, 8, 8, 1]).double()
    learner = MetaLearner(model, lambda p, y: ((p - y) ** 2).mean(), lr=0.01, steps=1)
    params_before = {n: p for n, p in model.named_parameters()}
    values_before = {n: p.detach().clone() for n, p in params_before.items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = itertools.repeat(tiny_batch_1d())
    meta_train(learner, batches, steps=1, optimizer=optimizer, progress=False)
    opt_params = [p for g in optimizer.param_groups for p in g["params"]]
    assert {id(p) for p in opt_params} == {id(p) for p in params_before.values()}
    for n, p in model.named_parameters():
        assert p is params_before[n] and p.is_leaf  # never replaced by adapted tensors
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n
        assert not torch.equal(p.detach(), values_before[n]), n  # Adam moved every meta parameter


def tiny_batch_1d():
    return (torch.randn(4, 5, 1, dtype=D), torch.randn(4, 5, 1, dtype=D),
            torch.randn(4, 5, 1, dtype=D), torch.randn(4, 5, 1, dtype=D))  # fmt: skip


@pytest.mark.parametrize("lr", [-0.1, 0.0])
def test_learner_rejects_bad_inner_lr(lr):
    with pytest.raises(ValueError, match=f"lr={lr} must be > 0"):
        MetaLearner(mlp([1, 2, 1]), half_sse, lr=lr, steps=1)
    assert MetaLearner(mlp([1, 2, 1]), half_sse, lr=0.1, steps=0).problem.steps == 0  # 0 steps: no adaptation


@pytest.mark.parametrize("preset", ["mtuv", "metasgd"])
@pytest.mark.parametrize("net", ["mlp", "conv4"])
def test_vmapped_evaluation_equals_the_task_loop(preset, net):
    """evaluate() vmaps the test tasks (whole batch, or chunks); the scores equal one task at a time (float64)."""
    from metatuv.meta import evaluate
    from metatuv.meta.learner import accuracy, cross_entropy, mse
    from metatuv.meta.presets import get_preset
    from metatuv.nn import conv4

    p = get_preset(preset)
    flags = {"use_T": p.use_T, "use_V": p.use_V, "use_mask": p.use_mask}
    g = torch.Generator().manual_seed(0)
    if net == "mlp":
        model, loss, metric = mlp([1, 8, 8, 1], **flags).double(), mse, mse
        batch = [torch.randn(5, n, 1, generator=g, dtype=D) for n in (4, 4, 6, 6)]
    else:
        model, loss, metric = conv4(3, hidden=4, image_size=8, **flags).double(), cross_entropy, accuracy
        xs, xq = torch.randn(5, 3, 1, 8, 8, generator=g, dtype=D), torch.randn(5, 6, 1, 8, 8, generator=g, dtype=D)
        batch = [xs, torch.arange(3).repeat(5, 1), xq, torch.arange(3).repeat(5, 2)]
    for m in model.modules():
        if isinstance(m, TUVLayer) and m.T is not None:
            random_factors(m)
    scores = {}
    for vectorize, chunk in (("loop", None), ("vmap", None), ("auto", 2)):
        learner = MetaLearner.from_preset(model, p, loss, 0.1, 1, vectorize=vectorize, chunk_size=chunk)
        scores[vectorize] = evaluate(learner, itertools.repeat(tuple(batch)), 12, 3, metric, False, seed=1)
    assert scores["vmap"] == pytest.approx(scores["loop"], rel=1e-10, abs=1e-12)
    assert scores["auto"] == pytest.approx(scores["loop"], rel=1e-10, abs=1e-12)


def test_evaluate_defaults_to_600_tasks_with_a_progress_bar(capsys):
    """The protocol's 600 test tasks when ``tasks`` is not given, and a progress bar unless ``progress=False``."""
    from metatuv.meta import evaluate

    learner = tiny_learner(steps=1)
    batch = tiny_batch(tasks=25)
    _, _, scores = evaluate(learner, itertools.repeat(batch), steps=1, per_task=True)
    assert scores.shape == (600,)
    assert "evaluate: 100%" in (err := capsys.readouterr().err) and "600/600" in err
    evaluate(learner, itertools.repeat(batch), 30, 1)
    assert "evaluate: 100%" in (err := capsys.readouterr().err) and "30/30" in err
    evaluate(learner, itertools.repeat(batch), 30, 1, progress=False)
    assert "evaluate" not in capsys.readouterr().err
    with pytest.raises(ValueError, match="task stream ended after 2 meta-batches"):
        evaluate(learner, iter([batch, batch]), 60, 1, progress=False)  # 50 tasks, then nothing


def test_evaluate_takes_two_tasks_and_its_mask_noise_from_seed():
    """Two tasks are enough for a CI (fewer are refused); an MT-net's test-time mask noise is drawn from ``seed``
    (default 0): the same seed gives the same scores, another seed other scores."""
    from metatuv.meta import evaluate, get_preset
    from metatuv.nn import mlp

    torch.manual_seed(0)
    model = mlp([1, 8, 1], True, False, True).double()
    learner = MetaLearner.from_preset(model, get_preset("mtnet"), mse, 0.3, 1)
    batch = tuple(torch.randn(4, 5, 1, dtype=D) for _ in range(4))
    batches = lambda: itertools.repeat(batch)  # noqa: E731
    mean, ci = evaluate(learner, batches(), 2, progress=False)
    assert torch.isfinite(torch.tensor([mean, ci])).all()
    with pytest.raises(ValueError, match="tasks=1 must be >= 2"):
        evaluate(learner, batches(), 1, progress=False)
    default = evaluate(learner, batches(), 4, progress=False, per_task=True)[2]
    torch.testing.assert_close(default, evaluate(learner, batches(), 4, progress=False, seed=0, per_task=True)[2])
    assert not torch.equal(default, evaluate(learner, batches(), 4, progress=False, seed=1, per_task=True)[2])


def test_evaluate_vectorize_loop_scores_one_task_at_a_time(monkeypatch):
    """``vectorize="loop"`` never vmaps (a model with data-dependent control flow, which vmap refuses, evaluates);
    ``"vmap"`` does, in one call per chunk; the two give the same scores (float64)."""
    from metatuv.meta import evaluate
    from metatuv.meta import evaluation as ev

    class Branchy(nn.Module):  # `if` on a tensor's value: fine eagerly, an error under vmap
        def __init__(self):
            super().__init__()
            self.lin = TUVLinear(2, 2, dtype=D)

        def forward(self, x):
            out = self.lin(x)
            return out if out.sum() > -1e9 else -out

    torch.manual_seed(0)
    batch = tiny_batch(tasks=6)
    scores = {}
    calls = []
    real = ev.vmap
    monkeypatch.setattr(ev, "vmap", lambda f: calls.append(1) or real(f))
    for vectorize in ("loop", "vmap"):
        torch.manual_seed(0)
        learner = MetaLearner(Branchy(), half_sse, lr=0.1, steps=1, vectorize=vectorize)
        if vectorize == "vmap":
            with pytest.raises(RuntimeError):
                evaluate(learner, itertools.repeat(batch), 6, 1, progress=False)
            learner = MetaLearner(nn.Sequential(learner.model.lin), half_sse, lr=0.1, steps=1, vectorize=vectorize)
        calls.clear()
        scores[vectorize] = evaluate(learner, itertools.repeat(batch), 6, 1, progress=False, per_task=True)[2]
        assert len(calls) == (0 if vectorize == "loop" else 1), (vectorize, calls)
    torch.testing.assert_close(scores["loop"], scores["vmap"], rtol=0, atol=1e-12)


def test_calling_the_learner_gives_every_tasks_query_loss_with_gradients():
    """learner(batch, extras) = task_losses(batch, extras): the query loss of each task after its inner loop,
    differentiable w.r.t. the model's and the rule's parameters (module-style use, e.g. under a wrapper)."""
    torch.manual_seed(0)
    learner = MetaLearner(mlp([1, 5, 1], use_mask=True).double(), mse, 0.1, 2, lr_mode="metasgd")
    batch = tuple(torch.randn(3, 4, 1, dtype=D) for _ in range(4))
    extras = learner.sample_extras(3, torch.Generator().manual_seed(1))
    out = learner(batch, extras)
    assert out.shape == (3,)
    torch.testing.assert_close(out, learner.task_losses(batch, extras), atol=0, rtol=0)
    grads = torch.autograd.grad(out.sum(), list(learner.parameters()), allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)  # T, V, U₀, b₀, mask logits, rates


def test_adapt_task_and_meta_loss_use_the_given_params_extras_and_backtracking():
    """adapt_task(params, …): the rule reads the mask logits from ``params`` (not the module's), one task's mask
    noise is drawn when no ``extra`` is given (consuming one task's draw of the global stream), ``backtrack`` reaches
    the inner loop; meta_loss(batch, params, extras) uses the params and extras it is given."""
    torch.manual_seed(0)
    learner = MetaLearner(mlp([1, 6, 1], use_mask=True).double(), mse, 0.1, 2)
    own = learner.params()
    other = {n: (p + 2.0 if n.endswith("mask_logit") else p).detach() for n, p in own.items()}
    xs, ys = torch.randn(5, 1, dtype=D), torch.randn(5, 1, dtype=D)
    extra = {k: v[0] for k, v in learner.sample_extras(1, torch.Generator().manual_seed(3)).items()}
    adapted = learner.adapt_task(other, xs, ys, extra=extra)
    by_hand = learner.problem.adapt(other, xs, ys, extra, rule_params=learner.meta_params(other))
    mine = learner.adapt_task(own, xs, ys, extra=extra)
    assert torch.equal(adapted["0.U"], by_hand["0.U"]) and not torch.allclose(adapted["0.U"], mine["0.U"])
    torch.manual_seed(5)
    drawn = learner.adapt_task(own, xs, ys)  # one task's noise from the global stream
    after = torch.rand(3)
    torch.manual_seed(5)
    noise = {k: v[0] for k, v in learner.sample_extras(1).items()}
    assert torch.equal(torch.rand(3), after)
    torch.testing.assert_close(drawn["0.U"], learner.adapt_task(own, xs, ys, extra=noise)["0.U"], atol=0, rtol=0)
    steep = MetaLearner(mlp([1, 6, 1]).double(), mse, 50.0, 5)  # α = 50 runs away; backtracked steps cannot
    loss = lambda p: mse(steep.problem.forward(p, xs), ys).item()  # noqa: E731
    start = steep.params()
    assert loss(steep.adapt_task(start, xs, ys, backtrack=8)) <= loss(start) < loss(steep.adapt_task(start, xs, ys))
    batch = tuple(torch.randn(3, 4, 1, dtype=D) for _ in range(4))
    extras = learner.sample_extras(3, torch.Generator().manual_seed(4))
    expected = learner.task_losses(batch, extras, other).mean()
    torch.testing.assert_close(learner.meta_loss(batch, other, extras), expected, atol=0, rtol=0)
    assert not torch.allclose(learner.meta_loss(batch, own, extras), expected)


def test_a_resumed_meta_train_bar_counts_from_start_to_steps(capsys):
    """Resuming at step 2 of 4: the bar reads 2/4 then 4/4 (it showed "4it" with no total before)."""
    torch.manual_seed(0)
    learner = MetaLearner(mlp([1, 4, 1]).double(), mse, 0.1, 1)
    batches = iter([tuple(torch.randn(2, 3, 1, dtype=D) for _ in range(4))] * 2)
    history = meta_train(learner, batches, steps=4, start=2, history=[1.0, 1.0], progress=True)
    err = capsys.readouterr().err
    assert len(history) == 4 and "| 2/4 " in err and "| 4/4 " in err
    assert not re.search(r"meta-train: \d+it \[", err)  # the form without a total


def test_meta_train_shards_the_meta_batch_and_all_reduces(monkeypatch):
    """shard=(rank, world > 1): backward gets the shard, and the gradients and the loss go through allreduce_ (here a
    recording stand-in for the process group: tests/test_distributed.py runs real ones)."""
    import metatuv.meta.loop as loop

    torch.manual_seed(0)
    learner = MetaLearner(mlp([1, 4, 1]).double(), mse, 0.1, 1)
    shards, reduced = [], []
    backward = learner.backward
    learner.backward = lambda batch, generator, shard: shards.append(shard) or backward(batch, generator, shard)
    monkeypatch.setattr(loop, "allreduce_", lambda params, loss: reduced.append((list(params), loss)) or 2 * loss)
    batch = tuple(torch.randn(4, 3, 1, dtype=D) for _ in range(4))
    half = learner.task_losses(tuple(b[2:] for b in batch)).sum().item() / 4  # rank 1's tasks, over all 4
    history = meta_train(learner, iter([batch]), steps=1, shard=(1, 2), progress=False)
    assert shards == [(1, 2)] and len(reduced) == 1
    params, loss = reduced[0]
    assert [id(p) for p in params] == [id(p) for p in learner.parameters()]
    assert loss.item() == pytest.approx(half, rel=1e-6) and history == [pytest.approx(2 * loss.item())]
    meta_train(learner, iter([batch]), steps=1, shard=(0, 1), progress=False)  # one process: nothing to reduce
    assert len(reduced) == 1


def test_skip_mode_stops_at_the_nonfinite_update_itself_and_large_parameters_are_fine():
    """nonfinite="skip" synchronizes every step, so an update leaving a NaN parameter stops at that step (not at the
    next log); the check is on max |θ|, so a finite 1e30 in a float32 model is no alarm."""
    torch.manual_seed(0)
    learner = MetaLearner(mlp([1, 4, 1]), mse, 0.1, 1)  # float32
    batch = tuple(torch.randn(2, 3, 1) for _ in range(4))
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.0)
    step = optimizer.step

    def spoiled(*a, **k):
        out = step(*a, **k)
        if len(seen) == 2:
            with torch.no_grad():
                learner.model[0].bias[0] = float("nan")
        return out

    optimizer.step, seen = spoiled, []
    with pytest.raises(NonFiniteLoss, match="meta-parameters became nan in the update of meta-step 1 "):
        meta_train(
            learner,
            itertools.repeat(batch),
            5,
            optimizer=optimizer,
            nonfinite="skip",
            log_every=100,
            on_step=seen.append,
            progress=False,
        )
    assert seen == [0, 1]
    big = MetaLearner(mlp([1, 4, 1]), mse, 0.1, 1)
    big.spare = nn.Parameter(torch.full((4,), 1e30))  # (outside the model) a 2-norm would overflow float32
    history = meta_train(
        big, itertools.repeat(batch), 2, optimizer=torch.optim.SGD(big.parameters(), lr=0.0), progress=False
    )
    assert len(history) == 2


def test_task_losses_compile_flag_and_default_extras(monkeypatch):
    """A learner built with compile=True compiles its func path (torch.compile stubbed: test_compile compiles for
    real), not the higher one; query_losses(compile=True) too; task_losses draws mask noise for every task when no
    extras are given."""
    from metatuv.meta import query_losses

    monkeypatch.setattr(torch, "compile", lambda fn, options=None: fn)
    torch.manual_seed(0)
    batch = tuple(torch.randn(3, 4, 1, dtype=D) for _ in range(4))
    learner = MetaLearner(mlp([1, 5, 1], use_mask=True).double(), mse, 0.1, 1, compile=True)
    extras = learner.sample_extras(3, torch.Generator().manual_seed(1))
    compiled = learner.task_losses(batch, extras)
    assert len(learner.problem.compiled) == 1
    torch.testing.assert_close(learner.task_losses(batch, extras, backend="higher"), compiled, atol=1e-12, rtol=0)
    assert len(learner.problem.compiled) == 1  # higher: not compiled
    plain = MetaLearner(mlp([1, 5, 1], use_mask=True).double(), mse, 0.1, 1)
    query_losses(plain, plain.meta_params(), batch, plain.sample_extras(3), compile=True)
    assert len(plain.problem.compiled) == 1
    assert plain.task_losses(batch).shape == (3,)  # mask noise drawn for the 3 tasks


@pytest.mark.parametrize(
    ("preset", "given", "expected"),
    [("maml", None, False), ("fomaml", None, True), ("maml", True, True), ("tuv", False, False)],
)
def test_from_preset_first_order_is_the_presets_or_the_callers(preset, given, expected):
    from metatuv.meta import get_preset

    p = get_preset(preset)
    kw = {} if given is None else {"first_order": given}
    learner = MetaLearner.from_preset(mlp([1, 4, 1], p.use_T, p.use_V, p.use_mask), p, mse, 0.1, 1, **kw)
    assert learner.problem.first_order is expected


def test_learner_defaults():
    """MetaLearner(model, loss, lr, steps): second order, fixed rate, no curvature / KFO, τ = 1, all of U and the
    biases fast, backend func with vectorize auto, no chunks, not compiled, plain test-time steps."""
    model = mlp([1, 4, 1], use_mask=True)
    learner = MetaLearner(model, mse, 0.1, 1)
    assert learner.problem.first_order is False and learner.rule.lr_mode == "fixed"
    assert not learner.rule.curvature and not learner.rule.kfo and learner.rule.temperature == 1.0
    assert learner.fast_names == ["0.U", "0.bias", "2.U", "2.bias"] and list(learner.rule.parameters()) == []
    assert (learner.backend, learner.vectorize, learner.chunk_size, learner.compile) == ("func", "auto", None, False)
    assert learner.backtrack == 0


def test_evaluate_backtracks_as_the_learner_says_unless_told():
    """evaluate(backtrack=None) uses learner.backtrack, an explicit value wins: with α = 50 plain steps run away
    and backtracked ones cannot (test_backtrack.py covers the method itself)."""
    from metatuv.meta import evaluate

    torch.manual_seed(0)
    batches = [tuple(torch.randn(2, 5, 1, dtype=D) for _ in range(4))]
    scores, model = {}, mlp([1, 6, 1]).double()
    for default in (0, 8):
        learner = MetaLearner(copy.deepcopy(model), mse, 50.0, 5, backtrack=default)
        for given in (None, 0, 8):
            mean, _ = evaluate(learner, iter(batches), tasks=2, progress=False, backtrack=given)
            scores[default, given] = mean
    assert scores[8, None] == scores[8, 8] == scores[0, 8] < scores[0, 0] == scores[0, None] == scores[8, 0]
