"""Each step-rule transform (metatuv/inner/transforms.py) against its equation, written out with numpy loops; chain
applies them in order; InnerRule's chain reads the learner's own parameters under their state_dict names."""

import numpy as np
import pytest
import torch
from torch import nn

from metatuv.inner.transforms import chain, curvature, kfo, mask, mask_sample, rate
from metatuv.meta import MetaLearner, mse
from metatuv.nn import tuvify

D = torch.float64


def rnd(*shape, seed=0):
    return torch.randn(*shape, dtype=D, generator=torch.Generator().manual_seed(seed))


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def apply(t, grads, params, extra=None, k=0):
    return t.update(k, grads, t.init(params, extra or {}), params)


def test_mask_multiplies_rows_by_the_hard_sample_and_passes_the_sigmoid_gradient():
    """Δ = m ⊙ g along rows, m_o = 1[σ((ζ_o + ℓ_o)/τ) > ½]; ∂Σ(C ⊙ Δ)/∂ζ_o = Σ_row(C ⊙ g)·σ'((ζ_o + ℓ_o)/τ)/τ."""
    tau = 0.7
    zeta = rnd(3, seed=1).requires_grad_()
    noise = rnd(3, seed=2)
    grads = {"U": rnd(3, 4, seed=3), "bias": rnd(3, seed=4), "conv": rnd(3, 2, 2, 2, seed=5), "other": rnd(2, 2)}
    t = mask({"z": ("zn", ["U", "bias", "conv"])}, tau)
    out = apply(t, grads, {"z": zeta}, {"zn": noise})
    z, n = zeta.detach().numpy(), noise.numpy()
    m = (sigmoid((z + n) / tau) > 0.5).astype(float)
    assert 0 < m.sum() < 3  # both an open and a closed unit
    np.testing.assert_array_equal(out["U"].detach().numpy(), m[:, None] * grads["U"].numpy())
    np.testing.assert_array_equal(out["bias"].detach().numpy(), m * grads["bias"].numpy())
    np.testing.assert_array_equal(out["conv"].detach().numpy(), m[:, None, None, None] * grads["conv"].numpy())
    assert out["other"] is grads["other"]
    C = rnd(3, 4, seed=6)
    (g_zeta,) = torch.autograd.grad((C * out["U"]).sum(), zeta)
    s = sigmoid((z + n) / tau)
    want = (C.numpy() * grads["U"].numpy()).sum(1) * s * (1 - s) / tau
    np.testing.assert_allclose(g_zeta.numpy(), want, rtol=1e-12)


def test_mask_state_is_drawn_once_per_task():
    t = mask({"z": ("zn", ["U"])})
    zeta, noise = rnd(4, seed=1), rnd(4, seed=2)
    state = t.init({"z": zeta}, {"zn": noise})
    torch.testing.assert_close(state["z"], mask_sample(zeta, noise, 1.0), rtol=0, atol=0)
    # the default temperature is 1: the straight-through gradient is σ'(ζ + ℓ), not σ'((ζ + ℓ)/τ)/τ of another τ
    z = zeta.clone().requires_grad_()
    (ours,) = torch.autograd.grad(t.init({"z": z}, {"zn": noise})["z"].sum(), z)
    s = torch.sigmoid(zeta + noise)
    torch.testing.assert_close(ours, s * (1 - s), rtol=1e-12, atol=0)
    g = {"U": rnd(4, 3)}
    assert torch.equal(t.update(0, g, state, {})["U"], t.update(7, g, state, {})["U"])  # the same mask every step


