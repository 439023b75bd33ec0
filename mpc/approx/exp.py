"""exp(x) for x <= 0 on secret shares: the limit (1 + x / 2^n)^(2^n), zeroed below a threshold.

Ref:     Y. Dong et al., "PUMA", arXiv 2307.12533, section 4 (softmax: exp of x - max(x), set
         to 0 where x - max <= -14). SecretFlow SPU implements PUMA's exp as `exp_taylor` in
         src/libspu/kernel/hal/fxp_approx.cc (secretflow/spu commit 02ac612d):
         (1 + x / 2^n)^(2^n) with n = `fxp_exp_iters`, which PUMA's runtime config sets to 5
         (`fxp_exp_mode=Taylor, fxp_exp_iters=5`). CrypTen's `exp` is the same limit with n = 8.
Method:  y = 1 + t (order 1) or 1 + t + t^2 / 2 (order 2), t = x / 2^n, then n squarings;
         times the secret bit [x >= threshold]. The squarings run on z = 2^n y = 2^n + x
         (+ x^2 / 2^(n+1)), exact, with z <- z^2 / 2^n, and y = z / 2^n at the end.
         Computing y directly loses the low bits of x * 2^-n, a relative error of 2^-16 that
         the squarings amplify to 2^(n-16) (0.0039 at n = 8, measured); carrying the 2^n
         factor keeps n extra fractional bits.
Domain:  x <= 0 (|x| <= 32768 for order 2: x^2 at 32 fractional bits stays within the
         2^62 the exact truncation takes). The threshold must be
         >= -2^n: below -2^n the base leaves [0, 1] (1 + t < 0; 1 + t + t^2 / 2 > 1 once t < -2)
         and its 2^n-th power wraps around the ring; it is multiplied by an exact 0 bit there.
         With threshold None, x must be >= -2^n.
Error:   float64 on [-14, 0], order 1: 0.0085 for n = 5 (PUMA), 0.00106 for n = 8 (CrypTen),
         at x ~ -2 (the base 1 + t loses t^2/2 per factor: a relative error ~ x^2 / 2^(n+1)).
         Order 2 (base 1 + t + t^2/2, relative error ~ |x|^3 / (6 4^n)): 5.6e-5 for n = 6.
         Under CrypTen fixed point (16 fractional bits), measured on 200k seeded points of
         [-30, 0] plus edges: defaults (order 2, n = 6) 5.63e-5 at x = -3.1; order 1, n = 5:
         0.0086; order 1, n = 8: 0.00108. Below the threshold the true value is < 8.4e-7.
         Tolerance `MAX_ABS_ERROR` = 1e-4 (defaults).
Knobs:   `iterations` (n in 1..15: one round each), `order` (1: PUMA's base; 2: one more
         multiplication and round, ~20x smaller error at n = 6), `threshold` (None: no mask, no
         comparison).
Cost:    order 2: 1 Beaver square for x^2, then n squarings (n + 1 rounds; 7 by default);
         each square is truncated once (by 2^(16 + n), which also divides by 2^n), so n + 2
         truncations in all (n + 1 inside `softmax`, which keeps the 2^n factor until its
         final product); 1 comparison and 1 multiplication by the integer mask bit (no
         truncation).
"""

from __future__ import annotations

from mpc.approx._mpc import (
    CrypTensor,
    below_bits,
    fixed_point,
    precision_bits,
    product,
    rescale,
    square,
)

__all__ = [
    "DEFAULT_ITERATIONS",
    "DEFAULT_ORDER",
    "DEFAULT_THRESHOLD",
    "MAX_ABS_ERROR",
    "MAX_ITERATIONS",
    "exp_nonpositive",
]

DEFAULT_ITERATIONS = 6  # n: the base is raised to 2^6 = 64
DEFAULT_ORDER = 2  # base 1 + t + t^2/2; order 1 is PUMA's 1 + t
MAX_ITERATIONS = 15  # z = 2^n + x is squared: (2^n)^2 at 16 fractional bits must fit int64
DEFAULT_THRESHOLD = -14.0  # PUMA: exp(x) := 0 for x < -14 (e^-14 = 8.3e-7)
# Max |error| vs torch.exp with the defaults: 5.63e-5 measured (CrypTen, 16 fractional bits,
# 200k seeded points of [-30, 0]); float64 5.6e-5.
MAX_ABS_ERROR = 1e-4


def exp_nonpositive(
    x: CrypTensor,
    *,
    iterations: int = DEFAULT_ITERATIONS,
    order: int = DEFAULT_ORDER,
    threshold: float | None = DEFAULT_THRESHOLD,
) -> CrypTensor:
    """e^x for secret x <= 0, with values below `threshold` set to exactly 0.

    Args:
        x: secret `MPCTensor`, entries <= 0 (e.g. logits minus their row max).
        iterations: n in (1 + x / 2^n)^(2^n); 1..15.
        order: 1 for the base 1 + t (PUMA, CrypTen), 2 for 1 + t + t^2 / 2 (t = x / 2^n).
        threshold: public cut-off in [-2^n, 0); None skips the mask (then x must be >= -2^n).

    Returns:
        Secret tensor shaped like `x`, within `MAX_ABS_ERROR` of e^x with the defaults.

    Raises:
        ValueError: `iterations` outside 1..15, or `threshold` outside [-2^n, 0).
    """
    check_knobs(iterations, order, threshold)
    return rescale(exp_wide(x, iterations, order, threshold), precision_bits(x))


def check_knobs(iterations: int, order: int, threshold: float | None) -> None:
    """Raise ValueError for knobs `exp_nonpositive` (and `exp_wide`) cannot run with."""
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"iterations must be in 1..{MAX_ITERATIONS}, got {iterations}")
    if threshold is not None and not -(2.0**iterations) <= threshold < 0:
        raise ValueError(
            f"threshold must be in [-2^{iterations}, 0) = [{-(2.0**iterations)}, 0), "
            f"got {threshold}"
        )
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order}")


def _relabel(x: CrypTensor, bits: int) -> CrypTensor:
    """The same ring integers read with `bits` fractional bits: x / 2^(bits - own), free."""
    x.encoder = fixed_point(bits)
    return x


def exp_wide(x: CrypTensor, iterations: int, order: int, threshold: float | None) -> CrypTensor:
    """`exp_nonpositive` without its last truncation: the result carries `iterations` more
    fractional bits than x (its encoder says so). Arguments as `exp_nonpositive`, checked by
    the caller with `check_knobs`."""
    bits = precision_bits(x)
    z = x + float(2**iterations)  # 2^n (1 + t), t = x / 2^n, exact
    if order == 2:  # + 2^n t^2 / 2 = x^2 / 2^(n+1): one truncation by 2^(16 + n + 1)
        z = z + rescale(_relabel(square(x), 2 * bits + iterations + 1), bits)
    for _ in range(iterations):  # z <- z^2 / 2^n: one truncation by 2^(16 + n)
        # z^2 <= 2^(2n) times 2^32 stays below 2^62 (exact truncation's range) for n <= 15
        z = rescale(_relabel(square(z), 2 * bits + iterations), bits)
    y = _relabel(z, bits + iterations)  # y = z / 2^n, kept at n more fractional bits
    if threshold is None:
        return y
    (too_small,) = below_bits(x, (threshold,))  # secret 0/1 integer
    return product(y, 1 - too_small)  # an integer bit: no truncation
