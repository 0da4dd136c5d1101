"""Every identity of docs/derivation.md, checked numerically in float64 with plain torch and autograd.

The checks share no code with metatuv: the layers are written out here with F.linear / F.conv2d and einsum, the
gradients come from torch.autograd, and vec is column stacking (the convention of docs/derivation.md).
"""

import math

import pytest
import torch
import torch.nn.functional as F

D = torch.float64
TOL = 1e-10
ALPHA = 0.07


def vec(X: torch.Tensor) -> torch.Tensor:
    """Column-stacking vec of a matrix, or of an (m, n, taps) array (first index fastest)."""
    return X.permute(*reversed(range(X.dim()))).reshape(-1)


def near_identity(d: int) -> torch.Tensor:
    return torch.eye(d, dtype=D) + 0.3 * torch.randn(d, d, dtype=D)


def loss_of(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((out - target) ** 2).sum() + out.tanh().sum()  # not quadratic: G depends on W


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, atol=TOL, rtol=0)


def test_kronecker_vec_identity():
    """vec(A·X·B) = (Bᵀ ⊗ A)·vec(X) for rectangular A (p×m), X (m×n), B (n×q)."""
    A, X, B = torch.randn(3, 4, dtype=D), torch.randn(4, 5, dtype=D), torch.randn(5, 2, dtype=D)
    assert close(vec(A @ X @ B), torch.kron(B.T.contiguous(), A) @ vec(X))  # contiguous: kron refuses a strided input


@pytest.mark.parametrize("factors", ["TUV", "T only (T-net)", "V only", "neither (MAML)"])
def test_linear_layer_identities(factors):
    """W = T·U·V: ∂L/∂U = Tᵀ·G·Vᵀ; one SGD step on U moves W by −α·TTᵀ·G·VᵀV; vec form with P = VᵀV ⊗ TTᵀ, PSD,
    eigenvalues the products of the factors' eigenvalues; T = V = I gives MAML's step −α·G."""
    m, n = 4, 5
    T = near_identity(m) if "T" in factors else torch.eye(m, dtype=D)
    V = near_identity(n) if "TUV" in factors or "V only" in factors else torch.eye(n, dtype=D)
    U = torch.randn(m, n, dtype=D, requires_grad=True)
    x, target = torch.randn(7, n, dtype=D), torch.randn(7, m, dtype=D)

    (gU,) = torch.autograd.grad(loss_of(F.linear(x, T @ U @ V), target), U)
    W = (T @ U @ V).detach().requires_grad_()
    (G,) = torch.autograd.grad(loss_of(F.linear(x, W), target), W)
    assert close(gU, T.T @ G @ V.T)

    dW = T @ (U - ALPHA * gU) @ V - T @ U @ V
    assert close(dW, -ALPHA * (T @ T.T) @ G @ (V.T @ V))
    P = torch.kron(V.T @ V, T @ T.T)
    assert close(vec(dW), -ALPHA * P @ vec(G))
    assert close(P, P.T) and torch.linalg.eigvalsh(P).min() > -TOL
    products = torch.outer(torch.linalg.eigvalsh(V.T @ V), torch.linalg.eigvalsh(T @ T.T)).reshape(-1)
    assert close(torch.linalg.eigvalsh(P), products.sort().values)
    if factors == "neither (MAML)":
        assert close(dW, -ALPHA * G)


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_layer_identities(groups):
    """Conv W (m, n/groups, kh, kw) with T mixing output channels and V input channels per kernel tap: the
    identities hold tap by tap, so P = I_taps ⊗ VᵀV ⊗ TTᵀ (one V shared by the groups)."""
    m, n_in, k = 6, 4, 3
    n = n_in // groups
    T, V = near_identity(m), near_identity(n)
    U = torch.randn(m, n, k, k, dtype=D, requires_grad=True)
    x = torch.randn(2, n_in, 7, 7, dtype=D)

    def compose(U):
        return torch.einsum("oa,abkl,bi->oikl", T, U, V)

    out = F.conv2d(x, compose(U), padding=1, groups=groups)
    target = torch.randn_like(out)
    (gU,) = torch.autograd.grad(loss_of(out, target), U)
    W = compose(U).detach().requires_grad_()
    (G,) = torch.autograd.grad(loss_of(F.conv2d(x, W, padding=1, groups=groups), target), W)
    dW = compose(U - ALPHA * gU) - compose(U)
    for a in range(k):
        for b in range(k):
            assert close(gU[:, :, a, b], T.T @ G[:, :, a, b] @ V.T)
            assert close(dW[:, :, a, b], -ALPHA * (T @ T.T) @ G[:, :, a, b] @ (V.T @ V))
    P = torch.kron(torch.eye(k * k, dtype=D), torch.kron(V.T @ V, T @ T.T))
    assert close(vec(dW.flatten(2)), -ALPHA * P @ vec(G.flatten(2)))