def test_meta_curvature_linear_and_conv():
    """G ↦ M_o·G·M_i; a conv G (o, i, kh, kw): Σ_ab M_o[o,a]·G[a,b,s]·M_i[b,i], then ×₃ M_f: Σ_s M_f[t,s]·(·)[s]."""
    Mo, Mi, Mf = rnd(3, 3, seed=1), rnd(2, 2, seed=2), rnd(4, 4, seed=3)
    G2, G4 = rnd(3, 2, seed=4), rnd(3, 2, 2, 2, seed=5)
    params = {"lo": Mo, "li": Mi, "co": Mo, "ci": Mi, "cf": Mf}
    t = curvature({"W": ("lo", "li"), "K": ("co", "ci", "cf")})
    out = apply(t, {"W": G2, "K": G4, "b": rnd(3)}, params)
    mo, mi, mf = Mo.numpy(), Mi.numpy(), Mf.numpy()
    np.testing.assert_allclose(out["W"].numpy(), mo @ G2.numpy() @ mi, rtol=1e-12)
    g = G4.numpy().reshape(3, 2, 4)
    want = np.zeros((3, 2, 4))
    for o in range(3):
        for i in range(2):
            for tap in range(4):
                mixed = [sum(mo[o, a] * g[a, b, s] * mi[b, i] for a in range(3) for b in range(2)) for s in range(4)]
                want[o, i, tap] = sum(mf[tap, s] * mixed[s] for s in range(4))
    np.testing.assert_allclose(out["K"].numpy(), want.reshape(3, 2, 2, 2), rtol=1e-10, atol=1e-12)
    assert torch.equal(out["b"], rnd(3))  # no factors: unchanged


def test_kfo_is_psd_kronecker_per_output_channel():
    """G ↦ (AᵀA)·G·(BᵀB); a conv G (o, i, kh, kw) per output channel as an (i, kh·kw) matrix."""
    A, B = rnd(3, 3, seed=1), rnd(2, 2, seed=2)
    Ac, Bc = rnd(2, 2, seed=3), rnd(4, 4, seed=4)
    G2, G4 = rnd(3, 2, seed=5), rnd(3, 2, 2, 2, seed=6)
    t = kfo({"W": ("a", "b"), "K": ("ac", "bc")})
    out = apply(t, {"W": G2, "K": G4, "bias": rnd(3)}, {"a": A, "b": B, "ac": Ac, "bc": Bc})
    a, b, ac, bc = (x.numpy() for x in (A, B, Ac, Bc))
    np.testing.assert_allclose(out["W"].numpy(), a.T @ a @ G2.numpy() @ b.T @ b, rtol=1e-12)
    g = G4.numpy()
    want = np.stack([ac.T @ ac @ g[o].reshape(2, 4) @ bc.T @ bc for o in range(3)]).reshape(3, 2, 2, 2)
    np.testing.assert_allclose(out["K"].numpy(), want, rtol=1e-12)
    assert torch.equal(out["bias"], rnd(3))


def test_rates_fixed_metasgd_and_lslr_with_steps_beyond_the_trained_ones():
    g = {"U": rnd(3, 2, seed=1), "bias": rnd(3, seed=2)}
    fixed = apply(rate("fixed", 0.25), g, {})
    for n in g:
        np.testing.assert_allclose(fixed[n].numpy(), 0.25 * g[n].numpy(), rtol=1e-15)
    per_entry = {"rU": rnd(3, 2, seed=3), "rb": rnd(3, seed=4)}
    meta_sgd = apply(rate("metasgd", 0.25, {"U": "rU", "bias": "rb"}), g, per_entry)
    np.testing.assert_allclose(meta_sgd["U"].numpy(), per_entry["rU"].numpy() * g["U"].numpy(), rtol=1e-15)
    np.testing.assert_allclose(meta_sgd["bias"].numpy(), per_entry["rb"].numpy() * g["bias"].numpy(), rtol=1e-15)
    per_step = {"rU": torch.tensor([0.1, 0.2, 0.3], dtype=D), "rb": torch.tensor([0.5, 0.6, 0.7], dtype=D)}
    t = rate("lslr", 0.25, {"U": "rU", "bias": "rb"})
    for k, want_u, want_b in [(0, 0.1, 0.5), (1, 0.2, 0.6), (2, 0.3, 0.7), (3, 0.3, 0.7), (9, 0.3, 0.7)]:
        out = apply(t, g, per_step, k=k)
        np.testing.assert_allclose(out["U"].numpy(), want_u * g["U"].numpy(), rtol=1e-15)
        np.testing.assert_allclose(out["bias"].numpy(), want_b * g["bias"].numpy(), rtol=1e-15)
    with pytest.raises(ValueError, match="lr_mode='adam'"):
        rate("adam", 0.1)
    with pytest.raises(ValueError, match="needs the params key"):
        rate("lslr", 0.1)


