"""T and V from training statistics: function preserved, K-FAC step reproduced, damping keeps things finite."""

import pytest
import torch
from conftest import random_factors, vec
from torch import nn

from metatuv.inner import adapt
from metatuv.metric import StatisticsTracker, factors, reestimate, set_from_statistics
from metatuv.nn import TUVConv2d, TUVLayer, TUVLinear

D = torch.float64


def half_sse(out, y):
    return 0.5 * ((out - y) ** 2).sum(-1).mean()


def test_reestimation_keeps_outputs_float64():
    net = nn.Sequential(TUVConv2d(2, 3, 3, padding=1, dtype=D), nn.Tanh(), nn.Flatten(), TUVLinear(3 * 16, 2, dtype=D))
    for m in net.modules():
        if isinstance(m, TUVLayer):
            random_factors(m)
    x, y = torch.randn(8, 2, 4, 4, dtype=D), torch.randn(8, 2, dtype=D)
    before = net(x)
    tracker = reestimate(net, half_sse, [(x, y)], damping=1e-3)
    assert torch.allclose(net(x), before, atol=1e-10, rtol=0)
    conv = net[0]
    A, G = tracker.A["0"], tracker.G["0"]
    assert A.shape == (2, 2) and G.shape == (3, 3)
    left, right = factors(conv)
    assert torch.allclose(left, torch.linalg.inv(G + 1e-3 * torch.eye(3, dtype=D)), atol=1e-8)
    assert torch.allclose(right, torch.linalg.inv(A + 1e-3 * torch.eye(2, dtype=D)), atol=1e-8)


def test_linear_least_squares_step_is_the_dense_kfac_step():
    m, n, batch, lam, alpha = 3, 4, 32, 1e-2, 0.05
    layer = TUVLinear(n, m, bias=False, dtype=D)
    X = torch.randn(batch, n, dtype=D) @ torch.randn(n, n, dtype=D)  # correlated inputs
    Y = torch.randn(batch, m, dtype=D)
    tracker = StatisticsTracker(layer)
    tracker.observe(half_sse, X, Y)
    R = X @ layer.weight.detach().T - Y  # per-sample δ of ½‖Wx − y‖²
    A, G = tracker.A[""], tracker.G[""]
    assert torch.allclose(A, X.T @ X / batch, atol=1e-12) and torch.allclose(G, R.T @ R / batch, atol=1e-12)
    set_from_statistics(layer, A, G, lam)

    W = layer.weight.detach()
    Wleaf = W.clone().requires_grad_()
    (grad_W,) = torch.autograd.grad(half_sse(X @ Wleaf.T, Y), Wleaf)

    def loss(fast):
        return half_sse(torch.func.functional_call(layer, {**dict(layer.named_parameters()), **fast}, (X,)), Y)

    U1 = adapt(loss, {"U": layer.U}, steps=1, lr=alpha)["U"]
    W1 = layer.T.detach() @ U1.detach() @ layer.V.detach()
    eye = lambda k: torch.eye(k, dtype=D)  # noqa: E731
    kfac = torch.kron(torch.linalg.inv(A + lam * eye(n)), torch.linalg.inv(G + lam * eye(m)))
    assert torch.allclose(vec(W1 - W), -alpha * kfac @ vec(grad_W), atol=1e-10, rtol=0)


def test_damping_keeps_singular_statistics_finite():
    layer = TUVLinear(3, 2, dtype=D)
    direction = torch.tensor([[1.0, 2.0, -1.0]], dtype=D)
    X = torch.randn(10, 1, dtype=D) @ direction  # rank-1 inputs: A is singular
    Y = torch.zeros(10, 2, dtype=D)
    before = layer(X)
    tracker = reestimate(layer, half_sse, [(X, Y)], damping=1e-4)
    assert torch.linalg.matrix_rank(tracker.A[""]) == 1
    for p in (layer.T, layer.U, layer.V):
        assert torch.isfinite(p).all()
    assert torch.allclose(layer(X), before, atol=1e-9)
    _, right = factors(layer)
    assert torch.linalg.eigvalsh(right).max() <= 1e4 * (1 + 1e-9)  # ≤ 1/λ
    with pytest.raises(ValueError, match="damping=0"):
        set_from_statistics(layer, tracker.A[""], tracker.G[""], damping=0)


def test_running_average_and_missing_factors():
    layer = TUVLinear(2, 2, use_T=False, dtype=D)
    tracker = StatisticsTracker(layer, decay=0.5)
    x1, x2 = torch.randn(4, 2, dtype=D), torch.randn(4, 2, dtype=D)
    y = torch.zeros(4, 2, dtype=D)
    tracker.observe(half_sse, x1, y)
    tracker.observe(half_sse, x2, y)
    assert torch.allclose(tracker.A[""], 0.5 * x1.T @ x1 / 4 + 0.5 * x2.T @ x2 / 4)
    before = layer(x1)
    set_from_statistics(layer, tracker.A[""], tracker.G[""], 1e-3)
    assert layer.T is None and torch.allclose(layer(x1), before, atol=1e-10)


