import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def vec(X: torch.Tensor) -> torch.Tensor:
    """Column-stacking vec of a matrix (the seed's convention)."""
    return X.mT.reshape(-1)


def random_factors(layer, scale: float = 0.3) -> None:
    """Give a TUV layer non-trivial T and V (identity + noise; a bounded layer: noise on its raw parameters),
    in place at construction time."""
    own = dict(layer.named_parameters(recurse=False))
    names = ("T", "V") if "T" in own or "V" in own else BOUNDED_RAW
    with torch.no_grad():
        for name in names:
            f = own.get(name)
            if f is not None:
                f.add_(scale * torch.randn_like(f))


BOUNDED_RAW = ("T_raw", "V_raw", "bound_logit", "T_skew", "V_skew", "T_logit", "V_logit")  # metatuv.nn.bounded


def _data_root():
    import os
    from pathlib import Path

    return Path(os.environ.get("METATUV_DATA_ROOT", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def data_root():
    """The real datasets (../shared/data by default, METATUV_DATA_ROOT to override). Missing data skips the
    test locally and fails it in CI (METATUV_REQUIRE_DATA=1)."""
    import os

    root = _data_root()
    if not (root / "omniglot").is_dir():
        if os.environ.get("METATUV_REQUIRE_DATA") == "1":
            pytest.fail(f"data tests need {root / 'omniglot'} (METATUV_REQUIRE_DATA=1)")
        pytest.skip(f"no data under {root}")
    return root


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")