def test_chain_applies_in_order_and_keeps_each_state():
    zeta, noise = rnd(3, seed=1), rnd(3, seed=2)
    Mo, Mi, r = rnd(3, 3, seed=3), rnd(2, 2, seed=4), rnd(3, 2, seed=5)
    params, extra = {"z": zeta, "mo": Mo, "mi": Mi, "r": r}, {"zn": noise}
    parts = [mask({"z": ("zn", ["U"])}), curvature({"U": ("mo", "mi")}), rate("metasgd", 0.1, {"U": "r"})]
    g = {"U": rnd(3, 2, seed=6)}
    got = apply(chain(*parts), g, params, extra)["U"].numpy()
    m = (sigmoid((zeta + noise).numpy()) > 0.5).astype(float)
    want = r.numpy() * (Mo.numpy() @ (m[:, None] * g["U"].numpy()) @ Mi.numpy())
    np.testing.assert_allclose(got, want, rtol=1e-12)
    other_order = apply(chain(parts[0], parts[2], parts[1]), g, params, extra)["U"].numpy()
    assert not np.allclose(other_order, want)  # Meta-SGD rates do not commute with the curvature
    assert len(chain(*parts).init(params, extra)) == 3


def test_inner_rule_chain_reads_the_learners_own_parameters():
    """MetaLearner's rule: the chain of mask, curvature and rate, under the unchanged state_dict names."""
    torch.manual_seed(0)
    model = tuvify(nn.Sequential(nn.Linear(2, 3)), use_T=True, use_V=True, use_mask=True).double()
    learner = MetaLearner(model, mse, 0.1, 2, lr_mode="metasgd", curvature=True)
    keys = {"rule.lrs.0__U", "rule.lrs.0__bias", "rule.curvature.0__U_o", "rule.curvature.0__U_i"}
    assert keys <= set(learner.state_dict())
    with torch.no_grad():
        for q in learner.rule.parameters():
            q.add_(0.3 * torch.randn_like(q))
    extra = {k: v[0] for k, v in learner.sample_extras(1, torch.Generator().manual_seed(3)).items()}
    grads = {"0.U": rnd(3, 2, seed=1), "0.bias": rnd(3, seed=2)}
    delta = learner.problem.step_rule(learner.meta_params(), extra)(0, grads)
    m = mask_sample(model[0].mask_logit, extra["0.mask_logit"], 1.0).detach().numpy()
    c = {k: v.detach().numpy() for k, v in learner.rule.curvature.items()}
    lr = {k: v.detach().numpy() for k, v in learner.rule.lrs.items()}
    want_u = lr["0__U"] * (c["0__U_o"] @ (m[:, None] * grads["0.U"].numpy()) @ c["0__U_i"])
    np.testing.assert_allclose(delta["0.U"].detach().numpy(), want_u, rtol=1e-12)
    np.testing.assert_allclose(delta["0.bias"].detach().numpy(), lr["0__bias"] * m * grads["0.bias"].numpy())