def test_normalize_keeps_direction_and_function_with_unit_mean_eigenvalue():
    layer = TUVConv2d(3, 4, 3, padding=1, dtype=D)
    x, y = torch.randn(6, 3, 5, 5, dtype=D), torch.randn(6, 4, 5, 5, dtype=D)
    loss = lambda out, t: 0.5 * ((out - t) ** 2).sum((1, 2, 3)).mean()  # noqa: E731
    before = layer(x)
    tracker = reestimate(layer, loss, [(x, y)], damping=1e-2, normalize=True)
    assert torch.allclose(layer(x), before, atol=1e-10, rtol=0)
    left, right = factors(layer)
    assert torch.allclose(torch.linalg.eigvalsh(left).mean(), torch.tensor(1.0, dtype=D))
    assert torch.allclose(torch.linalg.eigvalsh(right).mean(), torch.tensor(1.0, dtype=D))
    # same K-FAC directions: each factor is a positive multiple of the unnormalized one
    G = torch.linalg.inv(tracker.G[""] + 1e-2 * torch.eye(4, dtype=D))
    A = torch.linalg.inv(tracker.A[""] + 1e-2 * torch.eye(3, dtype=D))
    assert torch.allclose(left / left.trace(), G / G.trace(), atol=1e-10)
    assert torch.allclose(right / right.trace(), A / A.trace(), atol=1e-10)


@pytest.mark.parametrize(
    "conv, shape",
    [
        (lambda: nn.Conv1d(3, 4, 3, dtype=D), (6, 3, 7)),
        (lambda: nn.Conv3d(3, 4, 2, dtype=D), (6, 3, 3, 3, 3)),
        (lambda: nn.Conv2d(4, 6, 3, groups=2, dtype=D), (6, 4, 5, 5)),
    ],
    ids=["conv1d", "conv3d", "conv2d-groups2"],
)
def test_reestimation_of_conv1d_conv3d_and_grouped_convs(conv, shape):
    """A = E[x xᵀ] over samples and positions (a grouped conv: the mean of its groups' blocks), Γ likewise for the
    per-sample output gradient, by hand in numpy; the layer's function unchanged."""
    from metatuv.nn import tuvify

    torch.manual_seed(0)
    layer = tuvify(conv())
    random_factors(layer)
    x = torch.randn(*shape, dtype=D)
    out = layer(x)
    y = torch.randn_like(out)
    before = out.detach()
    tracker = reestimate(layer, lambda o, t: 0.5 * ((o - t) ** 2).flatten(1).sum(1).mean(), [(x, y)], damping=1e-3)
    assert torch.allclose(layer(x), before, atol=1e-10, rtol=0)

    g = layer.groups
    xs = x.numpy().swapaxes(0, 1).reshape(shape[1], -1)
    A = xs @ xs.T / xs.shape[1]
    n = shape[1] // g
    A = sum(A[i * n : (i + 1) * n, i * n : (i + 1) * n] for i in range(g)) / g
    d = (before - y).numpy()  # per-sample δ of the summed half squared error
    ds = d.swapaxes(0, 1).reshape(d.shape[1], -1)
    G = ds @ ds.T / ds.shape[1]
    assert tracker.A[""].shape == (n, n) and tracker.G[""].shape == (d.shape[1], d.shape[1])
    assert torch.allclose(tracker.A[""], torch.from_numpy(A), atol=1e-12, rtol=0)
    assert torch.allclose(tracker.G[""], torch.from_numpy(G), atol=1e-12, rtol=0)
    left, right = factors(layer)
    assert torch.allclose(right, torch.linalg.inv(torch.from_numpy(A) + 1e-3 * torch.eye(n, dtype=D)), atol=1e-8)
    assert torch.allclose(left, torch.linalg.inv(torch.from_numpy(G) + 1e-3 * torch.eye(len(G), dtype=D)), atol=1e-8)


def test_reestimation_of_a_linear_layer_on_sequences():
    """nn.Linear on (B, S, F) input: A and Γ are covariances of the LAST dim over samples and positions (numpy)."""
    from metatuv.nn import tuvify

    torch.manual_seed(0)
    layer = tuvify(nn.Linear(3, 4, dtype=D))
    random_factors(layer)
    x = torch.randn(6, 5, 3, dtype=D)
    y = torch.randn(6, 5, 4, dtype=D)
    before = layer(x).detach()
    tracker = reestimate(layer, lambda o, t: 0.5 * ((o - t) ** 2).flatten(1).sum(1).mean(), [(x, y)], damping=1e-3)
    assert torch.allclose(layer(x), before, atol=1e-10, rtol=0)
    xs = x.numpy().reshape(-1, 3)
    ds = (before - y).numpy().reshape(-1, 4)
    assert torch.allclose(tracker.A[""], torch.from_numpy(xs.T @ xs / len(xs)), atol=1e-12, rtol=0)
    assert torch.allclose(tracker.G[""], torch.from_numpy(ds.T @ ds / len(ds)), atol=1e-12, rtol=0)


def test_a_layer_used_twice_in_one_pass_averages_its_uses():
    """A tied layer (the same nn.Linear at two places): A is the equal-weight mean of its two inputs' covariances
    within one pass (not a running average over the uses); a second pass then updates the running average once."""
    from metatuv.nn import tuvify

    torch.manual_seed(0)
    lin = nn.Linear(3, 3, dtype=D)
    net = tuvify(nn.Sequential(lin, nn.Tanh(), lin))
    x, y = torch.randn(8, 3, dtype=D), torch.randn(8, 3, dtype=D)
    h = torch.tanh(net[0](x)).detach().numpy()
    xs = x.numpy()
    tracker = StatisticsTracker(net, decay=0.5)
    tracker.observe(half_sse, x, y)
    assert list(tracker.A) == ["0"]
    A = (xs.T @ xs / 8 + h.T @ h / 8) / 2
    assert torch.allclose(tracker.A["0"], torch.from_numpy(A), atol=1e-12, rtol=0)
    tracker.observe(half_sse, 2 * x, y)
    h2 = torch.tanh(net[0](2 * x)).detach().numpy()
    A2 = (4 * xs.T @ xs / 8 + h2.T @ h2 / 8) / 2
    assert torch.allclose(tracker.A["0"], torch.from_numpy(0.5 * A + 0.5 * A2), atol=1e-12, rtol=0)
