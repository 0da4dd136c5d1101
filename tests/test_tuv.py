"""TUV layers: the seed's identities (float64, ≤ 1e-10) and equivalence with the plain torch layers."""

import collections
import copy
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import random_factors, vec
from torch import nn

from metatuv.nn import TUVConv2d, TUVLayer, TUVLinear, compose, conv4, fast_names, mlp, split_params, tuvify
from metatuv.nn.tuv import TUVConv1d, TUVConv3d
from metatuv.nn.weightview import solve_U

D = torch.float64
TOL = 1e-10


def layers():
    return [
        TUVLinear(5, 4, dtype=D),
        TUVConv2d(3, 6, 3, padding=1, dtype=D),
    ]


def inputs(layer):
    return torch.randn(7, 5, dtype=D) if isinstance(layer, TUVLinear) else torch.randn(2, 3, 6, 6, dtype=D)


def plain_forward(layer, W, x):
    if isinstance(layer, TUVLinear):
        return F.linear(x, W, layer.bias)
    return F.conv2d(x, W, layer.bias, layer.stride, layer.padding)


def taps(W):
    """The (m, n) weight slices: the matrix itself, or every kernel tap of a conv weight."""
    return [W] if W.dim() == 2 else [W[:, :, k, l] for k in range(W.shape[2]) for l in range(W.shape[3])]


@pytest.mark.parametrize("layer", layers(), ids=["linear", "conv2d"])
def test_seed_identities(layer):
    random_factors(layer)
    x = inputs(layer)
    target = torch.randn_like(layer(x))
    loss = lambda out: ((out - target) ** 2).sum() + out.tanh().sum()  # noqa: E731

    # dL/dU by autograd through W = T·U·V
    (gU,) = torch.autograd.grad(loss(layer(x)), layer.U)
    # G = dL/dW with W a leaf
    W = layer.weight.detach().requires_grad_()
    (G,) = torch.autograd.grad(loss(plain_forward(layer, W, x)), W)
    T, V = layer.T.detach(), layer.V.detach()
    for gU_tap, G_tap in zip(taps(gU), taps(G), strict=True):
        assert torch.allclose(gU_tap, T.T @ G_tap @ V.T, atol=TOL, rtol=0)  # dL/dU = Tᵀ G Vᵀ

    alpha = 0.07
    U_new = layer.U.detach() - alpha * gU
    W_new = compose(T, U_new, V)
    for Wn, W0, G_tap in zip(taps(W_new), taps(W.detach()), taps(G), strict=True):
        expected = W0 - alpha * (T @ T.T) @ G_tap @ (V.T @ V)  # docs/derivation.md eq. 3
        assert torch.allclose(Wn, expected, atol=TOL, rtol=0)
        P = torch.kron(V.T @ V, T @ T.T)  # vec(ΔW) = −α (VᵀV ⊗ TTᵀ) vec(G)
        assert torch.allclose(vec(Wn - W0), -alpha * P @ vec(G_tap), atol=TOL, rtol=0)


def test_identity_factors_equal_plain_linear():
    plain = nn.Linear(5, 3, dtype=D)
    tuv = TUVLinear(5, 3, dtype=D)
    with torch.no_grad():
        tuv.U.copy_(plain.weight)
        tuv.bias.copy_(plain.bias)
    x = torch.randn(4, 5, dtype=D)
    assert torch.equal(tuv.weight, plain.weight)
    assert torch.allclose(tuv(x), plain(x), atol=TOL, rtol=0)


def test_identity_factors_equal_plain_conv():
    plain = nn.Conv2d(3, 4, 3, stride=2, padding=1, dtype=D)
    x = torch.randn(2, 3, 9, 9, dtype=D)
    before = plain(x)  # tuvify converts in place: the plain layer's output is taken first
    tuv = tuvify(plain)
    assert isinstance(tuv, TUVConv2d) and torch.equal(tuv.T, torch.eye(4, dtype=D))
    assert torch.allclose(tuv(x), before, atol=TOL, rtol=0)


@pytest.mark.parametrize("make", [lambda: nn.Linear(3, 2, dtype=D), lambda: nn.Conv2d(2, 3, 3, dtype=D)])
def test_tuvify_converts_a_bare_layer_in_place_and_returns_it(make):
    """tuvify(layer) returns that same object, now a TUV layer; a frozen or already TUV layer comes back as it was."""
    layer = make()
    plain_type, weight = type(layer), layer.weight
    out = tuvify(layer)
    assert out is layer and isinstance(layer, TUVLinear | TUVConv2d) and isinstance(layer, plain_type)
    assert layer.U is weight and [n for n, _ in layer.named_parameters()] == ["U", "T", "V", "bias"]
    before = {n: p.clone() for n, p in layer.named_parameters()}
    assert tuvify(layer, use_mask=True) is layer and layer.mask_logit is None  # already TUV: untouched
    assert all(torch.equal(p, before[n]) for n, p in layer.named_parameters())
    frozen = make().requires_grad_(False)
    assert tuvify(frozen) is frozen and type(frozen) is plain_type