def test_mask_noise_of_a_model_is_the_learners_own_draw():
    from metatuv.meta import MetaLearner, get_preset, mask_noise, mse
    from metatuv.nn import mlp

    torch.manual_seed(0)
    model = mlp([1, 8, 8, 1], True, False, True)
    learner = MetaLearner.from_preset(model, get_preset("mtnet"), mse, 0.01, 1)
    ours = mask_noise(model, 3, torch.Generator().manual_seed(5))
    theirs = learner.sample_extras(3, torch.Generator().manual_seed(5))
    assert sorted(ours) == sorted(theirs) == ["0.mask_logit", "2.mask_logit", "4.mask_logit"]
    for n in ours:
        torch.testing.assert_close(ours[n], theirs[n], rtol=0, atol=0)
    assert mask_noise(mlp([1, 8, 1], True, True, False), 3) == {}  # no masks, no noise


def test_logistic_noise_shape_distribution_and_guard(monkeypatch):
    """ℓ = log u − log(1 − u), u ~ U(0, 1): Logistic(0, 1) (mean 0, variance π²/3, P(ℓ < 1) = σ(1)), one row per
    task and one column per unit, in the dtype of ``like``; a draw of exactly 0 or 1 stays finite (u clamped)."""
    import math

    from metatuv.inner.transforms import logistic_noise

    like = torch.zeros(2, dtype=torch.float64)
    noise = logistic_noise({"a": 3, "b": 5}, 4000, torch.Generator().manual_seed(0), like)
    assert noise["a"].shape == (4000, 3) and noise["b"].shape == (4000, 5)
    assert noise["a"].dtype == noise["b"].dtype == torch.float64
    x = torch.cat([noise["a"].flatten(), noise["b"].flatten()])
    assert abs(x.mean().item()) < 0.05 and abs(x.var().item() - math.pi**2 / 3) < 0.15
    assert abs((x < 1).double().mean().item() - 1 / (1 + math.exp(-1))) < 0.01
    assert not torch.equal(noise["a"][0], noise["a"][1])  # tasks draw their own noise

    monkeypatch.setattr(torch, "rand", lambda *size, **kw: torch.tensor([[0.0, 1.0]], dtype=kw["dtype"]))
    edge = logistic_noise({"a": 2}, 1, None, like)["a"]
    assert torch.isfinite(edge).all() and edge[0, 0] < -13 and edge[0, 1] > 13


