"""adapt(): pure differentiable SGD, checked against torch.optim.SGD (as higher's tests do)."""

import copy

import pytest
import torch
from conftest import random_factors
from torch import nn

from metatuv.inner import adapt
from metatuv.nn import mlp, split_params

D = torch.float64


def setup():
    model = mlp([2, 5, 3], use_T=True, use_V=True).double()
    for m in model.modules():
        if hasattr(m, "U"):
            random_factors(m)
    x, y = torch.randn(6, 2, dtype=D), torch.randn(6, 3, dtype=D)
    return model, x, y


def support_loss_fn(model, static, x, y):
    def loss(fast):
        out = torch.func.functional_call(model, {**static, **fast}, (x,))
        return ((out - y) ** 2).mean()

    return loss


@pytest.mark.parametrize("steps", [1, 3])
def test_adapt_equals_torch_optim_sgd_on_fast_params(steps):
    model, x, y = setup()
    fast, static = split_params(model)
    adapted = adapt(support_loss_fn(model, static, x, y), fast, steps, lr=0.3)

    ref = copy.deepcopy(model)
    ref_fast, _ = split_params(ref)
    opt = torch.optim.SGD(ref_fast.values(), lr=0.3)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(ref(x), y).backward()
        opt.step()
    for name, p in ref_fast.items():
        assert torch.allclose(adapted[name], p, atol=1e-12, rtol=0), name
    # static parameters (T, V) were not touched by the reference optimizer nor returned by adapt
    assert set(adapted) == set(fast)


def test_adapt_is_pure():
    model, x, y = setup()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fast, static = split_params(model)
    adapted = adapt(support_loss_fn(model, static, x, y), fast, 2, lr=0.5)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) and p.grad is None
    for n in fast:
        assert adapted[n] is not fast[n] and adapted[n].grad_fn is not None


def test_no_grad_evaluation_mode_same_values_without_graph():
    model, x, y = setup()
    fast, static = split_params(model)
    loss = support_loss_fn(model, static, x, y)
    with_graph = adapt(loss, fast, 5, lr=0.1)
    with torch.no_grad():
        graph_free = adapt(loss, fast, 5, lr=0.1)
    for n in fast:
        assert graph_free[n].grad_fn is None and not graph_free[n].requires_grad
        assert torch.allclose(graph_free[n], with_graph[n], atol=1e-12, rtol=0)


def test_adapt_rejects_negative_steps():
    model, x, y = setup()
    fast, static = split_params(model)
    with pytest.raises(ValueError, match="steps=-1"):
        adapt(support_loss_fn(model, static, x, y), fast, -1, lr=0.1)
