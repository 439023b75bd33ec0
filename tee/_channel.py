"""Framed messages on the pipe between a host and its enclave process (internal).

A frame is an 8-byte big-endian length, then `encode(header, *blobs)`: a JSON object of plain
fields (strings, numbers) followed by raw byte blobs. Nothing is pickled, so the enclave never
deserializes host-chosen objects, and vice versa.
"""

from __future__ import annotations

import json
import os
import select
import time
from typing import Any

from tee._encoding import decode, encode
from tee.errors import EnclaveError

__all__ = ["read_frame", "write_frame"]

MAX_FRAME_BYTES = 4 << 30  # 4 GiB: large enough for the models we load, small enough to refuse junk


def write_frame(fd: int, header: dict[str, Any], *blobs: bytes) -> None:
    """Write one frame to a file descriptor (blocking)."""
    payload = encode(json.dumps(header).encode(), *blobs)
    view = memoryview(len(payload).to_bytes(8, "big") + payload)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _read_exact(fd: int, size: int, deadline: float | None) -> bytes:
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise EnclaveError("enclave process did not answer in time")
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            raise EnclaveError("enclave pipe closed (the process exited)")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int, *, timeout_s: float | None = None) -> tuple[dict[str, Any], list[bytes]]:
    """Read one frame; raises EnclaveError on EOF, timeout, or an oversized/garbled frame."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    size = int.from_bytes(_read_exact(fd, 8, deadline), "big")
    if size > MAX_FRAME_BYTES:
        raise EnclaveError(f"frame of {size} bytes exceeds the {MAX_FRAME_BYTES} byte limit")
    parts = decode(_read_exact(fd, size, deadline))
    if not parts:
        raise EnclaveError("empty frame")
    header = json.loads(parts[0])
    if not isinstance(header, dict):
        raise EnclaveError("frame header is not a JSON object")
    return header, parts[1:]
