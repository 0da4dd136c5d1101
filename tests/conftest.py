import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def vec(X: torch.Tensor) -> torch.Tensor:
    """Column-stacking vec of a matrix (the seed's convention)."""
    return X.mT.reshape(-1)


def random_factors(layer, scale: float = 0.3) -> None:
    """Give a TUV layer non-trivial T and V (identity + noise), in place at construction time."""
    with torch.no_grad():
        for name in ("T", "V"):
            f = getattr(layer, name)
            if f is not None:
                f.add_(scale * torch.randn_like(f))
