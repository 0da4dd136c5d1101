"""The implied preconditioner: factors, dense P = VᵀV ⊗ TTᵀ, and its action, float64."""

import pytest
import torch
from conftest import random_factors, vec

from metatuv.metric import dense_preconditioner, factors, precondition, spectra
from metatuv.nn import TUVConv2d, TUVLinear

D = torch.float64


def test_dense_preconditioner_matches_factors_and_kron_identity():
    layer = TUVLinear(4, 3, dtype=D)
    random_factors(layer)
    left, right = factors(layer)
    T, V = layer.T.detach(), layer.V.detach()
    assert torch.allclose(left, T @ T.T) and torch.allclose(right, V.T @ V)
    P = dense_preconditioner(layer)
    assert P.shape == (12, 12)
    G = torch.randn(3, 4, dtype=D)
    assert torch.allclose(P @ vec(G), vec(precondition(layer, G).detach()), atol=1e-12, rtol=0)
    # PSD: every eigenvalue of P is a product of the factors' eigenvalues, all ≥ 0
    eig_P = torch.linalg.eigvalsh(P.detach())
    sl, sr = spectra(layer)
    assert eig_P.min() > -1e-12 and sl.min() > -1e-12 and sr.min() > -1e-12
    assert torch.allclose(eig_P, torch.sort((sr[:, None] * sl[None, :]).flatten()).values, atol=1e-10)


def test_absent_factors_are_identity():
    layer = TUVConv2d(3, 5, 3, use_T=False, use_V=False, dtype=D)
    left, right = factors(layer)
    assert torch.equal(left, torch.eye(5, dtype=D)) and torch.equal(right, torch.eye(3, dtype=D))
    G = torch.randn(5, 3, 3, 3, dtype=D)
    assert torch.equal(precondition(layer, G), G)


def test_dense_refuses_large_layers():
    with pytest.raises(ValueError, match="use factors"):
        dense_preconditioner(TUVLinear(100, 100))
