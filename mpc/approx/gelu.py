"""GeLU as PUMA's four-piece polynomial spline on secret shares.

Ref:     Y. Dong et al., "PUMA: Secure Inference of LLaMA-7B in Five Minutes", arXiv 2307.12533,
         section 4 (GeLU). Coefficients as published in SecretFlow SPU,
         examples/python/ml/flax_gpt2/pumabench.py and flax_bert examples (`hack_gelu`),
         secretflow/spu commit 02ac612d.
Method:  0 for x < -4; P3(x) on [-4, -1.95); P6(x) on [-1.95, 3); x for x >= 3, where
         P3 = -0.5054 - 0.4223 x - 0.1181 x^2 - 0.0110 x^3 and
         P6 = 0.0085 + 0.5 x + 0.3603 x^2 - 0.0377 x^4 + 0.0018 x^6. Pieces are selected by
         multiplying with secret comparison bits (no branching on secrets).
Domain:  any x the 64-bit ring holds; accuracy measured on [-30, 30] and at +-1000. Outside
         [-1.95, 3] the polynomial terms may wrap around the ring (x^6 for |x| > ~36) but are
         multiplied by an exact 0 bit, so they do not leak into the result.
Error:   max |gelu_approx - gelu_erf| = 0.0199 in float64 (just below x = 3, the P6 -> x
         seam). The coefficients are applied at 24 fractional bits (the products at 40), so
         the fixed-point result follows the float64 spline: measured with CrypTen (16
         fractional bits) on 200k seeded points of [-30, 30] plus the piece boundaries (+-1 ulp)
         and +-1000: 0.0199, at x = 3 - 2^-16. (Rounding every coefficient to 16 bits, as
         CrypTen's multiplication by a float does, moved P6 near 3 by ~0.004 to 0.0164.)
         Tolerance `MAX_ABS_ERROR` = 0.021.
Knobs:   none (the spline is PUMA's).
Cost:    1 batched comparison of 3 thresholds; x^2, x^4, x^6 by Beaver squares (one opening
         each) and x^3 by one multiplication, each truncated once; both polynomials summed at
         40 fractional bits without truncation; the three pieces selected by one batched
         multiplication with the integer comparison bits (no truncation) and the sum truncated
         once: 5 truncations an element, where CrypTen's float arithmetic would make 14.
"""

from __future__ import annotations

from mpc.approx._mpc import (
    CrypTensor,
    below_bits,
    linear_combination,
    precision_bits,
    product,
    rescale,
    square,
    upscale,
)
from mpc.backends.crypten import load

__all__ = ["MAX_ABS_ERROR", "gelu"]

# Max |error| vs torch's erf GeLU: 0.0199 measured under CrypTen (16 fractional bits) and in
# float64 (the spline's own error); the bound adds the truncations' last-place errors.
MAX_ABS_ERROR = 0.021
# The polynomials are summed at 24 more fractional bits than the input's: coefficients as
# small as P6's 0.0018 keep 5 significant digits.
_COEFFICIENT_BITS = 24

_LOW = -4.0
_MID = -1.95
_HIGH = 3.0
# P3 on [-4, -1.95): a0 + a1 x + a2 x^2 + a3 x^3 (SPU `hack_gelu` a_coeffs).
_P3 = (-0.5054031199708174, -0.42226581151983866, -0.11807612951181953, -0.011034134030615728)
# P6 on [-1.95, 3]: b0 + b1 x + b2 x^2 + b4 x^4 + b6 x^6 (SPU `hack_gelu` b_coeffs; b3=b5=0).
_P6_B0, _P6_B1, _P6_B2, _P6_B4, _P6_B6 = (
    0.008526321541038084,
    0.5,
    0.3603292692789629,
    -0.037688200365904236,
    0.0018067462606141187,
)


def gelu(x: CrypTensor) -> CrypTensor:
    """PUMA's piecewise-polynomial GeLU of a secret tensor.

    Args:
        x: secret `MPCTensor` (fixed point), any shape.

    Returns:
        Secret tensor shaped like `x`, within `MAX_ABS_ERROR` of 0.5 x (1 + erf(x / sqrt 2)).
    """
    crypten = load()
    bits = precision_bits(x)
    wide = bits + _COEFFICIENT_BITS
    lt_low, lt_mid, lt_high = below_bits(x, (_LOW, _MID, _HIGH))  # secret 0/1 integers
    x2 = rescale(square(x), bits)
    x3 = rescale(product(x, x2), bits)
    x4 = rescale(square(x2), bits)
    x6 = rescale(square(x3), bits)
    p3 = linear_combination(((_P3[1], x), (_P3[2], x2), (_P3[3], x3)), _P3[0], wide)
    p6 = linear_combination(((_P6_B1, x), (_P6_B2, x2), (_P6_B4, x4), (_P6_B6, x6)), _P6_B0, wide)
    pieces = crypten.stack([1 - lt_high, lt_mid - lt_low, lt_high - lt_mid])  # one-hot
    values = crypten.stack([upscale(x, wide), p3, p6])
    # Outside [-1.95, 3) the powers may wrap around the ring; an exact 0 bit cancels them.
    return rescale(product(pieces, values).sum(0), bits)