def test_default_init_matches_torch_layer_distribution():
    torch.manual_seed(3)
    plain = nn.Linear(50, 40)
    torch.manual_seed(3)
    tuv = TUVLinear(50, 40, use_T=False, use_V=False)
    assert torch.equal(tuv.U, plain.weight) and torch.equal(tuv.bias, plain.bias)


def small_convnet():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Sequential(nn.Linear(5 * 2 * 2, 3)),
    ).double()


def test_tuvify_preserves_outputs_of_conv_net():
    net = small_convnet().eval()
    x = torch.randn(3, 1, 8, 8, dtype=D)
    before = net(x)
    net = tuvify(net)
    assert sum(isinstance(m, TUVConv2d | TUVLinear) for m in net.modules()) == 3
    assert not any(type(m) in (nn.Conv2d, nn.Linear) for m in net.modules())
    assert torch.allclose(net(x), before, atol=TOL, rtol=0)


def test_drop_factors_and_fast_split():
    net = tuvify(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2)), use_T=True, use_V=False)
    names = dict(net.named_parameters())
    assert "0.T" in names and "0.V" not in names and "2.T" in names
    assert fast_names(net) == ["0.U", "0.bias", "1.weight", "1.bias", "2.U", "2.bias"]
    fast, static = split_params(net)
    assert set(static) == {"0.T", "2.T"} and set(fast).isdisjoint(static)
    maml = tuvify(nn.Linear(3, 2), use_T=False, use_V=False)
    assert [n for n, _ in maml.named_parameters()] == ["U", "bias"]


def test_tuvify_keeps_ties_hooks_and_attributes():
    """A layer under two names is converted once (same object, one set of T, U, V); the object, its attributes
    and its hooks are the user's own; outputs are unchanged."""
    lin = nn.Linear(3, 3, dtype=D)
    lin.tag = "shared"
    calls = []
    lin.register_forward_hook(lambda m, i, o: calls.append(1))
    net = nn.Sequential(lin, nn.Tanh(), lin)
    outer = nn.ModuleDict({"net": net, "alias": lin})
    x = torch.randn(4, 3, dtype=D)
    before = net(x)
    weight = lin.weight
    assert tuvify(outer) is outer
    assert net[0] is net[2] is outer["alias"] is lin and isinstance(lin, TUVLinear) and isinstance(lin, nn.Linear)
    assert lin.U is weight and lin.tag == "shared"  # the old weight Parameter object is U
    assert [n for n, _ in net.named_parameters()] == ["0.U", "0.T", "0.V", "0.bias"]
    calls.clear()
    assert torch.allclose(net(x), before, atol=TOL, rtol=0) and len(calls) == 2
    random_factors(lin)
    assert torch.equal(net[2].weight, outer["alias"].weight)


def test_tuvify_leaves_frozen_layers_frozen():
    """A frozen layer (weight requires_grad=False) is not converted; it neither adapts nor gets a meta-gradient."""
    from metatuv.meta import MetaLearner, mse

    frozen = nn.Linear(1, 4, dtype=D).requires_grad_(False)
    net = tuvify(nn.Sequential(frozen, nn.Tanh(), nn.Linear(4, 1, dtype=D)))
    assert type(net[0]) is nn.Linear and isinstance(net[2], TUVLinear)
    assert fast_names(net) == ["2.U", "2.bias"]
    learner = MetaLearner(net, mse, 0.1, 2)
    batch = tuple(torch.randn(2, 5, 1, dtype=D) for _ in range(4))
    learner.backward(batch)
    assert frozen.weight.grad is None and frozen.bias.grad is None and net[2].T.grad is not None
    adapted = learner.adapt_task(learner.params(), batch[0][0], batch[1][0])
    assert adapted["0.weight"] is frozen.weight and not torch.equal(adapted["2.U"], net[2].U)


def plain_conv_reference(plain: nn.Module, T, U, V):
    """The plain layer computing W = T·U·V, W[o, i, ...] = Σ_a Σ_b T[o, a] U[a, b, ...] V[b, i] (explicit loops)."""
    W = torch.zeros_like(U)
    for o in range(U.shape[0]):
        for i in range(U.shape[1]):
            W[o, i] = sum(T[o, a] * U[a, b] * V[b, i] for a in range(U.shape[0]) for b in range(U.shape[1]))
    ref = copy.deepcopy(plain)
    with torch.no_grad():
        ref.weight.copy_(W)
    return ref


