"""exp on x <= 0 (`mpc.approx.exp`) and the public-interval reciprocal (`mpc.approx.reciprocal`)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from mpc.approx.exp import MAX_ABS_ERROR as EXP_MAX_ABS_ERROR
from mpc.approx.exp import exp_nonpositive
from mpc.approx.reciprocal import MAX_ABS_ERROR as RECIPROCAL_MAX_ABS_ERROR
from mpc.approx.reciprocal import MAX_REL_ERROR as RECIPROCAL_MAX_REL_ERROR
from mpc.approx.reciprocal import newton_iterations, octave_guesses, reciprocal
from tests.mpc.test_approx_common import crypten_session, decode, encrypt

# exp error bound per (iterations, order): the float64 error of the base raised to 2^n on
# [-14, 0] plus 4 ulps of fixed point; the defaults must meet the module's constant.
FLOAT_BOUND = {(5, 1): 8.55e-3, (8, 1): 1.06e-3, (4, 2): 1.02e-3, (6, 2): 5.6e-5}
ULPS = 4 * 2.0**-16


@pytest.fixture(scope="module", autouse=True)
def _crypten() -> Iterator[Any]:
    yield from crypten_session()


def _points(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    edges = [0.0, -(2.0**-16), -1.0, -2.0, -3.0, -13.99, -14.0, -14.01, -30.0, -64.0, -1000.0]
    return torch.cat([-torch.rand(50_000, generator=g) * 30, torch.tensor(edges)])


def test_exp_defaults_within_module_tolerance() -> None:
    secret = encrypt(_points(0))
    error = (decode(exp_nonpositive(secret)) - decode(secret).exp()).abs().max().item()
    assert error <= EXP_MAX_ABS_ERROR, error


@pytest.mark.parametrize(("iterations", "order"), sorted(FLOAT_BOUND))
def test_exp_knobs_reach_their_float_error(iterations: int, order: int) -> None:
    secret = encrypt(_points(1))
    out = decode(exp_nonpositive(secret, iterations=iterations, order=order, threshold=-14.0))
    error = (out - decode(secret).exp()).abs().max().item()
    assert error <= FLOAT_BOUND[(iterations, order)] + ULPS, error


def test_exp_threshold_gives_exact_zero_and_exp_zero_is_one() -> None:
    x = torch.tensor([0.0, -14.5, -20.0, -1000.0, -13.5])
    out = decode(exp_nonpositive(encrypt(x)))
    assert out[0].item() == pytest.approx(1.0, abs=ULPS)
    assert torch.equal(out[1:4], torch.zeros(3, dtype=torch.float64))
    assert out[4].item() == pytest.approx(math.exp(-13.5), abs=EXP_MAX_ABS_ERROR)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"iterations": 0}, "iterations"),
        ({"iterations": 16}, "iterations"),
        ({"iterations": 3, "threshold": -14.0}, "threshold"),
        ({"threshold": 0.0}, "threshold"),
        ({"order": 3}, "order"),
    ],
)
def test_exp_rejects_bad_knobs(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        exp_nonpositive(encrypt(torch.zeros(2)), **kwargs)


@pytest.mark.parametrize("octaves", [False, True], ids=["interval-guess", "octave-guess"])
@pytest.mark.parametrize(("lo", "hi"), [(1.0, 8.0), (1.0, 128.0), (1.0, 1024.0), (0.5, 3.0)])
def test_reciprocal_on_its_interval(lo: float, hi: float, octaves: bool) -> None:
    g = torch.Generator().manual_seed(int(hi))
    powers = [lo * 2.0**j for j in range(1, 11) if lo * 2.0**j < hi]  # octave edges
    edges = torch.tensor([lo, hi] + powers + [p * (1 - 2**-12) for p in powers])
    x = torch.cat([lo + torch.rand(20_000, generator=g) * (hi - lo), edges])
    secret = encrypt(x)
    expected = 1 / decode(secret)
    out = decode(reciprocal(secret, lo=lo, hi=hi, octaves=octaves))
    error = (out - expected).abs()
    bound = RECIPROCAL_MAX_ABS_ERROR + RECIPROCAL_MAX_REL_ERROR * expected
    assert bool((error <= bound).all()), (error / expected).max().item()


def test_reciprocal_iteration_counts() -> None:
    assert newton_iterations(1.0, 128.0) == 9
    assert newton_iterations(1.0, 1024.0) == 14
    for hi in (8.0, 128.0, 1024.0):  # the octave guess: 1/3 off at worst, whatever the width
        thresholds, guesses, delta = octave_guesses(1.0, hi, 16)
        assert len(guesses) == len(thresholds) + 1 == math.ceil(math.log2(hi))
        assert delta < 0.34 and newton_iterations(1.0, hi, delta=delta) == 4
    with pytest.raises(ValueError, match="lo < hi"):
        newton_iterations(2.0, 1.0)