def test_inner_rule_defaults_are_fixed_rate_steps_with_unit_temperature():
    """InnerRule(model, names, lr, steps) alone: the fixed rate, no curvature, no KFO factors, mask temperature 1 —
    its step and its mask-logit gradient equal those of the rule with every default spelled out, and differ from
    τ = 2's gradient (so the comparison can see the temperature)."""
    from metatuv.meta.rule import InnerRule
    from metatuv.nn import fast_names, mlp

    torch.manual_seed(0)
    model = mlp([2, 4, 3], True, False, True).double()
    names = fast_names(model)
    rules = {
        "default": InnerRule(model, names, 0.1, 2),
        "explicit": InnerRule(model, names, 0.1, 2, "fixed", False, 1.0, False),
        "tau2": InnerRule(model, names, 0.1, 2, "fixed", False, 2.0, False),
    }
    assert list(rules["default"].named_parameters()) == []  # no learned rates, curvature or KFO factors
    noise = {k: v[0] for k, v in rules["default"].mask_noise(1, torch.Generator().manual_seed(0), model[0].U).items()}
    grads = {n: torch.randn_like(dict(model.named_parameters())[n]) for n in names}
    out = {}
    for key, rule in rules.items():
        params = {"model." + n: p for n, p in model.named_parameters()}
        t = rule.transform()
        step = t.update(0, grads, t.init(params, noise), params)
        logits = [p for n, p in params.items() if n.endswith("mask_logit")]
        out[key] = (step, torch.autograd.grad(sum(s.sum() for s in step.values()), logits))
    for n in names:
        torch.testing.assert_close(out["default"][0][n], out["explicit"][0][n], rtol=0, atol=0)
    torch.testing.assert_close(out["default"][0]["0.U"], 0.1 * grads["0.U"] * (out["default"][0]["0.U"] != 0))
    for a, b in zip(out["default"][1], out["explicit"][1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not all(torch.allclose(a, b) for a, b in zip(out["default"][1], out["tau2"][1], strict=True))
    with pytest.raises(ValueError, match="mask_temperature=0.0 must be > 0"):
        InnerRule(model, names, 0.1, 2, mask_temperature=0.0)


def test_inner_rule_transform_reads_model_and_rule_parameters_by_their_default_prefixes():
    """``transform()`` reads mask logits as ``model.<name>`` and the rule's own parameters as ``rule.<name>`` (the
    MetaLearner's names): learned Meta-SGD rates set to 2α give a step of 2α·m⊙g."""
    from metatuv.meta.rule import InnerRule
    from metatuv.nn import fast_names

    torch.manual_seed(0)
    model = tuvify(nn.Sequential(nn.Linear(2, 3)), use_mask=True).double()
    names = fast_names(model)
    rule = InnerRule(model, names, 0.1, 2, "metasgd")
    with torch.no_grad():
        for q in rule.parameters():
            q.fill_(0.2)
    params = {
        **{"model." + n: p for n, p in model.named_parameters()},
        **{"rule." + n: q for n, q in rule.named_parameters()},
    }
    noise = {k: v[0] for k, v in rule.mask_noise(1, torch.Generator().manual_seed(0), model[0].U).items()}
    grads = {n: rnd(*dict(model.named_parameters())[n].shape, seed=4) for n in names}
    t = rule.transform()
    step = t.update(0, grads, t.init(params, noise), params)
    m = mask_sample(model[0].mask_logit, noise["0.mask_logit"], 1.0).detach()
    torch.testing.assert_close(step["0.U"], 0.2 * m[:, None] * grads["0.U"], rtol=1e-12, atol=0)
    torch.testing.assert_close(step["0.bias"], 0.2 * m * grads["0.bias"], rtol=1e-12, atol=0)


@pytest.mark.parametrize("preset", ["metacurvature", "kfo"])
def test_curvature_and_kfo_on_a_conv_with_a_non_square_kernel(preset):
    """A (3, 2) kernel: Meta-Curvature's M_f is (kh·kw) × (kh·kw) and MetaKFO's right factor acts on (i, kh·kw) per
    output channel — the meta-loss and its meta-gradient are finite and reach every factor."""
    from metatuv.meta import get_preset

    torch.manual_seed(0)
    model = tuvify(nn.Sequential(nn.Conv2d(2, 3, (3, 2)), nn.Flatten(), nn.Linear(3 * 2 * 3, 2))).double()
    learner = MetaLearner.from_preset(model, get_preset(preset), mse, 0.1, 2)
    batch = (rnd(2, 4, 2, 4, 4, seed=1), rnd(2, 4, 2, seed=2), rnd(2, 4, 2, 4, 4, seed=3), rnd(2, 4, 2, seed=4))
    loss = learner.task_losses(batch).mean()
    factors = [q for n, q in learner.named_parameters() if n.startswith(("rule.curvature.", "rule.kfo."))]
    assert factors and torch.isfinite(loss)
    grads = torch.autograd.grad(loss, factors)
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_mtnet_rule_on_a_bare_masked_layer():
    """The model IS the masked layer (no container): its mask logit is ``mask_logit`` and gates U and the bias."""
    from metatuv.meta.rule import InnerRule
    from metatuv.nn import fast_names

    torch.manual_seed(0)
    layer = tuvify(nn.Linear(2, 3), use_mask=True).double()
    rule = InnerRule(layer, fast_names(layer), 0.1, 1)
    assert rule.masked == {"mask_logit": ["U", "bias"]}
    learner = MetaLearner(layer, mse, 0.1, 1)
    batch = (rnd(2, 4, 2, seed=1), rnd(2, 4, 3, seed=2), rnd(2, 4, 2, seed=3), rnd(2, 4, 3, seed=4))
    (g,) = torch.autograd.grad(learner.task_losses(batch).mean(), [layer.mask_logit])
    assert torch.isfinite(g).all() and g.abs().sum() > 0
