"""Bounded learned metrics (tuv_bounded, model.bound) and the MetaKFO preset (kfo), issue 20.

References are numpy / scipy / learn2learn and share no code with metatuv.nn.bounded or metatuv.meta.rule.
"""

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from conftest import random_factors
from test_backends import assert_all_paths_agree
from torch import nn

from metatuv.meta import MetaLearner, get_preset, mse
from metatuv.meta.presets import PRESETS
from metatuv.nn import BoundedTUVLinear, TUVLayer, bound_factors, mlp, tuvify
from metatuv.nn.bounded import BOUNDS

D = torch.float64
B = 6.0  # the bound on λmax(VᵀV ⊗ TTᵀ) in these tests


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def ref_factors(layer, bound: str, b: float):
    """(T, V) by hand from the layer's raw parameters (numpy / scipy); None where the layer has no such factor."""
    raw = {n: p.detach().numpy() for n, p in layer.named_parameters(recurse=False)}
    sides = [s for s in ("T", "V") if f"{s}_raw" in raw or f"{s}_skew" in raw]
    out = {"T": None, "V": None}
    for i, s in enumerate(sides):
        if bound == "tanh":
            c = np.sqrt(b ** (1 / len(sides)))
            sig = np.linalg.svd(raw[f"{s}_raw"], compute_uv=False)[0]
            f = raw[f"{s}_raw"] * c * np.tanh(sig / c) / sig
        elif bound == "spectral":
            f = raw[f"{s}_raw"] / np.linalg.svd(raw[f"{s}_raw"], compute_uv=False)[0]
            if i == 0:
                f = f * np.sqrt(b * sigmoid(raw["bound_logit"]))
        else:
            A = raw[f"{s}_skew"]
            Q = scipy.linalg.expm(A - A.T)
            sv = np.sqrt(b ** (1 / len(sides))) * sigmoid(raw[f"{s}_logit"])
            f = Q @ np.diag(sv) if s == "T" else np.diag(sv) @ Q.T
        out[s] = f
    return out["T"], out["V"]


def bounded_layer(bound: str, use_T=True, use_V=True, use_mask=False, seed=0, scale=0.5, m=4, n=3):
    torch.manual_seed(seed)
    layer = tuvify(nn.Linear(n, m), use_T, use_V, use_mask).double()
    layer = bound_factors(layer, bound, B)
    random_factors(layer, scale)
    if use_mask:
        with torch.no_grad():
            layer.mask_logit.copy_(torch.randn(m, dtype=D))
    return layer


@pytest.mark.parametrize("bound", BOUNDS[1:])
@pytest.mark.parametrize("sides", [(True, True), (True, False), (False, True)], ids=["TV", "T", "V"])
def test_bounded_step_is_the_kronecker_preconditioner_of_the_constrained_factors(bound, sides):
    """One inner step on U moves W = T·U·V by −α (VᵀV ⊗ TTᵀ) vec G, with T, V the constrained factors by hand."""
    layer = bounded_layer(bound, *sides)
    alpha = 0.3
    learner = MetaLearner(layer, mse, alpha, 1)
    xs, ys = torch.randn(7, 3, dtype=D), torch.randn(7, 4, dtype=D)
    params = learner.params()
    adapted = learner.adapt_task(params, xs, ys, steps=1)
    T, V = ref_factors(layer, bound, B)
    T = np.eye(4) if T is None else T
    V = np.eye(3) if V is None else V
    U0, U1 = params["U"].detach().numpy(), adapted["U"].detach().numpy()
    W0 = T @ U0 @ V
    # G = ∂/∂W mean((x Wᵀ + b − y)²), by hand
    x, y, bias = xs.numpy(), ys.numpy(), params["bias"].detach().numpy()
    G = 2 * (x @ W0.T + bias - y).T @ x / y.size
    vec = lambda M: M.reshape(-1, order="F")  # noqa: E731  column stacking
    step = -alpha * (np.kron(V.T @ V, T @ T.T) @ vec(G)).reshape(4, 3, order="F")
    np.testing.assert_allclose(T @ U1 @ V - W0, step, atol=1e-12, rtol=0)
    assert np.abs(step).max() > 1e-3  # a real step, not zero = zero