def test_several_steps_add_up_with_one_preconditioner():
    """T and V do not change in the inner loop: after K steps W_K = W_0 − α·TTᵀ·(Σ_k G_k)·VᵀV."""
    m, n = 3, 4
    T, V = near_identity(m), near_identity(n)
    U0 = torch.randn(m, n, dtype=D)
    x, target = torch.randn(6, n, dtype=D), torch.randn(6, m, dtype=D)
    U, Gs = U0.clone(), []
    for _ in range(3):
        W = (T @ U @ V).requires_grad_()
        (G,) = torch.autograd.grad(loss_of(F.linear(x, W), target), W)
        Gs.append(G)
        Ur = U.clone().requires_grad_()
        (gU,) = torch.autograd.grad(loss_of(F.linear(x, T @ Ur @ V), target), Ur)
        U = U - ALPHA * gU
    assert close(T @ U @ V, T @ U0 @ V - ALPHA * (T @ T.T) @ sum(Gs) @ (V.T @ V))


def test_bias_inside_T_is_the_homogeneous_form():
    """y = T(U·V·x + b) = T·[U b]·diag(V, 1)·[x; 1]: the effective bias c = T·b moves by −α·TTᵀ·∂L/∂c, and
    [W c] moves with P = diag(VᵀV, 1) ⊗ TTᵀ."""
    m, n = 3, 4
    T, V = near_identity(m), near_identity(n)
    U = torch.randn(m, n, dtype=D, requires_grad=True)
    b = torch.randn(m, dtype=D, requires_grad=True)
    x, target = torch.randn(5, n, dtype=D), torch.randn(5, m, dtype=D)

    out = (T @ (U @ V @ x.T + b[:, None])).T
    gU, gb = torch.autograd.grad(loss_of(out, target), (U, b))
    Wc = torch.cat([T @ U @ V, (T @ b)[:, None]], 1).detach().requires_grad_()  # [W c]
    x1 = torch.cat([x, torch.ones(5, 1, dtype=D)], 1)
    (Gc,) = torch.autograd.grad(loss_of(x1 @ Wc.T, target), Wc)
    new = torch.cat([T @ (U - ALPHA * gU) @ V, (T @ (b - ALPHA * gb))[:, None]], 1)
    dWc = new - Wc.detach()
    assert close(dWc[:, -1], -ALPHA * (T @ T.T) @ Gc[:, -1])
    V1 = torch.block_diag(V, torch.ones(1, 1, dtype=D))
    assert close(vec(dWc), -ALPHA * torch.kron(V1.T @ V1, T @ T.T) @ vec(Gc))


