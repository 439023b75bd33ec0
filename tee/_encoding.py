"""Length-prefixed byte encoding shared by measurements, simulated quotes and the enclave pipe.

Each part is written as a 4-byte big-endian length and its bytes, so a list of parts has exactly
one encoding and `decode` refuses anything that is not one (no pickle, no ambiguity).
"""

from __future__ import annotations

from tee.errors import MalformedEvidence

__all__ = ["decode", "encode"]


def encode(*parts: bytes) -> bytes:
    """Concatenate parts, each preceded by its 4-byte big-endian length."""
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def decode(data: bytes, count: int | None = None) -> list[bytes]:
    """Split `encode` output back into parts; `count`, when given, must match exactly."""
    parts: list[bytes] = []
    pos = 0
    while pos < len(data):
        if pos + 4 > len(data):
            raise MalformedEvidence("truncated length prefix")
        size = int.from_bytes(data[pos : pos + 4], "big")
        pos += 4
        if pos + size > len(data):
            raise MalformedEvidence("length prefix runs past the end of the data")
        parts.append(data[pos : pos + size])
        pos += size
    if count is not None and len(parts) != count:
        raise MalformedEvidence(f"expected {count} fields, got {len(parts)}")
    return parts
