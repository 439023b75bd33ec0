"""Shared fixtures for the MPCViT tests: a tiny softmax ViT trained on sklearn digits."""

from __future__ import annotations

import pytest
import torch

from mpc.vit.data import ImageSplit, load_split
from mpc.vit.model import MPCViT, ViTConfig
from mpc.vit.train import TrainSettings, train

# 8x8 digits, 4x4 patches: T = 5 tokens, 2 blocks of 4 heads (the benchmark's MNIST model has
# T = 17, 4 blocks), small enough for the test budget.
TINY = ViTConfig(image_size=8, patch_size=4, dim=32, depth=2, heads=4, mlp_ratio=2)
TINY_TRAINING = TrainSettings(epochs=8, batch_size=32, lr=3e-3, shift=0, warmup_epochs=1)


@pytest.fixture(scope="session")
def digits() -> ImageSplit:
    return load_split("digits")


@pytest.fixture(scope="session")
def teacher(digits: ImageSplit) -> MPCViT:
    """The softmax ViT on digits (~97 % test accuracy, ~10 s on one thread)."""
    torch.manual_seed(0)
    return train(MPCViT(TINY), digits, TINY_TRAINING)