@pytest.mark.parametrize(
    "plain",
    [
        nn.Conv1d(4, 6, 3, groups=2, padding=1, padding_mode="circular", dtype=D),
        nn.Conv2d(3, 4, 3, padding="same", padding_mode="reflect", dtype=D),
        nn.Conv2d(4, 4, 3, groups=4, stride=2, dtype=D),
        nn.Conv3d(2, 3, 2, padding=1, padding_mode="replicate", dtype=D),
    ],
    ids=["conv1d-groups-circular", "conv2d-same-reflect", "conv2d-depthwise", "conv3d-replicate"],
)
def test_conv_variants_equal_plain_conv_with_composed_weight(plain):
    kind = type(plain)
    x = torch.randn(2, plain.in_channels, *[7] * (plain.weight.dim() - 2), dtype=D)
    reference = copy.deepcopy(plain)
    layer = tuvify(plain)
    assert isinstance(layer, kind) and layer.groups == reference.groups and layer.padding_mode == plain.padding_mode
    assert torch.allclose(layer(x), reference(x), atol=TOL, rtol=0)  # identity factors
    random_factors(layer)
    ref = plain_conv_reference(reference, layer.T.detach(), layer.U.detach(), layer.V.detach())
    assert torch.allclose(layer(x), ref(x), atol=TOL, rtol=0)


def layer_with_factors(use_T=True, use_V=True):
    layer = tuvify(nn.Linear(4, 3, dtype=D), use_T=use_T, use_V=use_V)
    random_factors(layer)
    return layer


@pytest.mark.parametrize(
    "write",
    [
        lambda layer, w: nn.init.zeros_(layer.weight) if w is None else None,
        lambda layer, w: setattr(layer, "weight", nn.Parameter(w)),
        lambda layer, w: setattr(layer, "weight", w),
        lambda layer, w: layer.weight.data.copy_(w),
        lambda layer, w: layer.weight.detach().copy_(w),
        lambda layer, w: layer.weight.__setitem__(slice(None), w),
        lambda layer, w: layer.load_state_dict({"weight": w, "bias": layer.bias.detach()}),
        lambda layer, w: setattr(layer.weight, "data", w),
        lambda layer, w: layer.weight.set_(w.clone()),
        lambda layer, w: layer.weight.set_(source=w.clone()),
        lambda layer, w: torch.mul(w, 1.0, out=layer.weight),
        lambda layer, w: layer.weight.T.copy_(w.T),
        lambda layer, w: layer.weight.mT.copy_(w.T),
        lambda layer, w: [layer.weight[i].copy_(w[i]) for i in range(3)],
        lambda layer, w: [layer.weight[i][1:].copy_(w[i, 1:]) for i in range(3)] + [layer.weight[:, 0].copy_(w[:, 0])],
    ],
    ids=[
        "init-zeros",
        "assign-parameter",
        "assign-tensor",
        "data-copy",
        "detach-copy",
        "setitem",
        "state-dict",
        "data-assign",
        "set_",
        "set_-keyword",
        "out=",
        "T-property",
        "mT-property",
        "row-views",
        "views-of-views",
    ],
)
@pytest.mark.parametrize("factors", [(True, True), (True, False), (False, False)], ids=["tuv", "tnet", "maml"])
def test_writing_the_weight_lands(write, factors):
    """Every way torch code writes a weight lands: W = T·U·V equals what was written, T and V are kept."""
    layer = layer_with_factors(*factors)
    T0, V0 = (None if f is None else f.detach().clone() for f in (layer.T, layer.V))
    w = torch.randn(3, 4, dtype=D)
    zeros = write.__code__.co_consts and "zeros" in str(write.__code__.co_names)
    with torch.no_grad():
        write(layer, None if zeros else w)
    expected = torch.zeros(3, 4, dtype=D) if zeros else w
    assert torch.allclose(layer.weight, expected, atol=1e-12, rtol=0)
    x = torch.randn(5, 4, dtype=D)
    assert torch.allclose(layer(x), x @ expected.T + layer.bias, atol=1e-12, rtol=0)
    for f, f0 in zip((layer.T, layer.V), (T0, V0), strict=True):
        assert (f is None and f0 is None) or torch.equal(f, f0)


def test_init_and_reset_parameters_land_like_plain_layer():
    layer = layer_with_factors()
    plain = nn.Linear(4, 3, dtype=D)
    torch.manual_seed(5)
    nn.init.kaiming_uniform_(layer.weight, a=0.3)
    nn.init.orthogonal_(layer.weight)
    torch.manual_seed(5)
    nn.init.kaiming_uniform_(plain.weight, a=0.3)
    nn.init.orthogonal_(plain.weight)
    assert torch.allclose(layer.weight, plain.weight, atol=1e-12, rtol=0)
    torch.manual_seed(6)
    layer.reset_parameters()  # nn.Linear's own
    torch.manual_seed(6)
    plain.reset_parameters()
    assert torch.allclose(layer.weight, plain.weight, atol=1e-12, rtol=0) and torch.equal(layer.bias, plain.bias)


