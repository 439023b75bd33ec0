"""1/x for secret x in a public interval [lo, hi], 0 < lo < hi: Newton-Raphson.

Ref:     Newton-Raphson for the reciprocal, y <- y (2 - x y), as in CrypTen's `reciprocal`
         (crypten/common/functions/approximations.py), but with a public-interval initial
         guess instead of CrypTen's 3 exp(1 - 2x) + 0.003 (which costs an exp and diverges
         for x > ~660). Used by `mpc.approx.softmax` for ONE reciprocal per row (PUMA,
         arXiv 2307.12533, section 4; SPU's `enable_optimize_denominator_with_broadcast`).
Method:  y0 = beta (lo + hi - x), m = (lo + hi) / 2. beta = 2 / (lo hi + m^2) would minimise
         max |1 - x y0| on [lo, hi]; it is rounded down to a power of two so that the fixed-point
         encoding holds it exactly (a rounded beta can push x y0 near 2, where Newton stalls).
         Then delta = max(1 - beta lo hi, beta m^2 - 1) < 1 and each iteration squares the
         relative error: |1 - x y_k| <= delta^(2^k). When that beta would be below
         `_MIN_SLOPE` = 2^-14 (hi > ~360 for lo = 1) the slope cannot be held to a few fixed-point
         ulps, and the guess is the constant y0 = 2^-ceil(log2 hi) instead (delta = 1 - lo y0).
Domain:  x in [lo, hi] (public). Newton converges wherever 0 < x y0(x) < 2, which holds on
         [lo, hi] and a little beyond (e.g. a row sum that rounds to just under 1).
Error:   by default enough iterations for delta^(2^k) <= 2^-20 in exact arithmetic; under
         CrypTen fixed point (16 fractional bits), measured on 20k seeded points of [1, 128] and
         of [1, 1024] plus the ends: max abs error 1.55e-5 (about 1 ulp, 2^-16) on both, i.e.
         the output quantization (relative 0.2% at 1/128, 1.6% at 1/1024). Tolerance:
         `MAX_ABS_ERROR` + `MAX_REL_ERROR` |1/x|.
Octaves: with `octaves=True` the guess is secret instead: ONE batched comparison of x against
         the m - 1 public thresholds lo 2^j (m = ceil(log2(hi / lo))) finds x's octave
         [a, 2a), a = lo 2^j, and `bucket_lookup` (local) picks that octave's constant
         c = 2 / (3a), rounded to the fixed point, which gives |1 - x c| <= 1/3 (plus the
         rounding) on the whole interval whatever its width. Then 4 iterations reach 2^-20
         where the interval guess needs 9 on [1, 128] and 14 on [1, 1024]: for wide intervals
         (ReLU-softmax denominators up to ~1000) it trades ~20 multiplications for a comparison
         (8 rounds, ~25 bytes an element and threshold).
Knobs:   `lo`, `hi`, `iterations` (None: the smallest count reaching 2^-20), `octaves`.
Cost:    2 multiplications (2 rounds) per iteration, except the first from a constant guess
         (public, free); [1, 128] -> 9 iterations (18 rounds), [1, 1024] -> 14 (26 rounds).
         No comparisons. With `octaves`: one comparison (8 rounds) + 4 iterations (8 rounds).
"""

from __future__ import annotations

import math

from mpc.approx._mpc import CrypTensor, below_bits, bucket_lookup, precision_bits

__all__ = ["MAX_ABS_ERROR", "MAX_REL_ERROR", "newton_iterations", "reciprocal"]

_TARGET_REL_ERROR = 2.0**-20
# Tolerance: 2 ulps absolute (1 measured) plus a relative 1e-4 for the iteration itself.
MAX_ABS_ERROR = 2.0**-15
MAX_REL_ERROR = 1e-4


_MIN_SLOPE = 2.0**-14  # 4 ulps at 16 fractional bits