def test_mtnet_mask_restricts_the_step_to_a_subspace():
    """A 0/1 mask m on U's gradient rows: W' = W − α·T·(m ⊙ Tᵀ·G·Vᵀ)·V = W − α·(T·M·Tᵀ)·G·VᵀV, M = diag(m): still
    PSD, P = VᵀV ⊗ T·M·Tᵀ of rank (number of units on)·n."""
    m, n = 5, 3
    T, V = near_identity(m), near_identity(n)
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0], dtype=D)
    U = torch.randn(m, n, dtype=D, requires_grad=True)
    x, target = torch.randn(6, n, dtype=D), torch.randn(6, m, dtype=D)
    (gU,) = torch.autograd.grad(loss_of(F.linear(x, T @ U @ V), target), U)
    W = (T @ U @ V).detach().requires_grad_()
    (G,) = torch.autograd.grad(loss_of(F.linear(x, W), target), W)

    dW = T @ (U - ALPHA * mask[:, None] * gU) @ V - T @ U @ V
    M = torch.diag(mask)
    assert close(dW, -ALPHA * T @ (mask[:, None] * (T.T @ G @ V.T)) @ V)
    assert close(dW, -ALPHA * (T @ M @ T.T) @ G @ (V.T @ V))
    P = torch.kron(V.T @ V, T @ M @ T.T)
    assert close(vec(dW), -ALPHA * P @ vec(G))
    eig = torch.linalg.eigvalsh(P)
    assert eig.min() > -TOL and int((eig > 1e-8).sum()) == int(mask.sum()) * n


def test_metakfo_trajectory_equals_tuv_with_A_T_transposed_and_B_V():
    """MetaKFO's step on a plain W, W ← W − α·(AᵀA)·G·(BᵀB), with A = Tᵀ, B = V and the same start W_0 = T·U_0·V,
    follows TUV's inner trajectory step by step (W is linear in U)."""
    m, n = 3, 4
    T, V = near_identity(m), near_identity(n)
    A, B = T.T, V
    U = torch.randn(m, n, dtype=D)
    W = T @ U @ V
    x, target = torch.randn(6, n, dtype=D), torch.randn(6, m, dtype=D)
    for _ in range(3):
        Ur = U.clone().requires_grad_()
        (gU,) = torch.autograd.grad(loss_of(F.linear(x, T @ Ur @ V), target), Ur)
        U = U - ALPHA * gU
        Wr = W.clone().requires_grad_()
        (G,) = torch.autograd.grad(loss_of(F.linear(x, Wr), target), Wr)
        W = W - ALPHA * (A.T @ A) @ G @ (B.T @ B)
        assert close(T @ U @ V, W)


def test_metakfo_conv_vec_form():
    """MetaKFO on a conv weight (m, n, taps): each output channel's (n, taps) slice G_o becomes (AᵀA)·G_o·(BᵀB), so
    P = BᵀB ⊗ AᵀA ⊗ I_m (A mixes input channels, B kernel taps), PSD."""
    m, n, t = 3, 4, 9
    A, B = near_identity(n), near_identity(t)
    G = torch.randn(m, n, t, dtype=D)
    dW = torch.stack([(A.T @ A) @ G[o] @ (B.T @ B) for o in range(m)])
    P = torch.kron(B.T @ B, torch.kron(A.T @ A, torch.eye(m, dtype=D)))
    assert close(vec(dW), P @ vec(G)) and close(P, P.T) and torch.linalg.eigvalsh(P).min() > -TOL


def test_metacurvature_vec_form():
    """Meta-Curvature: ΔW = −α·M_o·G·M_i, vec form (M_iᵀ ⊗ M_o), neither symmetric nor PSD in general; on a conv
    weight (o, i, taps) the tap factor gives ΔW[o,i,t] = −α Σ M_o[o,a]·G[a,b,s]·M_i[b,i]·M_f[t,s], i.e.
    P = M_f ⊗ M_iᵀ ⊗ M_o."""
    m, n, t = 3, 4, 9
    Mo, Mi, Mf = near_identity(m), near_identity(n), near_identity(t)
    G = torch.randn(m, n, dtype=D)
    P = torch.kron(Mi.T.contiguous(), Mo)  # kron refuses a transposed (strided) input in torch 2.14
    assert close(vec(Mo @ G @ Mi), P @ vec(G)) and not close(P, P.T)
    G3 = torch.randn(m, n, t, dtype=D)
    dW = torch.einsum("oa,abs,bi,ts->oit", Mo, G3, Mi, Mf)
    assert close(vec(dW), torch.kron(Mf, P) @ vec(G3))


