"""Every preset × inner path against the naive references of tests/reference.py (no shared code, issue 19).

float64, every meta-parameter perturbed away from its initial value by seeded normal noise of 10% of its largest
entry (T, V, raw factors, rates, curvature; mask logits, all 0, by N(0, 0.1²)), 2 inner steps, MT-net mask
temperature 0.5; an MLP 1-40-40-1 on sinusoid tasks and conv4 (hidden 8, 28×28, 5-way). The learner's
meta-gradient (``MetaLearner.backward`` → ``.grad``) and meta-loss must equal the reference's within 1e-10.
"""

from functools import cache

import pytest
import reference
import torch

from metatuv.meta import PRESETS, MetaLearner, cross_entropy, get_preset, mse
from metatuv.nn import bound_factors, conv4, mlp

D = torch.float64
STEPS, TEMPERATURE, MAX_STEP, TOL = 2, 0.5, 2.0, 1e-10
PATHS = {
    "loop": {"backend": "func", "vectorize": "loop"},
    "vmap": {"backend": "func", "vectorize": "vmap"},
    "higher": {"backend": "higher"},
    "learn2learn": {"backend": "learn2learn"},
}
BENCHES = {"mlp": (reference.mlp_arch(3), 0.01), "conv4": (reference.CONV4, 0.4)}  # architecture, inner lr
NOISE_SEED = 3


def build(bench: str, preset: str, **kw) -> MetaLearner:
    torch.manual_seed(0)
    p = get_preset(preset)
    lr = BENCHES[bench][1]
    if bench == "mlp":
        model, loss = mlp((1, 40, 40, 1), p.use_T, p.use_V, p.use_mask), mse
    else:
        model, loss = conv4(5, 1, 8, 28, "stride", p.use_T, p.use_V, p.use_mask), cross_entropy
    model = bound_factors(model.to(D), p.bound, MAX_STEP / lr)
    learner = MetaLearner.from_preset(model, p, loss, lr, STEPS, mask_temperature=TEMPERATURE, **kw)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, t in sorted(learner.named_parameters()):  # 10% of the tensor's largest entry (mask logits 0: by 0.1)
            scale = t.abs().max().item() if t.numel() and t.abs().max() > 0 else 1.0
            t.add_(0.1 * scale * torch.randn(t.shape, generator=g, dtype=t.dtype))
    return learner


@cache
def batch(bench: str) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(2)
    if bench == "mlp":  # 3 sinusoid tasks y = a·sin(x + φ), 5 support and 6 query points
        a, phase = (
            0.1 + 4.9 * torch.rand(3, 1, 1, generator=g, dtype=D),
            3.14 * torch.rand(3, 1, 1, generator=g, dtype=D),
        )
        xs, xq = 10 * torch.rand(3, 5, 1, generator=g, dtype=D) - 5, 10 * torch.rand(3, 6, 1, generator=g, dtype=D) - 5
        return xs, a * torch.sin(xs + phase), xq, a * torch.sin(xq + phase)
    xs, xq = torch.randn(2, 5, 1, 28, 28, generator=g, dtype=D), torch.randn(2, 10, 1, 28, 28, generator=g, dtype=D)
    return xs, torch.arange(5).repeat(2, 1), xq, torch.randperm(10, generator=g).remainder(5).repeat(2, 1)


def learner_meta_gradient(learner: MetaLearner, bench: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    learner.zero_grad(set_to_none=True)
    loss = learner.backward(batch(bench), torch.Generator().manual_seed(NOISE_SEED))
    return loss, {n: torch.zeros_like(t) if t.grad is None else t.grad for n, t in learner.named_parameters()}


@cache
def reference_meta_gradient(bench: str, preset: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    learner = build(bench, preset)
    values = {n: t.detach() for n, t in learner.named_parameters()}
    tasks = len(batch(bench)[0])
    noise = learner.sample_extras(tasks, torch.Generator().manual_seed(NOISE_SEED))  # the very noise backward draws
    noise = {f"model.{n}": e for n, e in noise.items()}
    assert set(noise) == {n for n in values if n.endswith(".mask_logit")}, "mask noise for every mask logit"
    arch, lr = BENCHES[bench]
    return reference.meta_gradient(preset, arch, values, batch(bench), noise, lr, STEPS, TEMPERATURE, MAX_STEP)


def max_diff(bench: str, preset: str, learner: MetaLearner) -> float:
    ref_loss, ref = reference_meta_gradient(bench, preset)
    loss, got = learner_meta_gradient(learner, bench)
    assert got.keys() == ref.keys()
    diffs = {n: (got[n] - ref[n]).abs().max().item() for n in ref if ref[n].numel()}
    diffs["meta-loss"] = (loss - ref_loss).abs().item()
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= TOL, f"{bench}/{preset}: {worst} differs from the reference by {diffs[worst]:.2e}"
    return diffs[worst]


def test_every_preset_has_a_reference():
    assert set(reference.REFERENCES) == set(PRESETS)


def structurally_zero(bench: str, name: str) -> bool:
    """conv4's conv biases (and their learned rates) feed batch norm, which subtracts them again: ∂L/∂b = 0."""
    convs = reference.CONV4.layers[:-1]
    return bench == "conv4" and name in {f"model.{c}.bias" for c in convs} | {f"rule.lrs.{c}__bias" for c in convs}


@pytest.mark.parametrize("bench", list(BENCHES))
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_reference_reaches_every_meta_parameter(bench, preset):
    """No comparison is vacuous: the reference's meta-gradient is finite and nonzero for every meta-parameter."""
    loss, grads = reference_meta_gradient(bench, preset)
    assert torch.isfinite(loss) and loss > 0
    assert all(torch.isfinite(g).all() for g in grads.values())
    small = [n for n, g in grads.items() if g.abs().max() <= 1e-6 and not structurally_zero(bench, n)]
    assert not small, f"{bench}/{preset}: (near) zero reference meta-gradient for {small}"


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("bench", list(BENCHES))
def test_meta_gradient_equals_reference(bench, preset, path):
    max_diff(bench, preset, build(bench, preset, **PATHS[path]))


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["kfo", "lslr", "mtuv", "tuv_bounded"])
def test_compiled_meta_gradient_equals_reference(preset):
    max_diff("mlp", preset, build("mlp", preset, backend="func", vectorize="vmap", compile=True))
