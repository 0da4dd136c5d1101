"""TUV layers: the seed's identities (float64, ≤ 1e-10) and equivalence with the plain torch layers."""

import pytest
import torch
import torch.nn.functional as F
from conftest import random_factors, vec
from torch import nn

from metatuv.nn import TUVConv2d, TUVLinear, compose, fast_names, split_params, tuvify

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
        expected = W0 - alpha * (T @ T.T) @ G_tap @ (V.T @ V)  # Eq. 2
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
    tuv = tuvify(plain)
    assert isinstance(tuv, TUVConv2d) and torch.equal(tuv.T, torch.eye(4, dtype=D))
    x = torch.randn(2, 3, 9, 9, dtype=D)
    assert torch.allclose(tuv(x), plain(x), atol=TOL, rtol=0)


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


def test_tuvify_rejects_grouped_conv():
    with pytest.raises(ValueError, match="groups=2"):
        tuvify(nn.Conv2d(4, 4, 3, groups=2))