def test_statistics_factors_give_the_kfac_step():
    """T = (Γ + λI)^(−1/2), V = (A + λI)^(−1/2) (symmetric roots): P = VᵀV ⊗ TTᵀ = ((A + λI) ⊗ (Γ + λI))⁻¹."""
    m, n, lam = 3, 4, 0.1
    Xa, Xg = torch.randn(20, n, dtype=D), torch.randn(20, m, dtype=D)
    A, Gam = Xa.T @ Xa / 20, Xg.T @ Xg / 20

    def inv_root(S):
        e, Q = torch.linalg.eigh(S + lam * torch.eye(S.shape[0], dtype=D))
        return (Q * e.rsqrt()) @ Q.T

    T, V = inv_root(Gam), inv_root(A)
    P = torch.kron(V.T @ V, T @ T.T)
    kfac = torch.kron(A + lam * torch.eye(n, dtype=D), Gam + lam * torch.eye(m, dtype=D))
    assert close(P @ kfac, torch.eye(m * n, dtype=D))


def sigmoid_logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


@pytest.mark.parametrize("scale", [0.1, 1.0, 100.0])
def test_bounded_factors_bound_the_largest_eigenvalue(scale):
    """λmax(VᵀV ⊗ TTᵀ) = λmax(TTᵀ)·λmax(VᵀV) < b for the three bounded designs, for raw values of any size (= b
    only where tanh or σ rounds to 1 in floating point); tanh and spectrum can start at T = I."""
    m, n, b = 4, 3, 5.0
    bound = b * (1 + 1e-12)
    c = math.sqrt(b ** (1 / 2))  # two factors: each λmax(FFᵀ) < b^(1/2) = c²

    def lmax_P(T, V):
        lmax = torch.linalg.eigvalsh(torch.kron(V.T @ V, T @ T.T)).max()
        assert close(lmax, torch.linalg.eigvalsh(T @ T.T).max() * torch.linalg.eigvalsh(V.T @ V).max())
        return lmax

    def tanh_clip(raw):
        norm = torch.linalg.matrix_norm(raw, ord=2)
        return raw * (c * torch.tanh(norm / c) / norm)

    Traw, Vraw = scale * torch.randn(m, m, dtype=D), scale * torch.randn(n, n, dtype=D)
    assert lmax_P(tanh_clip(Traw), tanh_clip(Vraw)) <= bound
    assert close(tanh_clip(c * math.atanh(1 / c) * torch.eye(m, dtype=D)), torch.eye(m, dtype=D))

    theta = torch.tensor(scale, dtype=D)  # spectral: unit-norm factors, one scale ρ = b·σ(θ)
    rho = b * torch.sigmoid(theta)
    T = rho.sqrt() * Traw / torch.linalg.matrix_norm(Traw, ord=2)
    V = Vraw / torch.linalg.matrix_norm(Vraw, ord=2)
    assert close(lmax_P(T, V), rho) and rho <= bound

    def spectrum(skew, logits):  # Q·diag(s), s = c·σ(r), Q = exp(S − Sᵀ) orthogonal
        return torch.linalg.matrix_exp(skew - skew.T) * (c * torch.sigmoid(logits))

    T = spectrum(Traw, scale * torch.randn(m, dtype=D))
    V = spectrum(Vraw, scale * torch.randn(n, dtype=D)).T  # V = diag(s)·Qᵀ
    assert lmax_P(T, V) <= bound
    assert close(
        spectrum(torch.zeros(m, m, dtype=D), torch.full((m,), sigmoid_logit(1 / c), dtype=D)), torch.eye(m, dtype=D)
    )