@pytest.mark.parametrize("bound", BOUNDS[1:])
def test_bounded_step_with_the_mtnet_mask(bound):
    """mtuv + bound: ΔW = −α·T·(m ⊙ Tᵀ·G·Vᵀ)·V with the task's hard mask m (by hand) and the constrained T, V."""
    layer = bounded_layer(bound, use_mask=True, seed=1)
    alpha = 0.2
    learner = MetaLearner(layer, mse, alpha, 1)
    xs, ys = torch.randn(6, 3, dtype=D), torch.randn(6, 4, dtype=D)
    extra = {k: v[0] for k, v in learner.sample_extras(1, torch.Generator().manual_seed(3)).items()}
    params = learner.params()
    adapted = learner.adapt_task(params, xs, ys, steps=1, extra=extra)
    T, V = ref_factors(layer, bound, B)
    logit, noise = params["mask_logit"].detach().numpy(), extra["mask_logit"].numpy()
    mask = (sigmoid(logit + noise) > 0.5).astype(float)
    assert 0 < mask.sum() < 4, "the seed must give a mask with both on and off units"
    U0, U1 = params["U"].detach().numpy(), adapted["U"].detach().numpy()
    W0 = T @ U0 @ V
    x, y, bias = xs.numpy(), ys.numpy(), params["bias"].detach().numpy()
    G = 2 * (x @ W0.T + bias - y).T @ x / y.size
    np.testing.assert_allclose(T @ U1 @ V - W0, -alpha * T @ (mask[:, None] * (T.T @ G @ V.T)) @ V, atol=1e-12)


@pytest.mark.parametrize(
    ("bound", "raw_scale"),
    [
        *((b, s) for b in ("tanh", "spectral") for s in (1e-3, 1.0, 1e3, 1e6)),
        ("spectrum", 1e-3),
        ("spectrum", 1.0),
    ],
)
def test_lambda_max_of_the_preconditioner_stays_below_the_bound(bound, raw_scale):
    """λmax(VᵀV ⊗ TTᵀ) < b for random and adversarial raw parameters (huge, tiny, ill-conditioned, saturated).

    spectrum is tested up to skew entries ~1e4: beyond that matrix_exp's Q drifts from orthogonal (at 1e7, λmax
    exceeded b by 2.5e-8 relative), one reason spectrum is not the recommended design."""
    gen = torch.Generator().manual_seed(int(raw_scale) % 97)
    for trial in range(5):
        layer = bounded_layer(bound, seed=trial)
        with torch.no_grad():
            for name, p in layer.named_parameters(recurse=False):
                if name in ("U", "bias"):
                    continue
                r = torch.randn(p.shape, generator=gen, dtype=D) * raw_scale
                if p.dim() == 2 and trial % 2:  # ill-conditioned: one huge direction
                    r[0] *= 1e4
                p.copy_(r if name != "bound_logit" else torch.tensor(50.0 if trial % 2 else -50.0))
        T, V = layer.T.detach().numpy(), layer.V.detach().numpy()
        lam = np.linalg.eigvalsh(np.kron(V.T @ V, T @ T.T)).max()
        assert np.isfinite(lam) and lam <= B * (1 + 1e-10), (bound, raw_scale, trial, lam)


def test_bounded_layers_start_at_the_identity_and_keep_the_function():
    torch.manual_seed(0)
    plain = mlp([2, 5, 3]).double()
    for bound in BOUNDS[1:]:
        bounded = bound_factors(mlp([2, 5, 3]).double(), bound, B)
        bounded.load_state_dict(plain.state_dict(), strict=False)  # U, bias
        x = torch.randn(4, 2, dtype=D)
        torch.testing.assert_close(bounded(x), plain(x), atol=1e-12, rtol=0)
        assert all(isinstance(m, BoundedTUVLinear) for m in bounded.modules() if isinstance(m, TUVLayer))


