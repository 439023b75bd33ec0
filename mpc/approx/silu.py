"""SiLU (x sigmoid(x), LLaMA's FFN activation) on secret shares, without exp or overflow.

Ref:     PUMA (arXiv 2307.12533) replaces LLaMA's SiLU like GeLU, with a piecewise polynomial:
         SecretFlow SPU examples/python/ml/flax_llama7b/flax_llama7b.py (`hack_silu`,
         secretflow/spu commit 02ac612d): 0 for x < -8; -0.3068 - 0.0820 x - 0.0055 x^2 on
         [-8, -4); 0.0085 + 0.5 x + 0.2281 x^2 - 0.0111 x^4 + 0.00027 x^6 on [-4, 4]; x for
         x > 4. That is `SiLUMethod.PUMA`. Its seam at x = 4 is off by 0.072 (silu(4) = 3.928),
         so the default here is `SiLUMethod.CHEBYSHEV`, built on the identity below.
Method:  CHEBYSHEV: silu(x) = relu(x) - h(|x|) with h(t) = t / (1 + e^t) = t sigmoid(-t), a
         smooth bump (h(0) = 0, max 0.278 at t = 1.28, h(10) = 4.5e-4). h is a degree-10
         Chebyshev least-squares fit on t in [0, 10] (numpy.polynomial.chebyshev.chebfit,
         20001 equispaced points; coefficients in `_H_CHEBYSHEV`), and 0 for t >= 10. The
         polynomial runs on w = t / 5 - 1 in [-1, 1], where every T_k(w) is bounded by 1, via
         T_2k = 2 T_k^2 - 1 and T_2k+1 = 2 T_k T_k+1 - w (4 rounds). For |x| >= 10, w is
         outside [-1, 1] and T_k(w) can wrap around the ring, but it is multiplied by an exact
         0 bit.
         PUMA: the four pieces above, selected like `mpc.approx.gelu`.
Domain:  any x the ring holds; measured on [-30, 30] and at +-1000.
Error:   max |silu_approx - x sigmoid(x)| in float64 on [-30, 30]: CHEBYSHEV 4.5e-4
         (fit 3.0e-4 plus the tail h(10) = 4.5e-4 at the cut), PUMA 0.0719 (at x = 4).
         Measured with CrypTen (16 fractional bits) on 200k seeded points of [-30, 30] plus
         the seams (+-1 ulp) and +-1000: CHEBYSHEV 4.54e-4 (at x = 10, the cut), PUMA 0.0719
         (at x = 4). Tolerances `MAX_ABS_ERROR[method]`: 6e-4 and 0.073.
Knobs:   `method`.
Cost:    CHEBYSHEV: 1 batched comparison of 3 thresholds (x < 0, x < -10, x < 10);
         2 bit multiplications (relu(x), |x|: 1 round); 9 multiplications for T_2..T_10
         (4 rounds); 1 bit multiplication for the cut (1 round).
         PUMA: 1 batched comparison of 3 thresholds; 3 multiplications for x^2, x^4, x^6
         (2 rounds); 3 bit multiplications (1 round).
"""

from __future__ import annotations

import enum
from typing import Any

from mpc.approx._mpc import CrypTensor, below

__all__ = ["MAX_ABS_ERROR", "SiLUMethod", "silu"]


class SiLUMethod(enum.Enum):
    """How SiLU is approximated."""

    CHEBYSHEV = "chebyshev"  # relu(x) - h(|x|), h(t) = t/(1+e^t): degree-10 Chebyshev on [0, 10]
    PUMA = "puma"  # SPU/PUMA LLaMA spline: 0 | quadratic on [-8,-4) | even deg-6 + x/2 | x


# Max |error| vs x * sigmoid(x): CHEBYSHEV 4.54e-4, PUMA 0.0719 measured (module docstring).
MAX_ABS_ERROR = {SiLUMethod.CHEBYSHEV: 6e-4, SiLUMethod.PUMA: 0.073}

_CUT = 10.0  # h(t) := 0 for t >= 10 (h(10) = 4.54e-4)
# h(t) ~ sum_k c_k T_k(t / 5 - 1), t in [0, 10] (chebfit, degree 10, see the module docstring).
_H_CHEBYSHEV = (
    0.07590364005573022,
    -0.09602605288793116,
    -0.005884220415257509,
    0.06316845034225035,
    -0.06068061133036554,
    0.03363880019365387,
    -0.011154765613219614,
    0.0007846076829857494,
    0.001719121121422505,
    -0.001218195922494099,
    0.0005034540172702476,
)
# SPU `hack_silu`: a0 + a1 x + a2 x^2 on [-8, -4); b0 + x/2 + b2 x^2 + b4 x^4 + b6 x^6 on [-4, 4].
_PUMA_A = (-0.3067541139982155, -0.0819767021525476, -0.0055465625580307)
_PUMA_B0, _PUMA_B2, _PUMA_B4, _PUMA_B6 = (
    0.0085064025895951,
    0.2281430841728270,
    -0.011113046708173,
    0.0002743776353465,
)


def silu(x: CrypTensor, *, method: SiLUMethod = SiLUMethod.CHEBYSHEV) -> CrypTensor:
    """SiLU of a secret tensor.

    Args:
        x: secret `MPCTensor` (fixed point), any shape.
        method: `SiLUMethod.CHEBYSHEV` (default, accurate) or `SiLUMethod.PUMA` (PUMA's spline).

    Returns:
        Secret tensor shaped like `x`, within `MAX_ABS_ERROR[method]` of x sigmoid(x).
    """
    if method is SiLUMethod.PUMA:
        return _silu_puma(x)
    if method is SiLUMethod.CHEBYSHEV:
        return _silu_chebyshev(x)
    raise ValueError(f"unknown SiLU method {method!r}")


def _silu_chebyshev(x: CrypTensor) -> CrypTensor:
    negative, below_minus_cut, below_cut = below(x, (0.0, -_CUT, _CUT))
    negative_part = negative * x  # min(x, 0)
    positive_part = x - negative_part  # relu(x)
    magnitude = x - negative_part * 2  # |x|
    w = magnitude * (2.0 / _CUT) - 1.0  # t / 5 - 1
    t: list[Any] = [1.0, w] + [None] * (len(_H_CHEBYSHEV) - 2)  # T_k(w)
    for k in range(2, len(_H_CHEBYSHEV)):
        half = k // 2
        if k % 2 == 0:
            t[k] = t[half].square() * 2 - 1.0
        else:
            t[k] = t[half] * t[half + 1] * 2 - w
    h = w * _H_CHEBYSHEV[1] + _H_CHEBYSHEV[0]
    for k in range(2, len(_H_CHEBYSHEV)):
        h = h + t[k] * _H_CHEBYSHEV[k]
    inside = below_cut - below_minus_cut  # -10 <= x < 10
    return positive_part - inside * h


def _silu_puma(x: CrypTensor) -> CrypTensor:
    lt_minus8, lt_minus4, lt_4 = below(x, (-8.0, -4.0, 4.0))
    x2 = x * x
    x4 = x2 * x2
    x6 = x2 * x4
    quadratic = x2 * _PUMA_A[2] + x * _PUMA_A[1] + _PUMA_A[0]
    even6 = x6 * _PUMA_B6 + x4 * _PUMA_B4 + x2 * _PUMA_B2 + x * 0.5 + _PUMA_B0
    in_quadratic = lt_minus4 - lt_minus8  # -8 <= x < -4
    in_even6 = lt_4 - lt_minus4  # -4 <= x < 4
    return (1 - lt_4) * x + in_quadratic * quadratic + in_even6 * even6
