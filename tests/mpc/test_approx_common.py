"""Helpers for the `mpc.approx` accuracy tests, and the checks they rely on.

The accuracy tests run CrypTen in this process (world size 1, CrypTen's default 16 fractional
bits): the approximations are exact functions of the ring values, so one party gives the same
numbers as several, up to the +-1 ulp of 2-party truncation.

Results are decoded with `decode` (ring integer / 2^16 in float64), not `get_plain_text`:
CrypTen 0.4.1's `FixedPointEncoder.decode` floor-divides negative values by 2^16 - 1 and is
off by exactly -1 for encodings -k 2^16 + r with 0 < r < k (e.g. -3.99999 decodes as
-4.99999), see `test_get_plain_text_misdecodes_some_negative_values`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

import mpc.approx
from mpc.backends.crypten import load

FRACTIONAL_BITS = 16


def crypten_session() -> Iterator[Any]:
    """Initialise CrypTen in this process for a test module; undo it afterwards if we did it."""
    crypten = load()
    started = not crypten.is_initialized()
    if started:
        crypten.init()
    try:
        yield crypten
    finally:
        if started:
            crypten.uninit()


def encrypt(values: torch.Tensor) -> Any:
    """A secret `MPCTensor` holding `values` (float32 in, 16 fractional bits)."""
    return load().cryptensor(values)


def decode(secret: Any) -> torch.Tensor:
    """Reveal a fixed-point `MPCTensor` as float64, decoding the ring integers exactly."""
    return secret.reveal().double() / secret.encoder.scale


@pytest.fixture(scope="module", autouse=True)
def _crypten() -> Iterator[Any]:
    yield from crypten_session()


def test_get_plain_text_decodes_negative_values_exactly() -> None:
    """CrypTen 0.4.1's decode is off by -1 just above negative integers; `load()` fixes it."""
    secret = encrypt(torch.tensor([-3.999992609024048, -1.25, 2.5, -1.0, -0.5]))
    exact = decode(secret)
    want = torch.tensor([-262143 / 65536, -1.25, 2.5, -1.0, -0.5], dtype=torch.float64)
    assert torch.allclose(exact, want)
    assert torch.allclose(secret.get_plain_text().double(), exact, atol=1e-6, rtol=0)


def test_package_all_is_sorted_and_importable() -> None:
    names = mpc.approx.__all__
    assert list(names) == sorted(names)
    for name in names:
        assert getattr(mpc.approx, name) is not None
