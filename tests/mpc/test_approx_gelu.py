"""PUMA's GeLU spline vs torch's erf GeLU (`mpc.approx.gelu`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from mpc.approx.gelu import MAX_ABS_ERROR, gelu
from tests.mpc.test_approx_common import crypten_session, decode, encrypt

ULP = 2.0**-16
EDGES = [-4.0, -4.0 + ULP, -4.0 - ULP, -1.95, -1.95 + ULP, -1.95 - ULP, 3.0, 3.0 - ULP, 3.0 + ULP]
LARGE = [-1000.0, -100.0, -30.0, 0.0, 30.0, 100.0, 1000.0]


@pytest.fixture(scope="module", autouse=True)
def _crypten() -> Iterator[Any]:
    yield from crypten_session()


def _check(x: torch.Tensor, tolerance: float) -> float:
    secret = encrypt(x)
    expected = torch.nn.functional.gelu(decode(secret))  # erf form, at the encoded inputs
    error = (decode(gelu(secret)) - expected).abs().max().item()
    assert error <= tolerance, error
    return error


@pytest.mark.parametrize("seed", [0, 1])
def test_gelu_matches_torch_on_uniform_points(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    _check(torch.rand(50_000, generator=g) * 60 - 30, MAX_ABS_ERROR)


def test_gelu_dense_around_the_pieces() -> None:
    g = torch.Generator().manual_seed(2)
    _check(torch.rand(50_000, generator=g) * 10 - 5, MAX_ABS_ERROR)


def test_gelu_edges_and_large_magnitudes() -> None:
    _check(torch.tensor(EDGES + LARGE), MAX_ABS_ERROR)


def test_gelu_is_exact_outside_the_polynomials() -> None:
    x = torch.tensor([-1000.0, -30.0, -4.5, 3.5, 30.0, 1000.0])
    out = decode(gelu(encrypt(x)))
    assert torch.equal(out[:3], torch.zeros(3, dtype=torch.float64))
    assert torch.equal(out[3:], x[3:].double())


def test_gelu_keeps_shape() -> None:
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(3))
    assert gelu(encrypt(x)).size() == x.shape
