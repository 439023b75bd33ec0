"""Range-reduced 1/sqrt(x) (`mpc.approx.rsqrt`) vs torch.rsqrt."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from mpc.approx.rsqrt import MAX_REL_ERROR, rsqrt
from tests.mpc.test_approx_common import crypten_session, decode, encrypt

POWERS = [2.0**k for k in range(-12, 14)]


@pytest.fixture(scope="module", autouse=True)
def _crypten() -> Iterator[Any]:
    yield from crypten_session()


def _relative_error(x: torch.Tensor, **kwargs: Any) -> float:
    secret = encrypt(x)
    expected = decode(secret).rsqrt()  # at the encoded input: see the module's Error section
    out = decode(rsqrt(secret, **kwargs))
    return ((out - expected) / expected).abs().max().item()


def test_rsqrt_log_uniform_on_the_required_range() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.exp(torch.rand(50_000, generator=g) * math.log(1e6) + math.log(1e-3))
    error = _relative_error(torch.cat([x, torch.tensor([1e-3, 2e-3, 128.0, 1000.0])]))
    assert error <= MAX_REL_ERROR, error


def test_rsqrt_bucket_edges() -> None:
    ulp = 2.0**-16
    edges = [p + d for p in POWERS for d in (-ulp, 0.0, ulp) if p + d > 0]
    assert _relative_error(torch.tensor(edges)) <= MAX_REL_ERROR


def test_rsqrt_top_of_default_range() -> None:
    assert _relative_error(torch.tensor([4096.0, 6000.0, 8191.0])) <= MAX_REL_ERROR


def test_rsqrt_wider_range_knob() -> None:
    x = torch.tensor([2.0**-14, 1e-4, 20000.0, 32000.0])
    assert _relative_error(x, min_exponent=-14, max_exponent=14) <= 2 * MAX_REL_ERROR


def test_rsqrt_without_newton_is_the_polynomial() -> None:
    x = torch.exp(torch.linspace(math.log(0.1), math.log(100.0), 2000))
    error = _relative_error(x, newton_iterations=0)
    assert 8.0e-5 <= error <= 8.2e-5 + MAX_REL_ERROR, error


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_exponent": 3, "max_exponent": 3},
        {"min_exponent": -15},
        {"max_exponent": 15},
        {"newton_iterations": -1},
    ],
)
def test_rsqrt_rejects_bad_knobs(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="exponent|newton"):
        rsqrt(encrypt(torch.ones(2)), **kwargs)
