"""Shared MPC building blocks for `mpc.approx`: batched comparisons and public lookups.

Not an approximation itself. CrypTen's comparisons return 0/1 arithmetic shares with encoder
scale 1; multiplying those by a public float would round the float to an integer. `below`
re-encodes the bits at the input's fixed-point scale (a local multiplication of the shares by
2^16, no communication); `bucket_lookup` instead keeps them at scale 1, multiplies by public
integers and reinterprets the sum as fixed point, which is exact and needs no truncation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mpc.backends.crypten import load

CrypTensor = Any  # crypten.mpc.MPCTensor; CrypTen ships no type information.


def below_bits(x: CrypTensor, thresholds: Sequence[float]) -> list[CrypTensor]:
    """Secret integer bits [x < t] (encoder scale 1) for each public t, from ONE comparison.

    The differences x - t are stacked along a new leading dimension, so CrypTen runs a single
    `_ltz` (one A2B conversion and its rounds) for all thresholds; bytes grow with
    len(thresholds), rounds do not.
    """
    crypten = load()
    stacked = crypten.stack([x - float(t) for t in thresholds])
    bits = stacked < 0
    return [bits[i] for i in range(len(thresholds))]


def below(x: CrypTensor, thresholds: Sequence[float]) -> list[CrypTensor]:
    """Like `below_bits`, but each bit is encoded in `x`'s fixed point (ready to mix with x)."""
    return [to_fixed(bit, x) for bit in below_bits(x, thresholds)]


def to_fixed(bit: CrypTensor, like: CrypTensor) -> CrypTensor:
    """An integer (scale 1) secret as fixed point with `like`'s encoder: shares times 2^f."""
    out = bit * int(like.encoder.scale)
    out.encoder = like.encoder
    return out


def bucket_lookup(
    lows: Sequence[CrypTensor], values: Sequence[float], like: CrypTensor
) -> CrypTensor:
    """values[k] where k is the secret bucket index, exactly, without communication.

    Args:
        lows: integer bits [x < t_1], ..., [x < t_K] from `below_bits`, thresholds ascending,
            so bucket 0 is x < t_1, bucket k is t_k <= x < t_(k+1), bucket K is x >= t_K.
        values: K + 1 public values, one per bucket.
        like: a fixed-point tensor whose encoder the result takes.

    Returns:
        Secret fixed-point tensor holding values[bucket(x)] rounded to the encoder's ulp.
    """
    if len(values) != len(lows) + 1:
        raise ValueError(f"need {len(lows) + 1} values for {len(lows)} thresholds")
    scale = like.encoder.scale
    ints = [round(v * scale) for v in values]
    # One-hot of the bucket is lows[k] - lows[k-1] (with lows[-1] = 0, lows[K] = 1), so
    # sum_k onehot_k ints[k] telescopes to ints[K] + sum_k lows[k] (ints[k] - ints[k+1]).
    total = lows[0] * (ints[0] - ints[1])
    for k in range(1, len(lows)):
        total = total + lows[k] * (ints[k] - ints[k + 1])
    total = total + ints[-1]
    total.encoder = like.encoder
    return total


def tree_max(x: CrypTensor, dim: int) -> CrypTensor:
    """max over `dim` (kept as size 1) by pairwise reduction: max(a, b) = a + relu(b - a).

    ceil(log2 n) levels of one batched comparison and one multiplication each, n - 1
    comparisons a row in all. CrypTen's `max(dim)` does the same tree and then also an `eq`
    of every element against the max (two more comparisons per element) to build the argmax
    one-hot, which softmax does not need.
    """
    crypten = load()
    last = x.dim() - 1
    dim = dim % x.dim()
    y = x if dim == last else x.transpose(dim, last)
    while y.size(-1) > 1:
        half = y.size(-1) // 2
        a = y.narrow(-1, 0, half)
        b = y.narrow(-1, half, half)
        pairs = a + (b - a).relu()
        if y.size(-1) % 2:
            pairs = crypten.cat([pairs, y.narrow(-1, 2 * half, 1)], dim=-1)
        y = pairs
    return y if dim == last else y.transpose(dim, last)


