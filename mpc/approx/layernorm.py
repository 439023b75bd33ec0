"""LayerNorm and RMSNorm on secret shares, with `mpc.approx.rsqrt` for 1/sqrt(variance).

Ref:     PUMA (arXiv 2307.12533, section 4, LayerNorm: a secure reciprocal square root times
         x - mean, instead of a division and a square root); RMSNorm as in LLaMA (B. Zhang and
         R. Sennrich, "Root Mean Square Layer Normalization", NeurIPS 2019).
Method:  LayerNorm: d = x - mean(x); y = d / sqrt(mean(d^2) + eps) weight + bias.
         RMSNorm: y = x / sqrt(mean(x^2) + eps) weight. sum(d^2) is a (1, C) @ (C, 1) dot
         product per row (one truncation a row, not one an element), and rsqrt runs on
         v = (2^k sum) / C + 2^k eps with k = `variance_shift` (default 4), so that small
         variances keep their low-order bits; then 1 / sqrt(var) = 2^(k/2) rsqrt(v).
Domain:  rows whose 2^k (variance + eps) lies in rsqrt's range: LayerNorm variances in
         [2^-16, 2^9) = [1.5e-5, 512) by default (MiniLM's are 0.002..128); RMSNorm mean
         squares in [1.5e-5, 2048) (rsqrt's `max_exponent` 14). eps below the fixed-point
         ulp (2^-16; BERT's 1e-12) rounds to 0; an all-constant row then has d = 0 and gives
         0 * rsqrt(0) = 0 (rsqrt's lowest bucket), i.e. y = bias, which is torch's answer too.
Error:   measured with CrypTen (16 fractional bits) against torch.nn.functional.layer_norm /
         an RMSNorm in float64, rows of 384 with standard deviations log-uniform in
         [0.045, 11.3] (variances 0.002..128) and random weight/bias: LayerNorm 0.0023 (at the
         large-variance end, where 1/sqrt(16 var) keeps ~1400 ulps; 0.0021 with the rsqrt of
         2026-12-06, 0.0019 for rows of 64); RMSNorm 5.9e-4 of the
         row's largest output. With an element-wise square and no shift, LayerNorm was 0.017
         (a variance of 0.002 held only ~130 ulps). Tolerances `MAX_ABS_ERROR` = 5e-3 and
         `MAX_REL_ERROR_RMS` = 2e-3.
Knobs:   `eps`, `variance_shift` (k: even, 0..8; larger keeps more bits of small variances
         and shrinks the range), and the rsqrt range (`min_exponent`, `max_exponent`).
         The normalised dimension is always the last.
Cost:    per row: a C-long dot product (1 round), a division by the public C (for C a
         power of two, merged into the dot product's truncation), one rsqrt (1 batched
         comparison of 24 thresholds, 5 multiplications, `mpc.approx.rsqrt`); per element:
         1 multiplication for d * rsqrt, plus 1 for a secret weight (a public one is local).
         RMSNorm: the same without the mean.
"""

from __future__ import annotations

from typing import Any

from mpc.approx._mpc import CrypTensor, fixed_point, matmul_product, precision_bits, rescale
from mpc.approx.rsqrt import DEFAULT_MAX_EXPONENT, DEFAULT_MIN_EXPONENT, rsqrt

DEFAULT_VARIANCE_SHIFT = 4  # rsqrt sees 16 var: 0.002 -> 0.032 (2100 ulps), 128 -> 2048
RMS_MAX_EXPONENT = 14  # RMSNorm: mean squares up to 2^15 / 16 = 2048 (LLaMA rows can be large)

__all__ = [
    "DEFAULT_VARIANCE_SHIFT",
    "MAX_ABS_ERROR",
    "MAX_REL_ERROR_RMS",
    "RMS_MAX_EXPONENT",
    "layer_norm",
    "rms_norm",
]

# Max |error| vs torch layer_norm: 0.0023 measured (module docstring).
MAX_ABS_ERROR = 5e-3
# RMSNorm: max |error| relative to the row's max |output|: 5.9e-4 measured.
MAX_REL_ERROR_RMS = 2e-3


