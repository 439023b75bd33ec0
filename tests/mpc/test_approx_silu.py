"""SiLU (`mpc.approx.silu`), both methods, vs torch.nn.functional.silu."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from mpc.approx.silu import MAX_ABS_ERROR, SiLUMethod, silu
from tests.mpc.test_approx_common import crypten_session, decode, encrypt

ULP = 2.0**-16
EDGES = [b + d for b in (-10.0, -8.0, -4.0, 0.0, 4.0, 10.0) for d in (-ULP, 0.0, ULP)]
LARGE = [-1000.0, -100.0, -30.0, 30.0, 100.0, 1000.0]


@pytest.fixture(scope="module", autouse=True)
def _crypten() -> Iterator[Any]:
    yield from crypten_session()


def _error(x: torch.Tensor, method: SiLUMethod) -> float:
    secret = encrypt(x)
    expected = torch.nn.functional.silu(decode(secret))
    return (decode(silu(secret, method=method)) - expected).abs().max().item()


@pytest.mark.parametrize("method", list(SiLUMethod))
def test_silu_uniform_points(method: SiLUMethod) -> None:
    g = torch.Generator().manual_seed(0)
    error = _error(torch.rand(50_000, generator=g) * 60 - 30, method)
    assert error <= MAX_ABS_ERROR[method], error


@pytest.mark.parametrize("method", list(SiLUMethod))
def test_silu_edges_and_large_magnitudes(method: SiLUMethod) -> None:
    error = _error(torch.tensor(EDGES + LARGE), method)
    assert error <= MAX_ABS_ERROR[method], error


def test_silu_dense_near_zero() -> None:
    g = torch.Generator().manual_seed(1)
    error = _error(torch.randn(50_000, generator=g) * 3, SiLUMethod.CHEBYSHEV)
    assert error <= MAX_ABS_ERROR[SiLUMethod.CHEBYSHEV], error


def test_silu_default_is_chebyshev_and_keeps_shape() -> None:
    x = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(2)) * 4
    secret = encrypt(x)
    out = decode(silu(secret))
    assert out.shape == x.shape
    assert torch.equal(out, decode(silu(secret, method=SiLUMethod.CHEBYSHEV)))