def test_plain_state_dict_loads_strictly_and_tuv_checkpoint_names_stay():
    net = tuvify(nn.Sequential(nn.Linear(4, 3, dtype=D), nn.ReLU(), nn.Linear(3, 2, dtype=D)), use_mask=True)
    assert list(net.state_dict()) == [f"{i}.{k}" for i in (0, 2) for k in ("U", "T", "V", "mask_logit", "bias")]
    for m in (net[0], net[2]):
        random_factors(m)
    plain = nn.Sequential(nn.Linear(4, 3, dtype=D), nn.ReLU(), nn.Linear(3, 2, dtype=D))
    net.load_state_dict(plain.state_dict())  # strict: T, V, mask logits keep their values
    x = torch.randn(5, 4, dtype=D)
    assert torch.allclose(net(x), plain(x), atol=1e-12, rtol=0)
    copy_ = tuvify(nn.Sequential(nn.Linear(4, 3, dtype=D), nn.ReLU(), nn.Linear(3, 2, dtype=D)), use_mask=True)
    copy_.load_state_dict(net.state_dict())
    assert torch.equal(copy_(x), net(x))
    with pytest.raises(RuntimeError, match="both '0.weight' and '0.U'"):
        copy_.load_state_dict({**net.state_dict(), "0.weight": plain[0].weight})


def test_writing_through_a_singular_factor_raises_one_line():
    layer = layer_with_factors()
    with torch.no_grad():
        layer.T[1] = layer.T[0]
    with pytest.raises(ValueError, match="singular"):
        nn.init.zeros_(layer.weight)


def test_bias_inside_T_step_is_preconditioned_by_TTt():
    """Lee & Choi's placement y = T(U·V·x + b), checked against a hand-written float64 forward and step.

    The effective bias c = T·b moves by −α·TTᵀ·∂L/∂c after one step on b; the default placement moves b by
    −α·∂L/∂b. The reference shares no code with the layer (plain matrix products)."""
    from metatuv.meta import MetaLearner, mse

    net = tuvify(nn.Sequential(nn.Linear(2, 3, dtype=D), nn.Tanh(), nn.Linear(3, 1, dtype=D)), bias_inside_T=True)
    for m in (net[0], net[2]):
        random_factors(m)
    P = {n: p.detach().clone().requires_grad_() for n, p in net.named_parameters()}

    def reference(P, x):
        h = torch.tanh((P["0.T"] @ (P["0.U"] @ P["0.V"] @ x.T + P["0.bias"][:, None])).T)
        return (P["2.T"] @ (P["2.U"] @ P["2.V"] @ h.T + P["2.bias"][:, None])).T

    xs, ys, xq, yq = (torch.randn(6, d, dtype=D) for d in (2, 1, 2, 1))
    assert torch.allclose(net(xs), reference(P, xs), atol=TOL, rtol=0)
    alpha = 0.3
    support = ((reference(P, xs) - ys) ** 2).mean()
    g = dict(
        zip(
            ("0.U", "0.bias", "2.U", "2.bias"),
            torch.autograd.grad(support, [P["0.U"], P["0.bias"], P["2.U"], P["2.bias"]], create_graph=True),
            strict=True,
        )
    )
    adapted = {**P, **{n: P[n] - alpha * g[n] for n in g}}
    # the effective bias of the head, c = T·b, moved by −α·TTᵀ·∂L/∂c
    c = (P["2.T"] @ P["2.bias"]).detach().requires_grad_()
    out = (
        P["2.T"] @ P["2.U"] @ P["2.V"] @ torch.tanh(P["0.T"] @ (P["0.U"] @ P["0.V"] @ xs.T + P["0.bias"][:, None]))
        + c[:, None]
    ).T
    (gc,) = torch.autograd.grad(((out - ys) ** 2).mean(), c)
    T2 = P["2.T"].detach()
    assert torch.allclose(T2 @ adapted["2.bias"].detach() - c.detach(), -alpha * T2 @ T2.T @ gc, atol=TOL, rtol=0)
    query = ((reference(adapted, xq) - yq) ** 2).mean()
    ref_grads = dict(zip(P, torch.autograd.grad(query, list(P.values())), strict=True))

    learner = MetaLearner(net, mse, alpha, 1)
    batch = (xs[None], ys[None], xq[None], yq[None])
    loss = learner.backward(batch)
    assert abs(loss.item() - query.item()) <= 1e-12
    for n, p in net.named_parameters():
        assert torch.allclose(p.grad, ref_grads[n], atol=1e-12, rtol=0), n
    default = tuvify(nn.Linear(2, 3, dtype=D))
    random_factors(default)
    x = torch.randn(4, 2, dtype=D)
    assert torch.allclose(default(x), x @ default.weight.detach().T + default.bias, atol=TOL, rtol=0)