def _beta(lo: float, hi: float) -> float:
    """Slope of the linear guess (a power of two), or 0 for the constant guess."""
    mid = (lo + hi) / 2
    beta = 2.0 ** math.floor(math.log2(2.0 / (lo * hi + mid * mid)))
    return beta if beta >= _MIN_SLOPE else 0.0


def _constant_guess(hi: float) -> float:
    return 2.0 ** -math.ceil(math.log2(hi))


def _contraction(lo: float, hi: float) -> float:
    beta = _beta(lo, hi)
    if beta == 0.0:
        return 1 - lo * _constant_guess(hi)
    mid = (lo + hi) / 2
    return max(1 - beta * lo * hi, beta * mid * mid - 1)


def octave_guesses(lo: float, hi: float, bits: int) -> tuple[list[float], list[float], float]:
    """The octave guess on [lo, hi] at `bits` fractional bits: (thresholds lo 2^j, j = 1 ..
    m - 1; each octave's constant rounded to the fixed point; the worst |1 - x c| over x in
    its octave)."""
    if not 0 < lo < hi:
        raise ValueError(f"need 0 < lo < hi, got lo={lo}, hi={hi}")
    octaves = max(1, math.ceil(math.log2(hi / lo)))
    scale = 2.0**bits
    guesses, delta = [], 0.0
    for j in range(octaves):
        low = lo * 2.0**j
        guess = round(2 / (3 * low) * scale) / scale
        guesses.append(guess)
        delta = max(delta, abs(1 - low * guess), abs(1 - 2 * low * guess))
    if not delta < 1:
        raise ValueError(f"[{lo}, {hi}] is too wide for {bits} fractional bits: 1/hi rounds away")
    return [lo * 2.0**j for j in range(1, octaves)], guesses, delta


def newton_iterations(
    lo: float, hi: float, target: float = _TARGET_REL_ERROR, *, delta: float | None = None
) -> int:
    """Iterations after which the relative error delta^(2^k) <= target on [lo, hi] (delta: the
    initial guess's contraction, by default the interval guess's)."""
    if not 0 < lo < hi:
        raise ValueError(f"need 0 < lo < hi, got lo={lo}, hi={hi}")
    delta = _contraction(lo, hi) if delta is None else delta
    if delta <= target:
        return 1
    return max(1, math.ceil(math.log2(math.log(target) / math.log(delta))))


def reciprocal(
    x: CrypTensor, *, lo: float, hi: float, iterations: int | None = None, octaves: bool = False
) -> CrypTensor:
    """1/x for a secret x known (publicly) to lie in [lo, hi].

    Args:
        x: secret `MPCTensor`, entries in [lo, hi].
        lo: public lower bound, > 0.
        hi: public upper bound, > lo.
        iterations: Newton iterations; None picks the fewest reaching 2^-20.
        octaves: start from the octave guess (one comparison; see the module docstring).

    Returns:
        Secret tensor shaped like `x`.

    Raises:
        ValueError: bad interval or a negative iteration count.
    """
    if octaves:
        thresholds, guesses, delta = octave_guesses(lo, hi, precision_bits(x))
        count = newton_iterations(lo, hi, delta=delta) if iterations is None else iterations
        if count < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        if thresholds:
            y = bucket_lookup(below_bits(x, thresholds), guesses, like=x)
        else:  # one octave: the guess is public, so the first iteration needs no product
            y = (2 - x * guesses[0]) * guesses[0]
            count -= 1
        for _ in range(count):
            y = y * (2 - x * y)
        return y
    count = newton_iterations(lo, hi) if iterations is None else iterations
    if count < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    beta = _beta(lo, hi)
    if beta == 0.0:
        guess = _constant_guess(hi)
        y = (2 - x * guess) * guess  # first iteration from a public guess: no multiplication
        count -= 1
    else:
        y = x * -beta + beta * (lo + hi)
    for _ in range(count):
        y = y * (2 - x * y)
    return y
