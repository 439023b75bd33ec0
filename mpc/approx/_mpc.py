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
