"""The four inner-loop backends give the same meta-gradients (float64, ≤ 1e-10), for every preset."""

import pytest
import torch
from conftest import random_factors
from torch import nn

from metatuv.meta import PRESETS, MetaLearner, cross_entropy, get_preset, mse
from metatuv.nn import TUVLayer, bound_factors, conv4, mlp

D = torch.float64
PATHS = [("func", "loop"), ("func", "vmap"), ("higher", "loop"), ("learn2learn", "loop")]


def build(preset_name: str, arch: str, steps: int, first_order: bool, seed: int = 0):
    torch.manual_seed(seed)
    p = get_preset(preset_name)
    if arch == "mlp":
        model = mlp([2, 6, 5, 3], p.use_T, p.use_V, p.use_mask)
        loss = mse
        x = lambda t, n: torch.randn(t, n, 2)  # noqa: E731
        y = lambda t, n: torch.randn(t, n, 3)  # noqa: E731
    else:  # conv4 with primitive batch norm, 3-way
        model = conv4(3, 1, 4, 16, "stride", p.use_T, p.use_V, p.use_mask)
        loss = cross_entropy
        x = lambda t, n: torch.randn(t, n, 1, 16, 16)  # noqa: E731
        y = lambda t, n: torch.randint(0, 3, (t, n))  # noqa: E731
    model = bound_factors(model.double(), p.bound, 4.0)  # tuv_bounded: λmax(P) < 4
    for m in model.modules():
        if isinstance(m, TUVLayer):
            random_factors(m)
            if m.mask_logit is not None:
                with torch.no_grad():
                    m.mask_logit.copy_(torch.randn_like(m.mask_logit))
    learner = MetaLearner.from_preset(model, p, loss, lr=0.1, steps=steps, first_order=first_order)
    tasks = 3
    batch = (x(tasks, 6).double(), y(tasks, 6), x(tasks, 5).double(), y(tasks, 5))
    batch = tuple(b.double() if b.is_floating_point() else b for b in batch)
    extras = learner.sample_extras(tasks, torch.Generator().manual_seed(seed + 1))
    return learner, batch, extras


def meta_grads(learner, batch, extras, backend, vectorize):
    learner.zero_grad(set_to_none=True)
    learner.vectorize = vectorize
    loss = learner.task_losses(batch, extras, backend=backend).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}


def assert_all_paths_agree(learner, batch, extras):
    ref_loss, ref = meta_grads(learner, batch, extras, *PATHS[0])
    assert len(ref) == len(list(learner.parameters())), "every meta parameter must get a gradient"
    for path in PATHS[1:]:
        loss, grads = meta_grads(learner, batch, extras, *path)
        assert abs(loss - ref_loss) <= 1e-10, path
        assert grads.keys() == ref.keys(), path
        for n in ref:
            err = (grads[n] - ref[n]).abs().max().item()
            assert err <= 1e-10, (path, n, err)
    return ref


@pytest.mark.parametrize("first_order", [False, True], ids=["2nd", "1st"])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("arch", ["mlp", "conv4"])
@pytest.mark.parametrize("preset", ["maml", "tnet", "tuv", "mtnet"])
def test_backends_agree(preset, arch, steps, first_order):
    learner, batch, extras = build(preset, arch, steps, first_order)
    grads = assert_all_paths_agree(learner, batch, extras)
    assert all(torch.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("preset", sorted(set(PRESETS) - {"maml", "tnet", "tuv", "mtnet"}))
def test_backends_agree_other_presets(preset):
    learner, batch, extras = build(preset, "mlp", steps=2, first_order=False)
    assert_all_paths_agree(learner, batch, extras)


def test_chunked_backward_equals_whole_batch():
    learner, batch, extras = build("mtuv", "conv4", steps=2, first_order=False)
    grads = []
    for chunk in (None, 1, 2):
        learner.zero_grad(set_to_none=True)
        learner.chunk_size = chunk
        gen = torch.Generator().manual_seed(5)
        learner.backward(batch, gen)
        grads.append({n: p.grad.clone() for n, p in learner.named_parameters()})
    for other in grads[1:]:
        for n in grads[0]:
            assert torch.allclose(other[n], grads[0][n], atol=1e-12, rtol=0), n


def test_vmap_of_torch_fused_batch_norm_is_avoided():
    """Our models hold no torch BatchNorm (its fused kernel has wrong 2nd-order grads under vmap, functorch#534)."""
    model = conv4(5)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize("backend", ["higher", "learn2learn"])
def test_stateful_backends_refuse_functional_params_and_name_themselves(backend):
    """higher and learn2learn adapt the module's own parameters: other tensors as params are refused in one line."""
    learner = MetaLearner(mlp([1, 4, 1]).double(), mse, 0.1, 1)
    params = {n: p.detach().clone().requires_grad_() for n, p in learner.params().items()}
    batch = tuple(torch.randn(2, 3, 1, dtype=D) for _ in range(4))
    with pytest.raises(ValueError, match=f"inner backend '{backend}' adapts the model's own parameters"):
        learner.task_losses(batch, params=params, backend=backend)
    assert learner.task_losses(batch, backend=backend).shape == (2,)  # the model's own: accepted


def test_compiled_memoizes_one_private_copy_per_owner(monkeypatch):
    """``compiled`` hands torch.compile a copy of fn under a new code name (dynamo counts recompiles per code
    object), with fn's defaults, keyword defaults and closure, and the cpp_wrapper option when asked; one per
    (fn, cpp_wrapper) in the owner's cache, a new one without a cache. (torch.compile itself is stubbed here:
    tests/test_compile.py compiles for real.)"""
    from metatuv.inner.backends import compiled

    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, options=None: seen.append((fn, options)) or fn)
    offset = 1

    def fn(x, a=2, *, b=3):
        return x * a + b + offset

    cache: dict = {}
    copy = compiled(fn, cache=cache)
    assert compiled(fn, cache=cache) is copy and len(seen) == 1 and seen[0][1] is None
    assert copy is not fn and copy.__code__ is not fn.__code__ and copy.__name__.startswith("fn__compiled")
    assert copy(1) == fn(1) == 6 and copy(1, 3, b=0) == fn(1, 3, b=0) == 4  # defaults, kw defaults, closure
    cpp = compiled(fn, True, cache)
    assert cpp is not copy and seen[-1][1] == {"cpp_wrapper": True} and compiled(fn, True, cache) is cpp
    other = compiled(fn, cache={})
    assert other is not copy and other.__name__ != copy.__name__ and compiled(fn) is not compiled(fn)


