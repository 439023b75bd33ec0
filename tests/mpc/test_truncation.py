"""Exact two-party truncation (`mpc.backends.crypten_trunc`): no wrap-around errors, ever.

The party processes truncate hundreds of thousands of ring elements at magnitudes up to 2^61,
where CrypTen's local truncation is off by ~2^48 on some of them (shown by the control run),
and check every element against exact integer division.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpc.backends import crypten as backend
from mpc.backends.crypten_trunc import SHIFT_BITS, _unsigned_floordiv
from mpc.launch import run_parties

pytestmark = pytest.mark.multiparty

RUN_TIMEOUT_S = 180.0
ELEMENTS = 200_000
DIVISORS = (2**16, 2**32, 3, 384, 2**16 + 1)


def _values(seed: int, count: int, max_bits: int) -> torch.Tensor:
    """Public test values: signed, magnitudes spread log-uniformly up to 2^max_bits."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, max_bits, size=count)
    mantissa = rng.integers(0, 2**62, size=count, dtype=np.int64) >> (62 - bits)
    signs = rng.choice(np.array([-1, 1], dtype=np.int64), size=count)
    return torch.from_numpy(mantissa * signs)


def _truncate_all(rank: int, count: int, exact: bool) -> dict[str, object]:
    crypten = backend.load()
    from mpc.backends import crypten_trunc

    arithmetic = crypten.mpc.primitives.arithmetic.ArithmeticSharedTensor
    values = _values(7, count, SHIFT_BITS - 1)
    out: dict[str, object] = {"active": crypten_trunc.exact_truncation_active(crypten)}
    for divisor in DIVISORS:
        x = arithmetic(values, precision=0, src=0)
        if exact:
            x.div_(divisor)
        else:  # the control: CrypTen's own local truncation
            x.share = x.share.div_(divisor, rounding_mode="trunc")
        out[str(divisor)] = x.get_plain_text()
    return out


def _exact_quotients(values: torch.Tensor, divisor: int) -> torch.Tensor:
    return torch.div(values, divisor, rounding_mode="floor")


@pytest.fixture(scope="module")
def exact_run() -> dict[str, object]:
    results = run_parties(
        _truncate_all, world_size=2, ttp=True, args=(ELEMENTS, True), timeout_s=RUN_TIMEOUT_S
    )
    assert results[0]["active"] and results[1]["active"]
    for divisor in DIVISORS:
        assert torch.equal(results[0][str(divisor)], results[1][str(divisor)])
    return results[0]


@pytest.mark.parametrize("divisor", DIVISORS)
def test_every_element_is_within_two_ulp_at_magnitudes_up_to_2_61(
    exact_run: dict[str, object], divisor: int
) -> None:
    values = _values(7, ELEMENTS, SHIFT_BITS - 1)
    error = exact_run[str(divisor)] - _exact_quotients(values, divisor)
    bound = 1 if divisor & (divisor - 1) == 0 else 2
    assert int(error.abs().max()) <= bound, (
        f"{int((error.abs() > bound).sum())} of {ELEMENTS} elements off by up to "
        f"{int(error.abs().max())}"
    )


def test_crypten_local_truncation_fails_on_the_same_values() -> None:
    """The control: the local protocol this replaces is wrong on many of these elements."""
    count = 20_000
    results = run_parties(
        _truncate_all, world_size=2, ttp=True, args=(count, False), timeout_s=RUN_TIMEOUT_S
    )
    values = _values(7, count, SHIFT_BITS - 1)
    error = results[0][str(2**16)] - _exact_quotients(values, 2**16)
    wrong = error.abs() > 1
    # ~30 expected (each element wraps with probability ~|x| / 2^64); each is off by ~2^48.
    assert int(wrong.sum()) >= 5
    assert int(error.abs().max()) > 2**40


@pytest.mark.parametrize("divisor", [1, 2, 3, 2**16, 2**16 + 1, 10**9 + 7, 2**61])
def test_unsigned_floordiv_matches_python_integers(divisor: int) -> None:
    rng = np.random.default_rng(divisor % 1000)
    raw = rng.integers(-(2**63), 2**63 - 1, size=2000, dtype=np.int64, endpoint=True)
    got = _unsigned_floordiv(torch.from_numpy(raw), divisor).numpy()
    expected = [(int(v) % 2**64) // divisor for v in raw]
    assert [int(v) % 2**64 for v in got] == expected