CONV_ATTRS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_a_directly_built_conv_has_the_plain_layers_defaults_and_factors(dims):
    """TUVConvNd(4, 6, 3) is nn.ConvNd(4, 6, 3) (padding 0, stride 1, a bias) with T (6×6), V (4×4), no mask."""
    tuv_cls, plain_cls = {1: (TUVConv1d, nn.Conv1d), 2: (TUVConv2d, nn.Conv2d), 3: (TUVConv3d, nn.Conv3d)}[dims]
    layer, plain = tuv_cls(4, 6, 3, dtype=D), plain_cls(4, 6, 3, dtype=D)
    assert {a: getattr(layer, a) for a in CONV_ATTRS} == {a: getattr(plain, a) for a in CONV_ATTRS}
    assert layer.T.shape == (6, 6) and layer.V.shape == (4, 4) and layer.bias.shape == (6,)
    assert layer.mask_logit is None and layer.bias_inside_T is False
    assert "bias_inside_T" not in repr(layer)
    x = torch.randn(2, 4, *[5] * dims, dtype=D)
    random_factors(layer)
    W = layer.weight.detach()
    assert layer(x).shape == plain(x).shape  # padding 0: the spatial size shrinks as the plain layer's does
    assert torch.allclose(layer(x), plain._conv_forward(x, W, layer.bias), atol=TOL, rtol=0)


def test_a_directly_built_layer_uses_every_argument():
    """Stride, padding, dilation, groups, padding mode, bias, use_T/V, mask and bias_inside_T all reach the layer."""
    kw = {"stride": 2, "padding": 1, "dilation": 2, "groups": 2, "padding_mode": "reflect", "bias": False}
    layer = TUVConv2d(4, 6, 3, use_T=False, use_mask=True, bias_inside_T=True, dtype=D, **kw)
    plain = nn.Conv2d(4, 6, 3, dtype=D, **kw)
    assert {a: getattr(layer, a) for a in CONV_ATTRS} == {a: getattr(plain, a) for a in CONV_ATTRS}
    assert layer.T is None and layer.V.shape == (2, 2) and layer.bias is None
    assert layer.mask_logit.shape == (6,) and layer.mask_logit.dtype == D and layer.bias_inside_T is True
    x = torch.randn(2, 4, 9, 9, dtype=D)
    assert torch.allclose(layer(x), plain._conv_forward(x, layer.weight.detach(), None), atol=TOL, rtol=0)
    for inside in (TUVConv2d(4, 6, 3, bias_inside_T=True, dtype=D), TUVLinear(4, 6, bias_inside_T=True, dtype=D)):
        random_factors(inside)
        assert inside.bias_inside_T is True and "U=" in repr(inside) and repr(inside).endswith("bias_inside_T=True)")
        assert torch.allclose(inside.effective_bias(), inside.T @ inside.bias, atol=TOL, rtol=0)
    lin = TUVLinear(4, 6, dtype=D)
    assert lin.T.shape == (6, 6) and lin.V.shape == (4, 4) and lin.bias.shape == (6,) and lin.mask_logit is None
    assert lin.bias_inside_T is False and TUVLinear(4, 6, use_mask=True, dtype=D).mask_logit.dtype == D


def test_bias_init_of_tiny_layers_is_torchs():
    """The bias is U(±1/√fan_in) as in torch, 0 when fan_in = 0; one output row works (fan_in from U[0])."""
    torch.manual_seed(0)
    one_in = TUVLinear(1, 50, dtype=D)  # bound 1
    assert one_in.bias.abs().max() <= 1 and one_in.bias.abs().max() > 0.5
    assert TUVLinear(5, 1, dtype=D).bias.abs().max() <= 5**-0.5
    with pytest.warns(UserWarning, match="zero-element"):
        empty = TUVLinear(0, 3, dtype=D)  # torch's Linear(0, 3) gives a zero bias too
    assert torch.equal(empty.bias, torch.zeros(3, dtype=D))


@pytest.mark.parametrize("make", [lambda: TUVLinear(4, 3, dtype=D), lambda: TUVConv2d(4, 3, 3, dtype=D)])
def test_a_directly_built_layer_loads_a_plain_state_dict(make):
    """Built directly (not through tuvify), a TUV layer still loads a plain layer's weight into U = T⁻¹·W·V⁻¹."""
    layer = make()
    random_factors(layer)
    plain = (nn.Linear(4, 3, dtype=D) if isinstance(layer, TUVLinear) else nn.Conv2d(4, 3, 3, dtype=D)).state_dict()
    layer.load_state_dict(plain)
    assert torch.allclose(layer.weight, plain["weight"], atol=1e-12, rtol=0) and torch.equal(layer.bias, plain["bias"])


