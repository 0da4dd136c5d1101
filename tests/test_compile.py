"""inner.compile: the torch.compile'd meta-batch and meta-gradient give the eager ones (float64, ≤ 1e-10).

Each compile takes tens of seconds on 2 CPU cores, hence the slow marker (they still run in CI).
"""

import pytest
import torch
from test_backends import build, meta_grads

from metatuv.meta import PRESETS, MetaLearner, get_preset, meta_train, mse
from metatuv.nn import bound_factors, mlp

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def fresh_compile_cache():
    """Every test compiles afresh: past dynamo's recompile limit a function silently runs eagerly, and a
    compiled-vs-eager comparison would then compare eager with eager."""
    torch._dynamo.reset()


def compiled_vs_eager(learner, batch, extras, vectorize):
    learner.compile = False
    ref_loss, ref = meta_grads(learner, batch, extras, "func", vectorize)
    learner.compile = True
    loss, grads = meta_grads(learner, batch, extras, "func", vectorize)
    learner.compile = False
    assert abs(loss - ref_loss) <= 1e-10
    assert grads.keys() == ref.keys() and len(ref) == len(list(learner.parameters()))
    for n in ref:
        err = (grads[n] - ref[n]).abs().max().item()
        assert err <= 1e-10, (n, err)


@pytest.mark.parametrize(
    ("preset", "arch", "vectorize"),
    [("mtuv", "mlp", "vmap"), ("tuv", "conv4", "loop")],
    ids=["mtuv-mlp-vmap", "tuv-conv4bn-loop"],
)
def test_compiled_meta_gradients_equal_eager(preset, arch, vectorize):
    learner, batch, extras = build(preset, arch, steps=2, first_order=False)
    compiled_vs_eager(learner, batch, extras, vectorize)


@pytest.mark.parametrize(
    ("preset", "arch", "vectorize", "chunk_size", "freeze"),
    [
        ("mtuv", "mlp", "vmap", None, "model.2.T"),
        ("metasgd", "mlp", "vmap", 2, None),
        ("tuv", "conv4", "loop", 1, None),  # one task per chunk: a third of the graph to compile
    ],
    ids=["mtuv-mlp-vmap-frozenT", "metasgd-mlp-vmap-chunk2", "tuv-conv4bn-loop-chunk1"],
)
def test_compiled_backward_equals_eager(preset, arch, vectorize, chunk_size, freeze):
    """MetaLearner.backward with compile: one compiled torch.func.grad graph gives autograd's .grad (≤ 1e-10).

    Covers the learned rates (metasgd's rule parameters), MT-net masks, chunks accumulating into .grad, and a
    frozen factor (requires_grad=False, as with metric.mode=statistics), which must get no gradient.
    """
    learner, batch, _ = build(preset, arch, steps=2, first_order=False)
    learner.vectorize, learner.chunk_size = vectorize, chunk_size
    if freeze:
        dict(learner.named_parameters())[freeze].requires_grad_(False)
    out = []
    for compile in (False, True):
        learner.compile = compile
        learner.zero_grad(set_to_none=True)
        loss = learner.backward(batch, torch.Generator().manual_seed(3))
        out.append((loss, {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}))
    learner.compile = False
    (ref_loss, ref), (loss, grads) = out
    assert abs(loss - ref_loss).item() <= 1e-10
    trainable = [n for n, p in learner.named_parameters() if p.requires_grad]
    assert sorted(grads) == sorted(ref) == sorted(trainable)
    for n in ref:
        err = (grads[n] - ref[n]).abs().max().item()
        assert err <= 1e-10, (n, err)


def test_compiled_training_equals_eager():
    """Five meta-steps of sinusoid-shaped training: the same parameters with and without compile."""
    finals = []
    for compile in (False, True):
        torch.manual_seed(0)
        model = mlp([1, 40, 40, 1]).double()
        learner = MetaLearner(model, mse, 0.01, 1, compile=compile)
        g = torch.Generator().manual_seed(1)
        batches = iter(
            [tuple(torch.randn(4, 10, 1, generator=g, dtype=torch.float64) for _ in range(4)) for _ in range(5)]
        )
        meta_train(learner, batches, 5, progress=False)
        finals.append({n: p.detach().clone() for n, p in learner.named_parameters()})
    for n in finals[0]:
        assert torch.allclose(finals[0][n], finals[1][n], atol=1e-10, rtol=0), n


def test_compile_needs_func_backend():
    with pytest.raises(ValueError, match="compile=True needs backend='func'"):
        MetaLearner(mlp([1, 4, 1]), mse, 0.01, 1, backend="higher", compile=True)


def test_every_learner_stays_compiled():
    """Compiled meta-gradients are cached per learner: past dynamo's recompile limit (8 distinct models through one
    shared function) every new learner still compiles its own graph instead of falling back to eager, as a multirun
    over the presets does (dynamo's frame counters: a fallback counts a frame that did not compile ok)."""
    from torch._dynamo.utils import counters

    counters.clear()
    g = torch.Generator().manual_seed(0)
    batch = tuple(torch.randn(2, 3, 1, generator=g, dtype=torch.float64) for _ in range(4))
    presets = sorted(PRESETS)  # ten distinct learners (parameters, rules, first order, head only)
    assert len(presets) > torch._dynamo.config.recompile_limit
    learners = []
    for name in presets:
        p = get_preset(name)
        torch.manual_seed(0)
        model = mlp((1, 3, 1), use_T=p.use_T, use_V=p.use_V, use_mask=p.use_mask).double()
        model = bound_factors(model, p.bound, 10.0)  # tuv_bounded: λmax(P) < 10 (α = 0.1: max_step 1)
        learner = MetaLearner.from_preset(model, p, mse, 0.1, 1, compile=True)
        ok_before = counters["frames"]["ok"]
        learner.backward(batch, torch.Generator().manual_seed(1))
        assert counters["frames"]["ok"] > ok_before, f"{name} ran eagerly: {dict(counters['frames'])}"
        learners.append(learner)  # kept alive: a freed model's guards would let dynamo reuse its cache entry
    assert counters["frames"]["total"] == counters["frames"]["ok"], dict(counters["frames"])
    # the first learner's compiled graph is still its own: a second step compiles nothing new
    ok = counters["frames"]["ok"]
    learners[0].backward(batch, torch.Generator().manual_seed(2))
    assert counters["frames"]["ok"] == ok and counters["frames"]["total"] == ok