@pytest.mark.parametrize("bound", BOUNDS[1:])
def test_a_plain_torch_state_dict_loads_strictly_into_a_bounded_model(bound):
    """A plain nn.Linear / nn.Conv2d state dict (``weight``, ``bias``) into bounded layers whose factors are away
    from the identity: U = T⁻¹·W·V⁻¹ with the computed T and V, the raw parameters kept, the plain function back."""
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4)).double()
    bounded = bound_factors(tuvify(copy.deepcopy(plain)), bound, B)
    for m in bounded.modules():
        if isinstance(m, TUVLayer):
            with torch.no_grad():
                for name, p in m.named_parameters(recurse=False):
                    if name not in ("U", "bias"):
                        p.add_(0.1 * torch.randn_like(p))
    raw = {k: v.clone() for k, v in bounded.state_dict().items() if not k.endswith((".U", ".bias"))}
    assert raw and all(not k.endswith((".T", ".V")) for k in raw)
    bounded.load_state_dict(plain.state_dict())  # strict
    for k, v in raw.items():
        torch.testing.assert_close(bounded.state_dict()[k], v, atol=0, rtol=0)
    x = torch.randn(5, 2, 4, 4, dtype=D)
    torch.testing.assert_close(bounded(x), plain(x), atol=1e-10, rtol=0)
    mixed = {**plain.state_dict(), **raw}  # weight with raw factors: which T would U = T⁻¹·W·V⁻¹ use? refused
    first = ", ".join(k for k in raw if k.startswith("0."))
    with pytest.raises(
        RuntimeError, match=re.escape(f"holds '0.weight' and the bounded layer's raw factors ({first})")
    ):
        bounded.load_state_dict(mixed)
    with pytest.raises(RuntimeError, match=re.escape("or a bounded model's own ('0.U' and raw factors)")):
        bounded.load_state_dict(mixed)


def test_a_plain_state_dict_with_mask_logits_loads_into_a_bounded_mtnet():
    """MT-net's mask logits are not raw factors: {weight, bias, mask_logit} loads into a bounded masked layer."""
    torch.manual_seed(0)
    bounded = bound_factors(mlp([2, 5, 3], use_mask=True).double(), "tanh", B)
    random_factors(bounded[0])
    state = {
        "0.weight": torch.randn(5, 2, dtype=D),
        "0.bias": torch.zeros(5, dtype=D),
        "0.mask_logit": torch.ones(5, dtype=D),
    }
    bounded.load_state_dict(state, strict=False)
    assert torch.equal(bounded[0].mask_logit, torch.ones(5, dtype=D))
    torch.testing.assert_close(bounded[0].weight, state["0.weight"], atol=1e-10, rtol=0)


@pytest.mark.parametrize("bound", BOUNDS[1:])
def test_meta_gradient_reaches_the_raw_parameters(bound):
    """gradcheck (float64) of the 2-step meta-loss of a tiny bounded MLP w.r.t. its raw factor parameters."""
    torch.manual_seed(0)
    model = bound_factors(mlp([2, 3, 2]).double(), bound, B)
    for m in model.modules():
        if isinstance(m, TUVLayer):
            random_factors(m, 0.5)
    learner = MetaLearner(model, mse, 0.3, 2)
    batch = tuple(torch.randn(2, 4, 2, dtype=D) for _ in range(4))
    params = learner.params()
    raw = [n for n in params if n.split(".")[-1] not in ("U", "bias")]
    assert raw and all(
        n.split(".")[-1] in ("T_raw", "V_raw", "bound_logit", "T_skew", "V_skew", "T_logit", "V_logit") for n in raw
    )
    leaves = [params[n].detach().clone().requires_grad_() for n in raw]

    def meta_loss(*xs):
        return learner.meta_loss(batch, {**params, **dict(zip(raw, xs, strict=True))}, extras={})

    assert torch.autograd.gradcheck(meta_loss, leaves, eps=1e-6, atol=1e-7)
    grads = torch.autograd.grad(meta_loss(*leaves), leaves)
    assert all(g.abs().max() > 0 for g in grads)