def test_reading_the_weight_into_other_tensors_leaves_the_layer_as_a_plain_layer_would():
    """Only writes into the weight (or its aliases) land in U: ``x.add_(weight)`` changes x alone, and ``set_`` on a
    detached alias re-points that alias, not the layer (as for nn.Linear)."""
    layer, plain = layer_with_factors(), nn.Linear(4, 3, dtype=D)
    for lin in (layer, plain):
        W0, x = lin.weight.detach().clone(), torch.zeros(3, 4, dtype=D)
        with torch.no_grad():
            x.add_(lin.weight)
            lin.weight.detach().set_(torch.randn(3, 4, dtype=D))
            y = torch.zeros(12, dtype=D).view_as(lin.weight)
            y.add_(1)
        assert torch.equal(x, W0) and torch.allclose(lin.weight, W0, atol=1e-12, rtol=0)
        assert type(y) is torch.Tensor and torch.equal(y, torch.ones(3, 4, dtype=D))
    U0 = layer.U.detach().clone()
    W = layer.weight
    W.retain_grad()
    W.sum().backward()
    W.grad.zero_()  # a gradient is not an alias of the weight: U stays bit for bit
    assert torch.equal(layer.U, U0)


def test_a_plain_state_dict_with_factors_uses_its_own_T_and_V():
    """{weight, T, V} (a TUV model exported as W with its factors): U = T_sd⁻¹·W·V_sd⁻¹, so T·U·V = W."""
    net = nn.Sequential(layer_with_factors())
    W, T, V = (
        torch.randn(3, 4, dtype=D),
        torch.eye(3, dtype=D) + 0.3 * torch.randn(3, 3, dtype=D),
        torch.eye(4, dtype=D),
    )
    V = V + 0.3 * torch.randn(4, 4, dtype=D)
    net.load_state_dict({"0.weight": W, "0.T": T, "0.V": V, "0.bias": torch.zeros(3, dtype=D)})
    assert torch.equal(net[0].T, T) and torch.equal(net[0].V, V)
    assert torch.allclose(net[0].weight, W, atol=1e-12, rtol=0)


def test_a_plain_state_dict_is_strict_about_its_bias_and_names_the_layer_it_cannot_load():
    layer = layer_with_factors()
    with pytest.raises(RuntimeError, match="Missing key.*bias"):  # strict, as for nn.Linear
        layer.load_state_dict({"weight": torch.randn(3, 4, dtype=D)})
    named = nn.Sequential(collections.OrderedDict(act=nn.ReLU(), projX=layer))
    for model, who in (
        (layer, "TUVLinear.weight = W"),
        (nn.Sequential(nn.ReLU(), layer), "1.weight = W"),
        (named, "projX.weight = W"),
    ):
        with torch.no_grad():
            layer.T[1] = layer.T[0]  # singular
        with pytest.raises(ValueError, match=re.escape(who) + ".*singular"):
            model.load_state_dict({k.replace("U", "weight"): v for k, v in model.state_dict().items()})


def test_conv4_defaults_are_the_omniglot_net_and_max_pool_the_mini_imagenet_net():
    """conv4(5): 28×28×1, 64 channels, stride-2 3×3 convs (28→14→7→4→2), head 64·2·2 → 5, T and V, no mask;
    pool="max": stride-1 convs each followed by a 2×2 max-pool (84→42→21→10→5), head 32·5·5 → 5."""
    omniglot = conv4(5)
    convs = [m for m in omniglot if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride, c.padding) for c in convs] == [
        (1, 64, (2, 2), (1, 1)),
        *[(64, 64, (2, 2), (1, 1))] * 3,
    ]
    assert not any(isinstance(m, nn.MaxPool2d) for m in omniglot) and omniglot[-1].in_features == 256
    layers = [m for m in omniglot if isinstance(m, TUVLayer)]
    assert all(m.T is not None and m.V is not None and m.mask_logit is None and not m.bias_inside_T for m in layers)
    assert omniglot(torch.randn(2, 1, 28, 28)).shape == (2, 5)
    mini = conv4(5, in_channels=3, hidden=32, image_size=84, pool="max")
    assert [c.stride for c in mini if isinstance(c, nn.Conv2d)] == [(1, 1)] * 4
    assert [m.kernel_size for m in mini if isinstance(m, nn.MaxPool2d)] == [2] * 4 and mini[-1].in_features == 800
    assert mini(torch.randn(2, 3, 84, 84)).shape == (2, 5)
    inside = conv4(5, use_mask=True, bias_inside_T=True)
    assert all(m.bias_inside_T and m.mask_logit is not None for m in inside if isinstance(m, TUVLayer))


