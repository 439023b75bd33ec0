"""The MPCViT family in torch: variant definitions, configs, architectures, bad input."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from mpc.vit.data import ImageSplit, load_split
from mpc.vit.model import (
    RELU_EPS,
    Architecture,
    AttentionKind,
    MLPKind,
    MPCViT,
    ViTConfig,
    attention_weights,
    patchify,
)
from mpc.vit.train import accuracy
from tests.vit.conftest import TINY


def _scores() -> torch.Tensor:
    return torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(1)) * 3  # (B, H, T, T)


def test_softmax_variant_is_torch_softmax() -> None:
    s = _scores()
    assert torch.allclose(attention_weights(s, AttentionKind.SOFTMAX), torch.softmax(s, -1))


def test_relu_softmax_variant_is_relu_over_its_sum() -> None:
    s = _scores()
    got = attention_weights(s, AttentionKind.RELU_SOFTMAX)
    manual = torch.clamp(s, min=0)
    want = manual / (manual.sum(-1, keepdim=True) + RELU_EPS)
    assert torch.allclose(got, want)
    assert bool((got >= 0).all())
    assert bool((got.sum(-1) < 1).all())  # the +1 keeps rows below 1
    assert torch.equal(got[s <= 0], torch.zeros_like(got[s <= 0]))


def test_scaling_variant_is_linear() -> None:
    s = _scores()
    got = attention_weights(s, AttentionKind.SCALING)
    assert torch.allclose(got, s / 5)
    assert torch.allclose(attention_weights(2 * s, AttentionKind.SCALING), 2 * got)


def test_model_forward_uses_each_heads_variant() -> None:
    """A hand-written forward of block 0's attention with mixed heads equals the module's."""
    torch.manual_seed(3)
    kinds = (
        AttentionKind.SOFTMAX,
        AttentionKind.RELU_SOFTMAX,
        AttentionKind.SCALING,
        AttentionKind.SOFTMAX,
    )
    arch = Architecture((kinds, kinds), (MLPKind.GELU, MLPKind.LINEAR))
    model = MPCViT(TINY, arch).eval()
    x = torch.randn(2, TINY.tokens, TINY.dim)  # (B, T, C)
    block = model.blocks[0].attention
    mix, _ = model.mixing()
    q, k, v = block.qkv(x).view(2, TINY.tokens, 3, 4, 8).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-2, -1) / 8**0.5  # (B, H, T, T)
    weights = torch.stack([attention_weights(scores[:, h], kinds[h]) for h in range(4)], dim=1)
    want = block.proj((weights @ v).transpose(1, 2).reshape(2, TINY.tokens, TINY.dim))
    assert torch.allclose(block(x, mix[0]), want, atol=1e-6)
    # block 1's MLP is linear: fc2(fc1(norm2(x))) with no activation
    b1 = model.blocks[1]
    h = x + b1.attention(b1.norm1(x), mix[1])
    linear = h + b1.fc2(b1.fc1(b1.norm2(h)))
    assert torch.allclose(b1(x, mix[1], model.mixing()[1][1]), linear, atol=1e-6)


@pytest.mark.parametrize(
    ("kind", "activation"),
    [
        (MLPKind.GELU, torch.nn.functional.gelu),
        (MLPKind.RELU, torch.relu),
        (MLPKind.LINEAR, lambda h: h),
    ],
)
def test_each_mlp_kind_applies_its_activation(kind: MLPKind, activation: Any) -> None:
    torch.manual_seed(4)
    heads = (AttentionKind.SCALING,) * 4
    model = MPCViT(TINY, Architecture((heads, heads), (kind, kind))).eval()
    x = torch.randn(2, TINY.tokens, TINY.dim)
    block = model.blocks[0]
    attention_mix, mlp_mix = model.mixing()
    h = x + block.attention(block.norm1(x), attention_mix[0])
    want = h + block.fc2(activation(block.fc1(block.norm2(h))))
    assert torch.allclose(block(x, attention_mix[0], mlp_mix[0]), want, atol=1e-6)


def test_patchify_is_row_major_patches() -> None:
    images = torch.arange(64.0).reshape(1, 1, 8, 8)
    patches = patchify(images, 4)  # (1, 4, 16)
    assert patches.shape == (1, 4, 16)
    assert patches[0, 1].tolist() == images[0, 0, :4, 4:].reshape(-1).tolist()


def test_config_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ViTConfig(image_size=28, patch_size=5)
    with pytest.raises(ValueError, match="multiple of heads"):
        ViTConfig(dim=30, heads=4)
    with pytest.raises(ValueError, match="depth"):
        ViTConfig(depth=0)
    with pytest.raises(ValueError, match="unknown ViTConfig"):
        ViTConfig.from_dict({"width": 3})


def test_architecture_must_fit_the_config() -> None:
    with pytest.raises(ValueError, match="architecture"):
        MPCViT(TINY, Architecture.uniform(3, 4, AttentionKind.SCALING))
    with pytest.raises(ValueError, match="tanh"):
        AttentionKind("tanh")


def test_bad_images_raise_typed_errors() -> None:
    model = MPCViT(TINY)
    with pytest.raises(ValueError, match="images must be"):
        model(torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match="images must be"):
        model(torch.zeros(1, 8, 8))
    with pytest.raises(TypeError, match="float"):
        model(torch.zeros(2, 1, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="NaN"):
        model(torch.full((1, 1, 8, 8), float("nan")))


def test_data_split_is_fixed_stratified_and_disjoint(digits: ImageSplit) -> None:
    again = load_split("digits")
    assert torch.equal(digits.test_x, again.test_x)
    assert digits.train_x.shape[1:] == (1, 8, 8)
    assert float(digits.train_x.max()) <= 1.0
    assert torch.bincount(digits.test_y).min() >= 35  # about 20 % of each class
    assert len(digits.train_x) + len(digits.test_x) == 1797
    with pytest.raises(ValueError, match="unknown data set"):
        load_split("cifar10")


def test_teacher_learns_digits(teacher: MPCViT, digits: ImageSplit) -> None:
    assert accuracy(teacher, digits.test_x, digits.test_y) >= 0.9