@pytest.mark.parametrize("preset", ["mtuv", "tnet"])
def test_bound_option_on_other_presets_backends_agree(preset):
    """model.bound on a masked preset (spectrum) and a T-only preset (tanh): the four backends agree."""
    torch.manual_seed(0)
    p = get_preset(preset)
    model = bound_factors(
        mlp([2, 6, 5, 3], p.use_T, p.use_V, p.use_mask).double(), "spectrum" if p.use_mask else "tanh", B
    )
    for m in model.modules():
        if isinstance(m, TUVLayer):
            random_factors(m)
            if m.mask_logit is not None:
                with torch.no_grad():
                    m.mask_logit.copy_(torch.randn_like(m.mask_logit))
    learner = MetaLearner.from_preset(model, p, mse, lr=0.1, steps=2)
    batch = (
        torch.randn(3, 6, 2, dtype=D),
        torch.randn(3, 6, 3, dtype=D),
        torch.randn(3, 5, 2, dtype=D),
        torch.randn(3, 5, 3, dtype=D),
    )
    extras = learner.sample_extras(3, torch.Generator().manual_seed(1))
    assert_all_paths_agree(learner, batch, extras)


def test_bound_factors_refuses_bad_values():
    with pytest.raises(ValueError, match="bound="):
        bound_factors(mlp([2, 3, 2]), "clip", B)
    with pytest.raises(ValueError, match="max_eig"):
        bound_factors(mlp([2, 3, 2]), "spectral", 1.0)
    model = mlp([2, 3, 2])
    with torch.no_grad():
        model[0].T.mul_(2)
    with pytest.raises(ValueError, match="not the identity"):
        bound_factors(model, "spectral", B)
    assert PRESETS["tuv_bounded"].bound == "tanh" and PRESETS["tuv"].bound == "none"