@pytest.mark.parametrize("pool", ["stride", "max"])
def test_conv4_takes_the_smallest_image_and_refuses_a_smaller_one(pool):
    """16×16 is the smallest image four halvings leave at least 1×1 (16→8→4→2→1); 15×15 with max-pool leaves 0."""
    assert conv4(3, image_size=16, pool=pool, hidden=4)(torch.randn(2, 1, 16, 16)).shape == (2, 3)
    if pool == "max":
        with pytest.raises(ValueError, match="image_size=15 is too small"):
            conv4(3, image_size=15, pool=pool)


def test_solve_U_solves_in_the_promoted_dtype_and_checks_the_U_it_returns():
    """U = T⁻¹·W·V⁻¹ solved in the promoted dtype (float32 factors with a float64 W: float64, no dtype clash), returned
    in the layer's dtype and checked as returned: a nearly singular T or V is refused for T-net (V = I) and V-only
    layers too, and a float64 W that a float32 U cannot carry through an ill-conditioned T is refused as its float32
    copy is (found by the review: the check ran in float64 before the cast); a large W is judged by relative error."""
    torch.manual_seed(0)
    T, V, W = torch.eye(3) + 0.3 * torch.randn(3, 3), torch.eye(4) + 0.3 * torch.randn(4, 4), torch.randn(3, 4, dtype=D)
    for t, v in ((T, V), (T, None), (None, V)):
        U = solve_U(t, W, v, W.shape, "layer", D)
        assert U.dtype == D and torch.allclose(
            compose(None if t is None else t.double(), U, None if v is None else v.double()), W
        )
        assert solve_U(t, W, v, W.shape, "layer", torch.float32).dtype == torch.float32
    near = torch.ones(3, 3, dtype=D) + 1e-12 * torch.randn(3, 3, dtype=D)  # solvable, but T·U misses W
    for t, v, w in ((near, None, W), (None, near, W.T)):
        with pytest.raises(ValueError, match=r"lin\.weight = W: T or V is \(nearly\) singular"):
            solve_U(t, w, v, w.shape, "lin", D)
    big = 1e8 * W
    assert torch.allclose(
        compose(T.double(), solve_U(T.double(), big, V.double(), W.shape, "layer", D), V.double()), big
    )
    ill = torch.eye(8) + 3 * torch.randn(8, 8).triu(1)
    ill[3, 3] = 1e-5  # cond ≈ 1e9: float64 carries U, float32 cannot
    layer = tuvify(nn.Linear(8, 8, bias=False), use_V=False)
    with torch.no_grad():
        layer.T.copy_(ill)
    W8 = torch.randn(8, 8, dtype=D)
    for w in (W8, W8.float()):
        with pytest.raises(ValueError, match="singular"):
            layer.weight = w
    with pytest.raises(ValueError, match="singular"):
        layer.load_state_dict({"weight": W8})
    half = tuvify(nn.Linear(3, 3, dtype=torch.bfloat16))  # LU in float32, U kept in bfloat16
    nn.init.normal_(half.weight)
    assert half.U.dtype == torch.bfloat16


def test_fast_names_head_only_takes_the_last_layer_and_only_its_trainable_parameters():
    assert fast_names(mlp([2, 3, 3, 1]), head_only=True) == ["4.U", "4.bias"]  # the last of three layers
    assert fast_names(tuvify(nn.Linear(3, 2)), head_only=True) == ["U", "bias"]  # the model is the head
    assert fast_names(tuvify(nn.Linear(3, 2, bias=False)), head_only=True) == ["U"]
    frozen_bias = mlp([2, 3, 1])
    frozen_bias[2].bias.requires_grad_(False)
    assert fast_names(frozen_bias, head_only=True) == ["2.U"]


def test_mlp_builds_one_layer_and_passes_bias_inside_T():
    one = mlp([3, 2])
    assert len(one) == 1 and isinstance(one[0], TUVLinear) and one(torch.randn(5, 3)).shape == (5, 2)
    with pytest.raises(ValueError, match=r"sizes=\[3\] needs at least"):
        mlp([3])
    assert all(m.bias_inside_T for m in mlp([1, 4, 1], bias_inside_T=True) if isinstance(m, TUVLayer))


