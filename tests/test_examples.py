"""The recipes under examples/: each one's meta-gradient equals MetaLearner's (float64, ≤ 1e-10), T and V (and the
MT-net mask logits) get meta-gradients, and each script runs end to end."""

import importlib.util
from pathlib import Path

import pytest
import torch

from metatuv.meta import MetaLearner, get_preset, mse
from metatuv.nn import mlp

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
D = torch.float64


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def setup(preset: str):
    p = get_preset(preset)
    torch.manual_seed(0)
    model = mlp((1, 6, 5, 1), use_T=p.use_T, use_V=p.use_V, use_mask=p.use_mask).double()
    with torch.no_grad():  # non-trivial factors and mask logits
        for name, q in model.named_parameters():
            if name.endswith((".T", ".V")):
                q.add_(0.3 * torch.randn_like(q))
            if name.endswith("mask_logit"):
                q.add_(torch.randn_like(q))
    g = torch.Generator().manual_seed(1)
    batch = tuple(torch.randn(3, 5, 1, generator=g, dtype=D) for _ in range(4))
    learner = MetaLearner.from_preset(model, p, mse, 0.3, 2)
    noise = learner.sample_extras(3, torch.Generator().manual_seed(2))
    learner.zero_grad()
    learner.meta_loss(batch, extras=noise).backward()
    ref = {n: q.grad.clone() for n, q in model.named_parameters()}
    model.zero_grad()
    return model, batch, noise, ref


def check(grads: dict, ref: dict) -> None:
    assert grads.keys() == ref.keys()
    for n in ref:
        assert torch.allclose(grads[n], ref[n], atol=1e-10, rtol=0), n
        if n.endswith((".T", ".V", "mask_logit")):
            assert ref[n].abs().max() > 1e-6, n  # meta-learned: a real gradient reaches it


@pytest.mark.parametrize("preset", ["tuv", "mtnet"])
def test_learn2learn_recipe(preset):
    ex = load("learn2learn_maml")
    model, batch, noise, ref = setup(preset)
    maml = ex.l2l.algorithms.MAML(model, lr=0.3)
    ex.meta_loss(maml, batch, 0.3, 2, {"module." + k: v for k, v in noise.items()}).backward()
    check({n: q.grad for n, q in model.named_parameters()}, ref)


@pytest.mark.parametrize("preset", ["tuv", "mtnet"])
def test_higher_recipe(preset):
    ex = load("higher_innerloop")
    model, batch, noise, ref = setup(preset)
    ex.meta_loss(model, batch, 0.3, 2, noise).backward()
    check({n: q.grad for n, q in model.named_parameters()}, ref)


@pytest.mark.parametrize("preset", ["tuv", "mtnet"])
def test_torch_func_recipe(preset):
    ex = load("torch_func")
    model, batch, noise, ref = setup(preset)
    params = {n: q.detach() for n, q in model.named_parameters()}
    check(torch.func.grad(ex.meta_loss_fn(model, 0.3, 2))(params, batch, noise), ref)


@pytest.mark.parametrize("name", ["learn2learn_maml", "higher_innerloop", "torch_func"])
@pytest.mark.parametrize("mtnet", [False, True], ids=["tuv", "mtnet"])
def test_recipe_scripts_run(name, mtnet):
    loss = load(name).main(["--steps", "2", *(["--mtnet"] if mtnet else [])])
    assert loss == loss and loss >= 0  # a finite, non-negative MSE
