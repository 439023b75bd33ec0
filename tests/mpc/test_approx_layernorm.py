"""LayerNorm and RMSNorm with the secure rsqrt (`mpc.approx.layernorm`) vs torch."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from mpc.approx.layernorm import MAX_ABS_ERROR, MAX_REL_ERROR_RMS, layer_norm, rms_norm
from tests.mpc.test_approx_common import crypten_session, decode, encrypt

HIDDEN = 384  # all-MiniLM-L6-v2


@pytest.fixture(scope="module", autouse=True)
def _crypten() -> Iterator[Any]:
    yield from crypten_session()


def _rows(seed: int, rows: int, lo_var: float, hi_var: float) -> torch.Tensor:
    """Rows of N(mean, var) with var log-uniform in [lo_var, hi_var] and means N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    log_var = torch.rand(rows, 1, generator=g) * math.log(hi_var / lo_var) + math.log(lo_var)
    std = log_var.exp().sqrt()
    return torch.randn(rows, HIDDEN, generator=g) * std + torch.randn(rows, 1, generator=g)


def _affine(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return 1 + 0.2 * torch.randn(HIDDEN, generator=g), 0.1 * torch.randn(HIDDEN, generator=g)


def _layer_norm_error(x: torch.Tensor, secret_affine: bool = False) -> float:
    weight, bias = _affine(1)
    secret = encrypt(x)
    expected = torch.nn.functional.layer_norm(
        decode(secret), (HIDDEN,), weight.double(), bias.double(), eps=1e-12
    )
    w, b = (encrypt(weight), encrypt(bias)) if secret_affine else (weight, bias)
    return (decode(layer_norm(secret, w, b)) - expected).abs().max().item()


def test_layer_norm_minilm_variance_range() -> None:
    error = _layer_norm_error(_rows(0, 300, 0.002, 128.0))
    assert error <= MAX_ABS_ERROR, error


def test_layer_norm_extreme_variances_and_secret_affine() -> None:
    x = torch.cat([_rows(2, 20, 0.002, 0.0021), _rows(3, 20, 120.0, 128.0)])
    error = _layer_norm_error(x, secret_affine=True)
    assert error <= MAX_ABS_ERROR, error


def test_layer_norm_with_outlier_features() -> None:
    x = _rows(4, 50, 0.5, 4.0)
    x[:, 7] = 25.0  # a MiniLM-like outlier dimension
    assert _layer_norm_error(x) <= MAX_ABS_ERROR


def test_layer_norm_minilm_shape_without_affine() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 32, HIDDEN, generator=g) * 3 + 1
    secret = encrypt(x)
    expected = torch.nn.functional.layer_norm(decode(secret), (HIDDEN,), eps=1e-12)
    out = decode(layer_norm(secret))
    assert out.shape == x.shape
    assert (out - expected).abs().max().item() <= MAX_ABS_ERROR


@pytest.mark.parametrize(("lo_ms", "hi_ms"), [(0.002, 1.0), (1.0, 2000.0)])
def test_rms_norm_matches_reference(lo_ms: float, hi_ms: float) -> None:
    g = torch.Generator().manual_seed(6)
    x = _rows(7, 200, lo_ms, hi_ms)
    x = x - x.mean(-1, keepdim=True)  # zero-mean rows: mean square = variance
    weight = 1 + 0.2 * torch.randn(HIDDEN, generator=g)
    secret = encrypt(x)
    xq = decode(secret)
    expected = xq / (xq.square().mean(-1, keepdim=True) + 1e-6).sqrt() * weight.double()
    out = decode(rms_norm(secret, weight))
    relative = (out - expected).abs().max(-1)[0] / expected.abs().max(-1)[0]
    assert relative.max().item() <= MAX_REL_ERROR_RMS, relative.max().item()


@pytest.mark.parametrize("width", [64, 256])
def test_layer_norm_power_of_two_width(width: int) -> None:
    # a width of 2^m takes the path whose one truncation also divides the sum of squares by it
    g = torch.Generator().manual_seed(10)
    log_var = torch.rand(300, 1, generator=g) * math.log(128.0 / 0.002) + math.log(0.002)
    x = torch.randn(300, width, generator=g) * log_var.exp().sqrt() + torch.randn(300, 1)
    secret = encrypt(x)
    expected = torch.nn.functional.layer_norm(decode(secret), (width,), eps=1e-5)
    error = (decode(layer_norm(secret, eps=1e-5)) - expected).abs().max().item()
    assert error <= MAX_ABS_ERROR, error


def test_layer_norm_constant_row_gives_bias() -> None:
    weight, bias = _affine(9)
    out = decode(layer_norm(encrypt(torch.full((2, HIDDEN), 3.25)), weight, bias))
    assert (out - bias.double()).abs().max().item() <= 2.0**-15


def test_norms_reject_odd_shift() -> None:
    with pytest.raises(ValueError, match="variance_shift"):
        layer_norm(encrypt(torch.ones(2, 4)), variance_shift=3)
    with pytest.raises(ValueError, match="variance_shift"):
        rms_norm(encrypt(torch.ones(2, 4)), variance_shift=10)