@pytest.mark.parametrize(
    "op",
    [
        lambda w: w.T.mul_(2),
        lambda w: w.mT.add_(1),
        lambda w: w.adjoint().mul_(3),
        lambda w: w.swapaxes(0, 1)[0].fill_(0.5),
        lambda w: w.unsqueeze(0).mul_(2),
        lambda w: w.diagonal().fill_(7),
        lambda w: w.view(-1)[3].fill_(9),
        lambda w: w.reshape(-1).mul_(2),
        lambda w: w.narrow(0, 1, 1).zero_(),
        lambda w: w.select(1, 2).fill_(4),
        lambda w: w[1:].mul_(0.5),
        lambda w: w.unflatten(1, (2, 2)).mul_(2),
        lambda w: w.movedim(0, 1).mul_(2),
        lambda w: w.detach().data.T[0].fill_(1),
    ],
)
def test_in_place_writes_through_views_land_as_in_a_plain_layer(op):
    """Each in-place write through a view of the weight changes a plain nn.Linear's weight; it changes W = T·U·V alike
    (.T, .adjoint(), .swapaxes(), .unsqueeze(), .diagonal() did nothing before: found by the review)."""
    layer, plain = layer_with_factors(), nn.Linear(4, 3, dtype=D)
    with torch.no_grad():
        plain.weight.copy_(layer.weight)
        op(layer.weight), op(plain.weight)
    assert torch.allclose(layer.weight, plain.weight, atol=1e-12, rtol=0)


def test_bias_inside_T_is_refused_for_a_subclass_with_its_own_forward_before_anything_converts():
    class Own(nn.Linear):
        def forward(self, x):
            return F.linear(x, self.weight, self.bias)

    net = nn.Sequential(nn.Linear(2, 3), Own(3, 2))
    with pytest.raises(ValueError, match="Own has its own forward, which would add the bias b instead of T·b"):
        tuvify(net, bias_inside_T=True)
    assert type(net[0]) is nn.Linear and type(net[1]) is Own  # nothing converted
    assert isinstance(tuvify(net)[1], TUVLinear)  # bias outside T: the subclass's forward is right


def test_tuvify_gives_a_torch_layer_subclass_its_own_tuv_subclass():
    """A user's nn.Linear subclass keeps its own forward (it was shadowed by TUVLinear.forward, silently: found while
    checking mutants of _tuv_class); W = T·U·V reaches it through super().forward and self.weight."""

    class Scaled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    a, b = Scaled(3, 2, dtype=D), Scaled(3, 2, dtype=D)
    x = torch.randn(4, 3, dtype=D)
    expected = a(x)
    tuvify(a), tuvify(b)
    assert type(a) is type(b) and type(a).__name__ == "TUVScaled" and isinstance(a, TUVLinear | Scaled)
    assert type(a).__module__ == "metatuv.nn.tuv"
    assert torch.allclose(a(x), expected, atol=TOL, rtol=0)
    random_factors(a)
    assert torch.allclose(a(x), 2 * (x @ a.weight.T + a.bias), atol=TOL, rtol=0)

    class ReadsWeight(nn.Conv2d):
        def forward(self, x):
            return F.conv2d(x, self.weight.flip(-1), self.bias)

    conv = tuvify(ReadsWeight(2, 3, 3, dtype=D))
    random_factors(conv)
    x = torch.randn(1, 2, 5, 5, dtype=D)
    assert torch.allclose(conv(x), F.conv2d(x, conv.weight.detach().flip(-1), conv.bias), atol=TOL, rtol=0)


def test_a_float64_state_dict_loads_into_a_float32_tuv_model_as_into_a_plain_one():
    """torch casts a float64 state dict into a float32 layer; U = T⁻¹·W·V⁻¹ did the solve in mixed dtypes and
    raised (found while checking mutants of solve_U)."""
    plain64, layer, plain = nn.Linear(4, 3).double(), layer_with_factors().float(), nn.Linear(4, 3)
    layer.load_state_dict(plain64.state_dict())
    plain.load_state_dict(plain64.state_dict())
    assert layer.U.dtype == torch.float32 and torch.allclose(layer.weight, plain.weight, atol=1e-6, rtol=0)


def test_tuvify_draws_the_random_numbers_a_directly_built_layer_draws():
    """Seeded runs keep their stream: converting a layer consumes what building a TUV layer of that shape, dtype and
    bias does (torch draws float64 numbers from more generator state than float32 ones)."""
    for dtype in (torch.float32, D):
        for bias in (True, False):
            kw = {"bias": bias, "dtype": dtype}
            torch.manual_seed(0)
            tuvify(nn.Linear(4, 3, **kw))
            converted = torch.rand(4)
            torch.manual_seed(0)
            nn.Linear(4, 3, **kw), TUVLinear(4, 3, **kw)
            assert torch.equal(converted, torch.rand(4)), kw
    masked = tuvify(nn.Linear(4, 3, dtype=D), use_mask=True)
    assert masked.mask_logit.dtype == D and masked.T.dtype == D and masked.V.dtype == D
    plain_repr = repr(compose(masked.T, masked.U, masked.V)).split("grad_fn")[0]  # a plain tensor's repr
    assert repr(masked.weight).split("grad_fn")[0] == plain_repr
