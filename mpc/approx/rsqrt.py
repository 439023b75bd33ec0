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
         each. r(u) is the polynomial (relative error 8.2e-5 on [0.25, 0.5]) refined by Newton
         y <- y (3 - u y^2) / 2 (1 iteration: 1e-8 in float64).
Domain:  x in [2^e_min, 2^(e_max + 1)); defaults [2^-12, 2^13) = [2.4e-4, 8192], which covers
         LayerNorm variances of real models (MiniLM: 0.002..128). Below 2^e_min the result
         is too small (u < 0.25), above the range too large.
Error:   relative to 1/sqrt(x_q), x_q the fixed-point value of x: measured with CrypTen (16
         fractional bits) on 50k log-uniform seeded points of [1e-3, 1e3]: 5.7e-4 (at 968);
         tolerance `MAX_REL_ERROR` = 1e-3. Against 1/sqrt(x) of the unquantized input: 7.7e-3
         (at 1.0e-3).
         Floors: the output holds 16 fractional bits (relative 2^-17 sqrt(x), 2.4e-4 at 1e3),
         and sqrt(s) for odd e is rounded to 16 bits (relative <= 2^-17 / sqrt(s)). The input
         itself is quantized to 2^-17 absolute (relative 2^-17 / x: 0.8% at 1e-3), which no
         rsqrt can undo.
Knobs:   `min_exponent`, `max_exponent` (range; bytes grow with it, rounds do not),
         `newton_iterations`.
Cost:    1 batched comparison of (e_max - e_min) thresholds; 1 multiplication for u; 3 for
         the polynomial (u^2, then u^3 and u^4: 2 rounds); 3 per Newton iteration (3 rounds);
         1 for the final scale.
"""

from __future__ import annotations

import math

from mpc.approx._mpc import CrypTensor, below_bits, bucket_lookup

__all__ = ["DEFAULT_MAX_EXPONENT", "DEFAULT_MIN_EXPONENT", "MAX_REL_ERROR", "rsqrt"]

DEFAULT_MIN_EXPONENT = -12
DEFAULT_MAX_EXPONENT = 12
# Max relative error vs 1/sqrt(x_q) with the defaults: 5.7e-4 measured (module docstring).
MAX_REL_ERROR = 1e-3
# rsqrt(u) ~ sum c_k u^k on [0.25, 0.5) (SPU f_rsqrt, `rsqrt_init_guess`).
_POLY = (4.14285016, -15.47994394, 38.4714796, -49.86605845, 26.02942339)


def rsqrt(
    x: CrypTensor,
    *,
    min_exponent: int = DEFAULT_MIN_EXPONENT,
    max_exponent: int = DEFAULT_MAX_EXPONENT,
    newton_iterations: int = 1,
) -> CrypTensor:
    """1 / sqrt(x) for secret x in [2^min_exponent, 2^(max_exponent + 1)).

    Args:
        x: secret `MPCTensor`, positive entries.
        min_exponent: e_min; the smallest bucket is [2^e_min, 2^(e_min + 1)). >= -14.
        max_exponent: e_max; the largest bucket is [2^e_max, 2^(e_max + 1)). <= 14, so that
            s = 2^-(e+2) stays >= 2^-16.
        newton_iterations: refinements after the polynomial guess (0..4).

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
    u2 = u * u
    y = u * _POLY[1] + u2 * _POLY[2] + (u2 * u) * _POLY[3] + (u2 * u2) * _POLY[4] + _POLY[0]
    for _ in range(newton_iterations):
        y = y * (1.5 - (u * (y * y)) * 0.5)
    return y * root
