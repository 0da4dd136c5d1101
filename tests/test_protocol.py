"""The evaluation protocol and the mechanics that no agreement test sees, each against a hand computation
(issue 22): support-only adaptation at evaluation, the 95% CI, primitive batch norm, Meta-Curvature on a conv,
the MT-net mask temperature inside the inner rule, gradient clipping, rotation per split."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metatuv.data.episodes import ClassImages
from metatuv.data.fewshot import FewShot
from metatuv.meta import MetaLearner, evaluate, mean_ci95, meta_train, mse
from metatuv.nn import BatchNorm, mlp, tuvify

D = torch.float64


# --- evaluation: adapt on the support set only, score the query set -------------------------------------------


def line_learner(lr):
    """y = u·x + b with u = b = 0 (MAML form: W = U), MSE loss."""
    model = mlp([1, 1], use_T=False, use_V=False).double()
    with torch.no_grad():
        model[0].U.zero_(), model[0].bias.zero_()
    return MetaLearner(model, mse, lr=lr, steps=1)


def constant_tasks(support_targets, query_targets, points=3):
    """Tasks whose inputs are all x = 1 and whose support / query targets are the given constants."""
    s, q = torch.tensor(support_targets, dtype=D), torch.tensor(query_targets, dtype=D)
    ones = lambda n: torch.ones(len(s), n, 1, dtype=D)  # noqa: E731
    return ones(points), s.view(-1, 1, 1) * ones(points), ones(points + 1), q.view(-1, 1, 1) * ones(points + 1)


SUPPORT = [1.0, 2.0, 0.0, -3.0, 4.0]
QUERY = [-1.0, -1.0, 3.0, 2.0, 0.5]


@pytest.mark.parametrize("vectorize", ["loop", "vmap"])
@pytest.mark.parametrize("steps", [1, 3])
def test_evaluate_adapts_on_the_support_set_and_scores_the_query_set(vectorize, steps):
    """At x = 1 with u = b = 0, support target s and lr α: each step moves u and b by −α·2(u + b − s), so the
    prediction p = u + b follows p_{k+1} = p_k + 4α(s − p_k), i.e. p_k = s·(1 − (1 − 4α)^k). With α = 1/8:
    p_k = s·(1 − 2^−k) and the query MSE is (p_k − q)². Adapting on the query set instead would give (1 − 2^−k)²·q²
    … hand values below; the mean and the CI follow from the five task scores (n − 1 in the variance)."""
    learner = line_learner(lr=0.125)
    learner.vectorize = vectorize
    batch = constant_tasks(SUPPORT, QUERY)
    mean, ci = evaluate(learner, itertools.repeat(batch), tasks=5, steps=steps, metric=mse, progress=False)
    f = 1 - 2.0**-steps
    scores = [(f * s - q) ** 2 for s, q in zip(SUPPORT, QUERY, strict=True)]
    m = sum(scores) / 5
    sd = math.sqrt(sum((x - m) ** 2 for x in scores) / 4)
    assert mean == pytest.approx(m, rel=1e-12, abs=1e-12)
    assert ci == pytest.approx(1.96 * sd / math.sqrt(5), rel=1e-12)
    leak = sum(((f - 1) * q) ** 2 for q in QUERY) / 5  # what adapting on the query set would score
    assert abs(mean - leak) > 1.0


def test_evaluate_takes_exactly_the_first_tasks_of_the_stream():
    """tasks=7 from meta-batches of 5: all of the first batch and the first two of the second, nothing else."""
    learner = line_learner(lr=0.125)
    first = constant_tasks(SUPPORT, QUERY)
    second = constant_tasks([1.0, -1.0, 9.0, 9.0, 9.0], [0.0, 0.0, -50.0, -50.0, -50.0])
    mean, _ = evaluate(learner, iter([first, second]), tasks=7, steps=1, metric=mse, progress=False)
    scores = [(0.5 * s - q) ** 2 for s, q in zip(SUPPORT + [1.0, -1.0], QUERY + [0.0, 0.0], strict=True)]
    assert mean == pytest.approx(sum(scores) / 7, rel=1e-12)


def test_mean_ci95_by_hand():
    """[1, 2, 3, 4]: mean 2.5, s² = (2.25 + 0.25 + 0.25 + 2.25)/3 = 5/3, half-width 1.96·√(5/3)/√4 = 1.2651745..."""
    mean, ci = mean_ci95(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert mean == 2.5
    assert ci == pytest.approx(1.96 * math.sqrt(5 / 3) / 2, rel=1e-12)
    assert ci == pytest.approx(1.265174559761, rel=1e-11)
    mean, ci = mean_ci95(torch.tensor([0.0, 1.0]))  # s = √½, n = 2
    assert (mean, ci) == (0.5, pytest.approx(1.96 * math.sqrt(0.5) / math.sqrt(2), rel=1e-12))


# --- primitive batch norm: torch's training-mode batch norm ----------------------------------------------------


@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 5, 2)], ids=["2d", "4d"])
def test_primitive_batch_norm_equals_torch_training_mode(shape):
    bn = BatchNorm(4, eps=1e-3, dtype=D)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, -1.0, 2.0, 1.5], dtype=D))
        bn.bias.copy_(torch.tensor([0.1, 0.0, -0.3, 2.0], dtype=D))
    x = 3 * torch.randn(*shape, dtype=D) + 1
    ref = F.batch_norm(x, None, None, bn.weight, bn.bias, training=True, eps=1e-3)
    assert torch.allclose(bn(x), ref, atol=1e-12, rtol=0)
    # by hand: the normalized output's variance per channel is σ²/(σ² + ε) with the biased (divide-by-N) σ²
    dims = (0,) if len(shape) == 2 else (0, 2, 3)
    view = (1, -1, *[1] * (len(shape) - 2))
    z = (bn(x) - bn.bias.view(view)) / bn.weight.view(view)
    var = x.var(dim=dims, unbiased=False)
    assert torch.allclose(z.var(dim=dims, unbiased=False), var / (var + 1e-3), atol=1e-10, rtol=0)


# --- Meta-Curvature on a conv layer ----------------------------------------------------------------------------


def test_metacurvature_conv_step_is_the_tensor_product_with_every_factor():
    """ΔU[o,i,f] = −α Σ_{a,b,p} M_o[o,a]·G[a,b,p]·M_i[b,i]·M_f[f,p] (G ×₁ M_o ×₂ M_iᵀ ×₃ M_f, f = kernel tap)."""
    torch.manual_seed(3)
    model = tuvify(nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(3 * 2 * 2, 2)), use_T=False, use_V=False)
    model = model.double()
    alpha = 0.1
    learner = MetaLearner(model, mse, lr=alpha, steps=1, curvature=True)
    names = {"0__U_o": 3, "0__U_i": 2, "0__U_f": 9}
    assert set(names) <= set(learner.rule.curvature.keys())
    with torch.no_grad():
        for k, n in names.items():
            learner.rule.curvature[k].add_(0.4 * torch.randn(n, n, dtype=D))  # non-identity, non-symmetric
    xs, ys = torch.randn(5, 2, 4, 4, dtype=D), torch.randn(5, 2, dtype=D)
    params = learner.params()
    U = params["0.U"].detach().requires_grad_()
    out = torch.func.functional_call(model, {**params, "0.U": U}, (xs,))
    (G,) = torch.autograd.grad(mse(out, ys), U)
    Mo, Mi, Mf = (learner.rule.curvature[k].detach() for k in names)
    expected = -alpha * torch.einsum("oa,abp,bi,fp->oif", Mo, G.flatten(2), Mi, Mf).view_as(G)
    with torch.no_grad():
        adapted = learner.adapt_task(params, xs, ys)
    assert torch.allclose(adapted["0.U"] - U.detach(), expected, atol=1e-13, rtol=0)
    assert not torch.allclose(Mf, Mf.T)  # the test tells M_f from M_fᵀ


# --- MT-net mask: the temperature reaches the inner rule ------------------------------------------------------


def assert_mask_gradient(learner, tau, alpha):
    """Row r of the MT-net step is m_r·α·g_r, with ∂m_r/∂ζ_r = σ'(z)/τ, z = (ζ_r + ℓ_r)/τ (straight-through). So for
    L = Σ C ⊙ U' + Σ c ⊙ b' (U' = U − α·m⊙G_U, b' = b − α·m⊙g_b): ∂L/∂ζ_r = −α (Σ_j C_rj·G_rj + c_r·g_r)·σ'(z_r)/τ.
    ``learner``: float64, model mlp([2, 4, 3]) with masks."""
    model = learner.model
    with torch.no_grad():
        model[0].mask_logit.copy_(torch.tensor([0.3, -0.2, 1.1, -0.8], dtype=D))
    noise = {"0.mask_logit": torch.tensor([0.4, 0.1, -0.6, 0.2], dtype=D), "2.mask_logit": torch.zeros(3, dtype=D)}
    g = torch.Generator().manual_seed(5)
    xs, ys = torch.randn(6, 2, dtype=D, generator=g), torch.randn(6, 3, dtype=D, generator=g)
    params = learner.params()
    U, b = params["0.U"].detach().requires_grad_(), params["0.bias"].detach().requires_grad_()
    out = torch.func.functional_call(model, {**params, "0.U": U, "0.bias": b}, (xs,))
    GU, gb = torch.autograd.grad(mse(out, ys), (U, b))
    C, c = torch.randn(4, 2, dtype=D, generator=g), torch.randn(4, dtype=D, generator=g)
    adapted = learner.adapt_task(params, xs, ys, steps=1, extra=noise)
    L = (C * adapted["0.U"]).sum() + (c * adapted["0.bias"]).sum()
    (grad_logit,) = torch.autograd.grad(L, params["0.mask_logit"])
    s = torch.sigmoid((params["0.mask_logit"].detach() + noise["0.mask_logit"]) / tau)
    expected = -alpha * ((C * GU).sum(1) + c * gb) * s * (1 - s) / tau
    assert torch.allclose(grad_logit, expected, atol=1e-13, rtol=0)


@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_mask_gradient_in_the_inner_rule_is_sigmoid_prime_over_tau(tau):
    model = mlp([2, 4, 3], use_T=True, use_V=False, use_mask=True).double()
    assert_mask_gradient(MetaLearner(model, mse, lr=0.3, steps=1, mask_temperature=tau), tau, 0.3)


# --- outer clipping bounds the global norm --------------------------------------------------------------------


@pytest.mark.parametrize("clip", [1e-3, None])
def test_meta_train_clips_the_global_gradient_norm(clip):
    """One SGD(lr=1) meta-step moves the meta parameters by −g, with g rescaled to global norm ``clip`` when larger."""
    torch.manual_seed(0)
    model = mlp([1, 8, 1]).double()
    learner = MetaLearner(model, mse, lr=0.1, steps=1)
    batch = tuple(torch.randn(2, 5, 1, dtype=D) for _ in range(4))
    before = [p.detach().clone() for p in learner.parameters()]
    learner.meta_loss(batch).backward()
    g = torch.cat([p.grad.flatten() for p in learner.parameters()])
    learner.zero_grad()
    norm = g.norm().item()
    assert norm > 100 * 1e-3  # clipping bites
    opt = torch.optim.SGD(learner.parameters(), lr=1.0)
    meta_train(learner, itertools.repeat(batch), 1, clip=clip, optimizer=opt, progress=False)
    step = torch.cat([(p.detach() - b).flatten() for p, b in zip(learner.parameters(), before, strict=True)])
    scale = 1.0 if clip is None else clip / norm  # (torch divides by norm + 1e-6: relative error < 1e-5 here)
    assert torch.allclose(step, -scale * g, atol=1e-15, rtol=1e-5)
    assert step.norm().item() == pytest.approx(norm if clip is None else clip, rel=1e-5)


# --- rotation per split -----------------------------------------------------------------------------------------


def asymmetric_splits():
    """Three splits of 6 classes × 3 random 5×5 images (no image equals a 90° turn of any image)."""
    g = torch.Generator().manual_seed(0)
    return {
        s: ClassImages.from_grouped(torch.randint(0, 256, (6, 3, 1, 5, 5), generator=g, dtype=torch.uint8))
        for s in ("train", "val", "test")
    }


def turned_fraction(data: ClassImages, images: torch.Tensor) -> float:
    """Fraction of the sampled images that are not stored images but a 90/180/270° turn of one."""
    stored = (data.images.float() / 255.0).flatten(1)  # as the sampler scales them
    turned = 0
    for img in images.reshape(-1, *images.shape[-3:]):
        as_is = (stored == img.flatten()).all(1).any().item()
        if not as_is:
            rots = [(stored == torch.rot90(img, k, dims=(-2, -1)).flatten()).all(1).any().item() for k in (1, 2, 3)]
            assert any(rots), "every sampled image is a stored one, possibly turned"
            turned += 1
    return turned / len(images.reshape(-1, *images.shape[-3:]))


@pytest.mark.parametrize("rotate", ["none", "train", "all"])
def test_rotation_applies_to_the_configured_splits_only(rotate):
    splits = asymmetric_splits()
    fs = FewShot(splits, ways=3, shots=1, queries=1, rotate=rotate)
    for split, data in splits.items():
        xs, _, xq, _ = next(fs.batches(split, 16, seed=1))
        frac = turned_fraction(data, torch.cat([xs, xq], 1))
        if rotate == "all" or (rotate == "train" and split == "train"):
            assert 0.5 < frac < 0.95, (split, frac)  # 3 of 4 turns are not the identity
        else:
            assert frac == 0.0, (split, frac)
