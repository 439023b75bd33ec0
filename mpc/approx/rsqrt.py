"""1/sqrt(x) for secret x > 0 over a wide public range: power-of-two range reduction + Newton.

Ref:     PUMA (arXiv 2307.12533, section 4, LayerNorm) uses SPU's `f_rsqrt`
         (src/libspu/kernel/hal/fxp_approx.cc, secretflow/spu commit 02ac612d), after
         Lu et al., "Faster Secure Multiparty Computation of Adaptive Gradient Descent"
         (PPMLP 2020, doi 10.1145/3411501.3419427): write x = u 2^(e+2) with u in [0.25, 0.5),
         approximate rsqrt(u) by the degree-4 polynomial 4.14285016 - 15.47994394 u +
         38.4714796 u^2 - 49.86605845 u^3 + 26.02942339 u^4 (SPU's coefficients), and scale by
         2^-(e+2)/2. SPU finds e with bit decomposition; CrypTen has no cheap MSB, so here e
         comes from ONE batched comparison against the public powers of two.
Method:  bits [x < 2^j], j = e_min+1..e_max. The scales s = 2^-(e+2) and sqrt(s) of x's bucket
         are exact public-integer combinations of the bits (`_mpc.bucket_lookup`, no
         communication), so u = x s and the result sqrt(s) r(u) cost one multiplication
         each. r(u) is the polynomial (relative error 8.2e-5 on [0.25, 0.5]), evaluated in
         t = u - 0.375 (the same polynomial re-expanded: coefficients below 27, |t| <= 1/8):
         t^2 is truncated once, t^3 and t^4 are left untruncated at 2 f bits, and the sum is
         formed at 2 f + 12 bits (`_mpc.linear_combination`) and truncated once, so the whole
         polynomial costs 3 multiplications and 2 truncations. Optionally refined by Newton
         y <- y (3 - u y^2) / 2 (off by default: the polynomial is already well inside the
         tolerance, and each iteration is 3 multiplications).
Domain:  x in [2^e_min, 2^(e_max + 1)); defaults [2^-12, 2^13) = [2.4e-4, 8192], which covers
         LayerNorm variances of real models (MiniLM: 0.002..128). Below 2^e_min the result
         is too small (u < 0.25), above the range too large.
Error:   relative to 1/sqrt(x_q), x_q the fixed-point value of x: measured with CrypTen (16
         fractional bits) on 50k log-uniform seeded points of [1e-3, 1e3]: 6.7e-4 (at 995;
         5.6e-4 with one Newton iteration); on [0.1, 100], away from the output's quantization
         floor, 2.1e-4. Tolerance `MAX_REL_ERROR` = 1e-3. Against 1/sqrt(x) of the
         unquantized input: 7.7e-3 (at 1.0e-3).
         Floors: the output holds 16 fractional bits (relative 2^-17 sqrt(x), 2.4e-4 at 1e3),
         and sqrt(s) for odd e is rounded to 16 bits (relative <= 2^-17 / sqrt(s)). The input
         itself is quantized to 2^-17 absolute (relative 2^-17 / x: 0.8% at 1e-3), which no
         rsqrt can undo.
Knobs:   `min_exponent`, `max_exponent` (range; bytes grow with it, rounds do not),
         `newton_iterations`.
Cost:    1 batched comparison of (e_max - e_min) thresholds; 1 multiplication for u; 3 for
         the polynomial (t^2, then t^3 and t^4) with 2 truncations; 3 per Newton iteration
         (default 0); 1 for the final scale. (Before 2026-12-06 the polynomial truncated each
         of its 4 terms and one Newton iteration always ran: 12 more openings in sequence.)
"""

from __future__ import annotations

import math

from mpc.approx._mpc import (
    CrypTensor,
    below_bits,
    bucket_lookup,
    linear_combination,
    precision_bits,
    product,
    rescale,
    square,
)

__all__ = ["DEFAULT_MAX_EXPONENT", "DEFAULT_MIN_EXPONENT", "MAX_REL_ERROR", "rsqrt"]

DEFAULT_MIN_EXPONENT = -12
DEFAULT_MAX_EXPONENT = 12
# Max relative error vs 1/sqrt(x_q) with the defaults: 5.7e-4 measured (module docstring).
MAX_REL_ERROR = 1e-3
# rsqrt(u) ~ sum c_k u^k on [0.25, 0.5) (SPU f_rsqrt, `rsqrt_init_guess`).
_POLY = (4.14285016, -15.47994394, 38.4714796, -49.86605845, 26.02942339)
# The same polynomial in t = u - _CENTER (|t| <= 1/8): sum a_j t^j with
# a_j = sum_k c_k binom(k, j) _CENTER^(k - j). Its coefficients are small (|a_j| < 25) and its
# powers tiny, so rounding t^2 to the fixed point costs ~1e-5 (in u, 38 x 2^-16 = 6e-4).
_CENTER = 0.375
_CENTERED = tuple(
    sum(c * math.comb(k, j) * _CENTER ** (k - j) for k, c in enumerate(_POLY) if k >= j)
    for j in range(len(_POLY))
)
_EXTRA_BITS = 12  # the polynomial is summed at 2 f + 12 fractional bits, then truncated once


def rsqrt(
    x: CrypTensor,
    *,
    min_exponent: int = DEFAULT_MIN_EXPONENT,
    max_exponent: int = DEFAULT_MAX_EXPONENT,
    newton_iterations: int = 0,
) -> CrypTensor:
    """1 / sqrt(x) for secret x in [2^min_exponent, 2^(max_exponent + 1)).

    Args:
        x: secret `MPCTensor`, positive entries.
        min_exponent: e_min; the smallest bucket is [2^e_min, 2^(e_min + 1)). >= -14.
        max_exponent: e_max; the largest bucket is [2^e_max, 2^(e_max + 1)). <= 14, so that
            s = 2^-(e+2) stays >= 2^-16.
        newton_iterations: refinements after the polynomial (0..4; default 0).

    Returns:
        Secret tensor shaped like `x`.

    Raises:
        ValueError: exponents out of order or out of range, or bad iteration count.
    """
    if not -14 <= min_exponent < max_exponent <= 14:
        raise ValueError(
            f"need -14 <= min_exponent < max_exponent <= 14, got {min_exponent}, {max_exponent}"
        )
    if not 0 <= newton_iterations <= 4:
        raise ValueError(f"newton_iterations must be in 0..4, got {newton_iterations}")
    exponents = range(min_exponent + 1, max_exponent + 1)
    lows = below_bits(x, [2.0**j for j in exponents])  # integer bits [x < 2^j]
    # Bucket e is [2^e, 2^(e+1)) (the end buckets are open); u = x s(e) lies in [0.25, 0.5).
    scales = [2.0 ** -(e + 2) for e in range(min_exponent, max_exponent + 1)]
    s = bucket_lookup(lows, scales, x)
    root = bucket_lookup(lows, [math.sqrt(v) for v in scales], x)
    u = x * s
    bits = precision_bits(u)
    t = u - _CENTER
    t2 = rescale(square(t), bits)
    terms = ((_CENTERED[1], t), (_CENTERED[2], t2), (_CENTERED[3], product(t2, t)))
    terms += ((_CENTERED[4], square(t2)),)  # t^3, t^4 at 2 f bits, not truncated
    y = rescale(linear_combination(terms, _CENTERED[0], 2 * bits + _EXTRA_BITS), bits)
    for _ in range(newton_iterations):
        y = y * (1.5 - (u * (y * y)) * 0.5)
    return y * root
