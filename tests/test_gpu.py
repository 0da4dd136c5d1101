"""On the GPU, every preset's meta-gradient equals the CPU one (float64, ≤ 1e-9 relative), looped and vmapped.

Run by experiments/benchmark/run_gpu.sh on a lent machine (``pytest -m gpu tests/test_gpu.py``). With
``METATUV_TEST_DEVICE=cpu`` (run_gpu.sh --smoke) the same code runs on the CPU, checking the plumbing only.
Imports nothing beyond torch, pytest and metatuv (the lent machine has no hydra, higher or learn2learn).
"""

import os

import pytest
import torch

from metatuv.meta import PRESETS, MetaLearner, cross_entropy, get_preset, mse
from metatuv.nn import bound_factors, conv4, mlp

BOUNDED_RAW = ("T_raw", "V_raw", "bound_logit", "T_skew", "V_skew", "T_logit", "V_logit")  # metatuv.nn.bounded
DEVICE = os.environ.get("METATUV_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def build(preset: str, arch: str, seed: int = 0):
    """A float64 learner with T, V and mask logits off their initial values, and a 3-task batch (on the CPU)."""
    torch.manual_seed(seed)
    p = get_preset(preset)
    if arch == "mlp":
        model, loss = mlp([2, 6, 5, 3], p.use_T, p.use_V, p.use_mask), mse
        batch = (torch.randn(3, 6, 2), torch.randn(3, 6, 3), torch.randn(3, 5, 2), torch.randn(3, 5, 3))
    else:
        model, loss = conv4(3, 1, 4, 16, "stride", p.use_T, p.use_V, p.use_mask), cross_entropy
        x = lambda n: torch.randn(3, n, 1, 16, 16)  # noqa: E731
        batch = (x(6), torch.randint(0, 3, (3, 6)), x(5), torch.randint(0, 3, (3, 5)))
    model = bound_factors(model.double(), p.bound, 4.0)  # tuv_bounded: λmax(P) < 4
    with torch.no_grad():
        for name, q in model.named_parameters():  # T, V (or a bounded layer's raw parameters), mask logits
            if name.rsplit(".", 1)[-1] in ("T", "V", "mask_logit", *BOUNDED_RAW):
                q.add_(0.3 * torch.randn_like(q))
    learner = MetaLearner.from_preset(model, p, loss, lr=0.1, steps=2)
    batch = tuple(b.double() if b.is_floating_point() else b for b in batch)
    return learner, batch


def meta_grads(learner, batch, device: str, vectorize: str) -> dict[str, torch.Tensor]:
    extras = learner.to("cpu").sample_extras(3, torch.Generator().manual_seed(1))  # the same noise on every device
    extras = {k: v.to(device) for k, v in extras.items()}
    learner = learner.to(device)
    learner.vectorize = vectorize
    learner.zero_grad(set_to_none=True)
    learner.task_losses(tuple(b.to(device) for b in batch), extras, backend="func").mean().backward()
    return {n: p.grad.detach().cpu() for n, p in learner.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("vectorize", ["loop", "vmap"])
@pytest.mark.parametrize("arch", ["mlp", "conv4"])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_device_meta_gradient_equals_cpu(preset, arch, vectorize):
    learner, batch = build(preset, arch)
    ref = meta_grads(learner, batch, "cpu", "loop")
    got = meta_grads(learner, batch, DEVICE, vectorize)
    assert got.keys() == ref.keys() and len(ref) == len(list(learner.parameters()))
    for n in ref:
        scale = ref[n].abs().max().item() + 1e-12
        err = (got[n] - ref[n]).abs().max().item()
        assert err <= 1e-9 * max(scale, 1.0), (preset, arch, vectorize, n, err, scale)