def test_train_config_bound_option(tmp_path):
    """model.bound / model.max_step reach the model; misuse fails before training with one line."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException

    from metatuv.build import build_learner, validate

    conf = str(Path(__file__).resolve().parents[1] / "conf")
    with initialize_config_dir(config_dir=conf, version_base=None):
        cfg = compose("config", overrides=["model=tnet", "model.bound=spectrum", "model.max_step=0.5", "inner.lr=0.01"])
        validate(cfg)
        _, _, learner = build_learner(cfg)
        layers = [m for m in learner.model.modules() if isinstance(m, TUVLayer)]
        assert all(m.bound == "spectrum" and m.max_eig == pytest.approx(50.0) and m.V is None for m in layers)
        cfg = compose("config", overrides=["model=tuv_bounded", "inner.lr=0.01"])
        _, _, learner = build_learner(cfg)
        assert all(m.bound == "tanh" for m in learner.model.modules() if isinstance(m, TUVLayer))
        for bad, match in (
            (["model=maml", "model.bound=spectral"], "needs a preset with T or V"),
            (["model=tuv_bounded", "model.max_step=0.01", "inner.lr=0.1"], "model.max_step"),
        ):
            with pytest.raises(ValueError, match=match):
                validate(compose("config", overrides=bad))
        with pytest.raises(ConfigCompositionException) as e:  # a closed choice (schema.Bound): fails at composition
            compose("config", overrides=["model=tuv", "model.bound=clip"])
        assert "Invalid value 'clip', expected one of [none, tanh, spectral, spectrum]" in str(e.value.__cause__)


# ---------------------------------------------------------------- kfo (MetaKFO) against learn2learn


def _l2l():
    from metatuv.inner.backends import _import_learn2learn

    return _import_learn2learn()


@pytest.mark.parametrize("steps", [1, 2])
def test_kfo_meta_gradient_matches_learn2learn(steps):
    """One linear layer: our kfo inner loop vs learn2learn's GBML with KroneckerTransform(KroneckerLinear, psd=True):
    same query loss and meta-gradients (W₀, A, B) in float64, ≤ 1e-10."""
    l2l = _l2l()
    torch.manual_seed(0)
    m, n, alpha = 4, 3, 0.2
    A, Bm = (
        torch.eye(m, dtype=D) + 0.3 * torch.randn(m, m, dtype=D),
        torch.eye(n, dtype=D) + 0.3 * torch.randn(n, n, dtype=D),
    )
    W0 = torch.randn(m, n, dtype=D)
    xs, ys, xq, yq = (
        torch.randn(6, n, dtype=D),
        torch.randn(6, m, dtype=D),
        torch.randn(5, n, dtype=D),
        torch.randn(5, m, dtype=D),
    )

    # learn2learn
    lin = nn.Linear(n, m, bias=False).double()
    gbml = l2l.algorithms.GBML(lin, l2l.optim.KroneckerTransform(l2l.nn.KroneckerLinear, psd=True), lr=alpha).double()
    kron = gbml.compute_update.transforms_modules[0].transform
    with torch.no_grad():
        lin.weight.copy_(W0)
        kron.left.copy_(A)
        kron.right.copy_(Bm)
    clone = gbml.clone()
    for _ in range(steps):
        clone.adapt(mse(clone(xs), ys))
    ref_loss = mse(clone(xq), yq)
    ref = torch.autograd.grad(ref_loss, [lin.weight, kron.left, kron.right])

    # ours
    model = tuvify(nn.Linear(n, m, bias=False), use_T=False, use_V=False).double()
    learner = MetaLearner.from_preset(model, get_preset("kfo"), mse, alpha, steps)
    with torch.no_grad():
        model.U.copy_(W0)
        learner.rule.kfo["U_l"].copy_(A)
        learner.rule.kfo["U_r"].copy_(Bm)
    loss = learner.meta_loss(tuple(t[None] for t in (xs, ys, xq, yq)))
    ours = torch.autograd.grad(loss, [model.U, learner.rule.kfo["U_l"], learner.rule.kfo["U_r"]])
    assert abs(loss.item() - ref_loss.item()) <= 1e-10
    for a, b in zip(ours, ref, strict=True):
        assert (a - b).abs().max().item() <= 1e-10
        assert b.abs().max() > 1e-3


def test_kfo_step_is_psd_kronecker_transform_by_hand():
    """Δ = α·(AᵀA)·G·(BᵀB) on a linear weight and, per output channel, on a conv weight as (in, kh·kw)."""
    torch.manual_seed(0)
    model = tuvify(nn.Sequential(nn.Conv2d(2, 3, 2), nn.Flatten(), nn.Linear(3 * 4, 2)), use_T=False, use_V=False)
    model = model.double()
    learner = MetaLearner.from_preset(model, get_preset("kfo"), mse, 0.1, 1)
    kfo = dict(learner.rule.kfo.items())
    assert set(kfo) == {"0__U_l", "0__U_r", "2__U_l", "2__U_r"}  # weights only; biases take plain SGD
    with torch.no_grad():
        for p in kfo.values():
            p.add_(0.3 * torch.randn_like(p))
    grads = {
        "0.U": torch.randn(3, 2, 2, 2, dtype=D),
        "2.U": torch.randn(2, 12, dtype=D),
        "2.bias": torch.randn(2, dtype=D),
    }
    rule, params = learner.rule.transform(), learner.meta_params()
    delta = rule.update(0, grads, rule.init(params, {}), params)
    k = {n: p.detach().numpy() for n, p in kfo.items()}
    L, R = k["2__U_l"].T @ k["2__U_l"], k["2__U_r"].T @ k["2__U_r"]
    np.testing.assert_allclose(delta["2.U"].detach().numpy(), 0.1 * L @ grads["2.U"].numpy() @ R, atol=1e-12)
    L, R = k["0__U_l"].T @ k["0__U_l"], k["0__U_r"].T @ k["0__U_r"]
    g = grads["0.U"].numpy()
    want = np.stack([0.1 * L @ g[o].reshape(2, 4) @ R for o in range(3)]).reshape(3, 2, 2, 2)
    np.testing.assert_allclose(delta["0.U"].detach().numpy(), want, atol=1e-12)
    np.testing.assert_allclose(delta["2.bias"].detach().numpy(), 0.1 * grads["2.bias"].numpy(), atol=1e-15)


def test_bound_factors_keeps_tied_layers_tied_and_refuses_what_it_cannot_bound():
    lin = nn.Linear(3, 3)
    model = nn.Sequential(lin, nn.Tanh())
    model.add_module("tied", lin)  # one layer under two names
    model = bound_factors(tuvify(model), "tanh", 100.0)
    assert model[0] is model.tied and isinstance(model.tied, BoundedTUVLinear)
    with pytest.raises(ValueError, match="TUVConv1d layers cannot be bounded"):  # never left unbounded silently
        bound_factors(tuvify(nn.Sequential(nn.Conv1d(2, 3, 3))), "tanh", 100.0)


def test_statistics_refuse_bounded_and_bias_inside_T_layers():
    """set_from_statistics would write into a computed (bounded) T, or move a bias that sits inside T: refused."""
    from metatuv.metric.statistics import set_from_statistics

    A, G = torch.eye(3), torch.eye(3)
    for layer in (
        bound_factors(tuvify(nn.Sequential(nn.Linear(3, 3))), "tanh", 100.0)[0],
        tuvify(nn.Linear(3, 3), bias_inside_T=True),
    ):
        with pytest.raises(ValueError, match="cannot take T and V from statistics"):
            set_from_statistics(layer, A, G)


def test_a_float32_plain_state_dict_with_bias_inside_T_loads_in_the_layers_precision():
    """y = T(U·V·x + b): the stored bias becomes T⁻¹·b, solved in the float64 layer's precision, not float32's."""
    torch.manual_seed(0)
    plain = nn.Linear(4, 3)  # float32
    layer = bound_factors(tuvify(nn.Linear(4, 3).double(), bias_inside_T=True), "tanh", B)
    with torch.no_grad():
        layer.T_raw.add_(0.3 * torch.randn_like(layer.T_raw))
    layer.load_state_dict(plain.state_dict())
    x = torch.randn(5, 4, dtype=D)
    expected = x @ plain.weight.double().T + plain.bias.double()
    torch.testing.assert_close(layer(x), expected, atol=1e-12, rtol=0)


def test_bounded_layer_repr_names_its_bound():
    layer = bound_factors(tuvify(nn.Linear(2, 3)), "tanh", B)
    assert repr(layer).endswith("U=(3, 2), T=True, V=True, bias=True, mask_logit=False, bound=tanh, max_eig=6)")


def test_bound_factors_edges_small_bound_non_identity_V_and_twice():
    """Any bound above 1 is accepted (1.5 holds λmax(P) < 1.5); a layer whose V (not only T) was already learned is
    refused; bounding a bounded model again changes nothing."""
    torch.manual_seed(0)
    model = bound_factors(mlp([2, 5, 3]).double(), "tanh", 1.5)
    layer = model[0]
    with torch.no_grad():
        layer.T_raw.mul_(10.0)
        layer.V_raw.mul_(10.0)
    lam = np.linalg.eigvalsh(np.kron(layer.V.detach().numpy().T @ layer.V.detach().numpy(),
                                     layer.T.detach().numpy() @ layer.T.detach().numpy().T)).max()  # fmt: skip
    assert 1 < lam < 1.5
    again = bound_factors(model, "tanh", 1.5)
    assert again is model and again[0] is layer
    fresh = mlp([2, 5, 3]).double()
    with torch.no_grad():
        fresh[0].V.add_(0.1)
    with pytest.raises(ValueError, match="T or V is not the identity"):
        bound_factors(fresh, "tanh", B)