def test_task_losses_defaults_and_dispatch(monkeypatch):
    """task_losses(problem, params, batch, extras): backend func, vectorize auto (vmap for > 1 task, the loop for
    one), not compiled, the rule reading ``params``; backend="higher" / "learn2learn" reach those backends (they
    refuse functional params), compile=True needs func. Which path ran is seen by the model: under vmap its input is
    a batched tensor."""
    from metatuv.inner import TaskProblem, task_losses
    from metatuv.meta.rule import InnerRule
    from metatuv.nn import fast_names

    torch.manual_seed(0)
    model = mlp([1, 5, 1], use_mask=True).double()
    names = fast_names(model)
    rule = InnerRule(model, names, 0.1, 1, "fixed", False, 1.0, False)
    problem = TaskProblem(model, mse, names, 1, False, rule.transform("", "rule."))  # mask logits read from params
    batched = []
    model.register_forward_pre_hook(lambda m, args: batched.append(torch._C._functorch.is_batchedtensor(args[0])))
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}

    def run(tasks, **kw):
        batch = tuple(torch.randn(tasks, 3, 1, dtype=D) for _ in range(4))
        extras = rule.mask_noise(tasks, torch.Generator().manual_seed(1), params["0.U"])
        reference = task_losses(problem, params, batch, extras, "func", "loop", False, params)
        batched.clear()
        out = task_losses(problem, params, batch, extras, **kw)
        torch.testing.assert_close(out, reference, atol=1e-12, rtol=0)
        return set(batched)

    assert run(2) == {True} and run(1) == {False}  # auto: vmap over 2 tasks, the loop for 1
    assert run(3, vectorize="loop") == {False} and run(1, vectorize="vmap") == {True}
    assert problem.compiled == {}  # not compiled by default
    xs, ys = torch.randn(3, 1, dtype=D), torch.randn(3, 1, dtype=D)
    extra = {k: v[0] for k, v in rule.mask_noise(1, torch.Generator().manual_seed(2), params["0.U"]).items()}
    adapted = problem.adapt(params, xs, ys, extra)  # the rule reads params by default
    for n, p in problem.adapt(params, xs, ys, extra, rule_params=params).items():
        torch.testing.assert_close(adapted[n], p, atol=0, rtol=0)
    monkeypatch.setattr(torch, "compile", lambda fn, options=None: fn)  # compile=True: through compiled(), stubbed
    assert run(2, compile=True) == {True} and run(1, compile=True) == {False}
    assert len(problem.compiled) == 2  # one copy of each path, kept in the problem's own cache
    batch = tuple(torch.randn(2, 3, 1, dtype=D) for _ in range(4))
    extras = rule.mask_noise(2, None, params["0.U"])
    own = dict(model.named_parameters())
    expected = task_losses(problem, own, batch, extras, "func", "loop", False, own)
    for backend in ("higher", "learn2learn"):
        with pytest.raises(ValueError, match=f"inner backend '{backend}' adapts the model's own parameters"):
            task_losses(problem, params, batch, extras, backend)
        # the rule reads the mask logits from the params by default here too
        torch.testing.assert_close(task_losses(problem, own, batch, extras, backend), expected, atol=1e-12, rtol=0)
        with pytest.raises(ValueError, match="inner.compile=true needs inner.backend=func"):
            task_losses(problem, params, batch, extras, backend, compile=True)