def _scaled_inverse_root(
    x: CrypTensor, eps: float, shift: int, min_exponent: int, max_exponent: int
) -> CrypTensor:
    """1 / sqrt(mean(x^2) + eps) over the last dimension (keepdim), at full fixed-point precision.

    sum(x^2) is a (1, C) @ (C, 1) dot product, truncated once per row (an element-wise square
    truncates every x_i^2, up to 1 ulp each: 0.75 % of a variance of 0.002). The mean is then
    taken as (2^shift sum) / C, so rsqrt sees v = 2^shift mean(x^2): a variance of 0.002 keeps
    ~2100 ulps instead of ~130, and 1 / sqrt(mean) = 2^(shift/2) rsqrt(v), exact for even shift.
    """
    n = x.size(-1)
    if n & (n - 1) == 0:  # a power of two: the sum's truncation also divides by n / 2^shift
        total = matmul_product(x.unsqueeze(-2), x.unsqueeze(-1)).squeeze(-1)  # (..., 1), 2 f
        bits = precision_bits(x)
        total.encoder = fixed_point(2 * bits + n.bit_length() - 1 - shift)  # reads 2^k sum / n
        v = rescale(total, bits) + eps * 2.0**shift
    else:
        total = x.unsqueeze(-2).matmul(x.unsqueeze(-1)).squeeze(-1)  # (..., 1)
        v = (total * (2**shift)).div(n) + eps * 2.0**shift
    inverse = rsqrt(v, min_exponent=min_exponent, max_exponent=max_exponent)
    return inverse * (2 ** (shift // 2))


def _check_shift(shift: int) -> None:
    if shift < 0 or shift % 2 or shift > 8:
        raise ValueError(f"variance_shift must be even and in 0..8, got {shift}")


def layer_norm(
    x: CrypTensor,
    weight: Any = None,
    bias: Any = None,
    *,
    eps: float = 1e-12,
    variance_shift: int = DEFAULT_VARIANCE_SHIFT,
    min_exponent: int = DEFAULT_MIN_EXPONENT,
    max_exponent: int = DEFAULT_MAX_EXPONENT,
) -> CrypTensor:
    """LayerNorm over the last dimension of a secret tensor.

    Args:
        x: secret `MPCTensor`, (..., C).
        weight: (C,) public torch tensor or secret tensor, or None.
        bias: (C,) public torch tensor or secret tensor, or None.
        eps: added to the variance (rounded to the fixed-point ulp).
        variance_shift: even k; rsqrt runs on 2^k var (more low-order bits, smaller range).
        min_exponent: rsqrt range, see `mpc.approx.rsqrt.rsqrt`.
        max_exponent: rsqrt range, see `mpc.approx.rsqrt.rsqrt`.

    Returns:
        Secret tensor shaped like `x`.
    """
    _check_shift(variance_shift)
    d = x - x.mean(dim=-1, keepdim=True)
    y = d * _scaled_inverse_root(d, eps, variance_shift, min_exponent, max_exponent)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def rms_norm(
    x: CrypTensor,
    weight: Any = None,
    *,
    eps: float = 1e-6,
    variance_shift: int = DEFAULT_VARIANCE_SHIFT,
    min_exponent: int = DEFAULT_MIN_EXPONENT,
    max_exponent: int = RMS_MAX_EXPONENT,
) -> CrypTensor:
    """RMSNorm (LLaMA) over the last dimension of a secret tensor: x / sqrt(mean(x^2) + eps).

    Args:
        x: secret `MPCTensor`, (..., C).
        weight: (C,) public torch tensor or secret tensor, or None.
        eps: added to the mean square (rounded to the fixed-point ulp).
        variance_shift: even k; rsqrt runs on 2^k mean(x^2).
        min_exponent: rsqrt range, see `mpc.approx.rsqrt.rsqrt`.
        max_exponent: rsqrt range, see `mpc.approx.rsqrt.rsqrt`.

    Returns:
        Secret tensor shaped like `x`.
    """
    _check_shift(variance_shift)
    y = x * _scaled_inverse_root(x, eps, variance_shift, min_exponent, max_exponent)
    if weight is not None:
        y = y * weight
    return y
