"""Shifted copies of MNIST images: extra distillation inputs and extra GAN training queries."""

from __future__ import annotations

import dataclasses

import torch

from verification.fides.experiment import (
    Outcome,
    TaskData,
    attack_outputs,
    gan_inputs,
    shifted_copies,
)
from verification.fides.nets import ConvPrefixNet

from .conftest import TINY


def _images(n: int) -> torch.Tensor:
    x = torch.zeros(n, 1, 28, 28)
    x[:, :, 4:24, 4:24] = torch.rand(n, 1, 20, 20, generator=torch.Generator().manual_seed(0))
    return x


def test_each_copy_is_a_small_translation_of_its_image() -> None:
    x = _images(40)
    out = shifted_copies(x, 3, seed=1)
    assert out.shape == (120, 1, 28, 28)
    moved = 0
    for k, img in enumerate(out):
        orig = x[k % 40]
        matches = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(img, torch.roll(orig, (dy, dx), dims=(1, 2)))
        ]
        assert matches, k  # a translation by at most 2 pixels (borders are empty)
        moved += matches != [(0, 0)]
    assert moved > 90  # most copies actually move (1 in 25 stays put)
    assert torch.equal(out, shifted_copies(x, 3, seed=1))  # deterministic
    assert not torch.equal(out, shifted_copies(x, 3, seed=2))
    assert shifted_copies(x, 0, seed=1).shape == (0, 1, 28, 28)


def test_gan_inputs_add_shifted_fides_images_for_images_only() -> None:
    x = _images(30)
    data = TaskData("image", 10, {"fides": x}, {"fides": x}, {"fides": x}, {})
    scale = dataclasses.replace(TINY, gan_shifted_copies=2)
    rows = gan_inputs(data, scale)
    assert rows.shape == (90, 1, 28, 28) and torch.equal(rows[:30], x)
    assert torch.equal(gan_inputs(data, dataclasses.replace(TINY, gan_shifted_copies=0)), x)
    text = TaskData("text", 2, {"fides": torch.ones(5, 7, dtype=torch.int64)}, {}, {}, {})
    assert gan_inputs(text, scale).shape == (5, 7)


def test_attacks_run_on_the_given_images() -> None:
    torch.manual_seed(0)
    service, substitute = ConvPrefixNet([4], [8], 10).eval(), ConvPrefixNet([], [], 10).eval()
    x = _images(12)
    data = TaskData("image", 10, {"fides": x[:4]}, {"fides": x[:4]}, {"fides": x[:4]}, {})
    out = attack_outputs(data, "fides", service, substitute, TINY, images=x)
    assert set(out) == set(TINY.attacks)
    for name, probs in out.items():
        assert probs.shape == (12, 10), name
        assert torch.allclose(probs.sum(1), torch.ones(12), atol=1e-5)
    on_split = attack_outputs(data, "fides", service, substitute, TINY)
    assert torch.allclose(out["fgsm"][:4], on_split["fgsm"])
    assert torch.allclose(out["substitution"][:4], on_split["substitution"])


def test_tiny_run_trained_the_gan_on_the_shifted_copies(
    tiny_mnist: tuple[TaskData, Outcome],
) -> None:
    data, out = tiny_mnist
    n = len(data.inputs["fides"])
    assert out.fides.metadata["gan_rows"] == (1 + TINY.gan_shifted_copies) * n
    assert TINY.gan_shifted_copies >= 1