# Fixed-point bookkeeping without CrypTen's automatic truncations.
#
# CrypTen truncates after every multiplication by a public float and after every secret x
# secret product, and its `mul` of two secrets with different scales divides by the wrong one.
# Each truncation is an opening (two-party exact truncation: one ring element each way plus a
# dealer pair), so a polynomial that CrypTen would truncate once per term can instead be summed
# at a higher precision and truncated once. These helpers keep the scale explicit: a tensor's
# encoder always states the precision its ring integers are at.


def fixed_point(bits: int) -> Any:
    """CrypTen's fixed-point encoder with 2^bits as its scale (bits = 0: integers)."""
    return load().encoder.FixedPointEncoder(precision_bits=bits)


def precision_bits(x: CrypTensor) -> int:
    """The number of fractional bits of `x`'s encoding (0 for secret integers such as bits)."""
    return int(x.encoder.scale).bit_length() - 1


def upscale(x: CrypTensor, bits: int) -> CrypTensor:
    """x re-encoded with `bits` fractional bits (>= its own): shares times 2^k, local, exact."""
    shift = bits - precision_bits(x)
    if shift < 0:
        raise ValueError(f"upscale to {bits} bits from {precision_bits(x)}: use rescale")
    out = x * (1 << shift) if shift else x.clone()  # an int multiplies the shares locally
    out.encoder = fixed_point(bits)
    return out


def rescale(x: CrypTensor, bits: int) -> CrypTensor:
    """x with `bits` fractional bits (<= its own): one exact truncation by a power of two."""
    shift = precision_bits(x) - bits
    if shift < 0:
        raise ValueError(f"rescale to {bits} bits from {precision_bits(x)}: use upscale")
    out = x.clone()
    if shift:
        out._tensor.div_(1 << shift)  # two parties: `crypten_trunc`'s exact truncation
    out.encoder = fixed_point(bits)
    return out


def product(x: CrypTensor, y: CrypTensor) -> CrypTensor:
    """x * y (broadcasting) by one Beaver multiplication, NOT truncated: the result's precision
    is the sum of both precisions. One round; opens x - a and y - b."""
    beaver = load().mpc.primitives.beaver
    out = x.shallow_copy()
    out._tensor = beaver.mul(x._tensor, y._tensor)
    out.encoder = fixed_point(precision_bits(x) + precision_bits(y))
    return out


def matmul_product(x: CrypTensor, y: CrypTensor) -> CrypTensor:
    """x @ y by one Beaver matrix multiplication, NOT truncated (like `product`)."""
    beaver = load().mpc.primitives.beaver
    out = x.shallow_copy()
    out._tensor = beaver.matmul(x._tensor, y._tensor)
    out.encoder = fixed_point(precision_bits(x) + precision_bits(y))
    return out


def square(x: CrypTensor) -> CrypTensor:
    """x^2 by one Beaver square (opens only x - r), NOT truncated: twice x's precision."""
    beaver = load().mpc.primitives.beaver
    out = x.shallow_copy()
    out._tensor = beaver.square(x._tensor)
    out.encoder = fixed_point(2 * precision_bits(x))
    return out


def linear_combination(
    terms: Sequence[tuple[float, CrypTensor]], constant: float, bits: int
) -> CrypTensor:
    """constant + sum_k c_k t_k at `bits` fractional bits, without communication.

    Each public coefficient is rounded to 2^-(bits - precision(t_k)) and multiplies t_k's
    shares as an integer, so the sum needs no truncation (one `rescale` afterwards, where
    CrypTen would truncate once per term). Every t_k must have at most `bits` fractional bits.
    """
    total: CrypTensor | None = None
    for coefficient, term in terms:
        shift = bits - precision_bits(term)
        if shift < 0:
            raise ValueError(f"a term has {precision_bits(term)} fractional bits, more than {bits}")
        scaled = term * round(coefficient * (1 << shift))
        scaled.encoder = fixed_point(bits)
        total = scaled if total is None else total + scaled
    if total is None:
        raise ValueError("linear_combination needs at least one term")
    return total + constant  # the constant is encoded at `bits` (added by party 0)
