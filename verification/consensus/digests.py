"""Canonical digests of tensors and of span weights.

A span's weight digest is built from per-layer digests, so a model publisher's manifest of L
layer digests fixes the expected digest of every span [s, e) a node may choose to serve:

    span_digest(s, e) = SHA-256("secure-infer/span/v1" | s | e
                                | layer_digest[s] | ... | layer_digest[e-1])

The layer digest itself (SHA-256 over each tensor's name, dtype, shape and bytes, in name order)
is computed where the weights are read (`decentralized.models`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

_SPAN_TAG = b"secure-infer/span/v1\0"
_TENSOR_TAG = b"secure-infer/tensor/v1\0"


def span_digest(start: int, end: int, layer_digests: Sequence[str]) -> str:
    """Hex SHA-256 committing to layers [start, end), given the digests of exactly those layers."""
    if end <= start or len(layer_digests) != end - start:
        raise ValueError(f"span [{start}, {end}) needs {end - start} layer digests")
    h = hashlib.sha256(_SPAN_TAG)
    h.update(f"{start},{end}\0".encode())
    for d in layer_digests:
        if len(d) != 64:
            raise ValueError(f"layer digest {d!r} is not 64 hex characters")
        h.update(bytes.fromhex(d))
    return h.hexdigest()


def layer_set_digest(layer_digests: Sequence[str]) -> str:
    """Hex SHA-256 over all layer digests of a model (the manifest's short name for them)."""
    return span_digest(0, len(layer_digests), layer_digests)


def tensor_digest(dtype: str, shape: Sequence[int], data: bytes, *, extra: bytes = b"") -> bytes:
    """32-byte SHA-256 over a wire tensor: dtype name, shape and raw little-endian bytes.

    `extra` is folded in first (e.g. the digest of the attention mask that goes with an input).
    Both ends hash the bytes that travelled, so no float conversion can make them disagree.
    """
    h = hashlib.sha256(_TENSOR_TAG)
    h.update(extra)
    h.update(dtype.encode() + b"\0")
    h.update(",".join(str(int(d)) for d in shape).encode() + b"\0")
    h.update(data)
    return h.digest()
