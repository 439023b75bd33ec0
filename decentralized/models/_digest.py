"""Weight digests: a SHA-256 commitment to exactly which weights a span runs.

A layer's digest covers its tensors; a span's digest is built from the digests of its layers
(`verification.consensus.span_digest`), so a model manifest of per-layer digests fixes the
expected digest of every span a node may serve.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch

from verification.consensus.digests import span_digest


def weight_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over (name, dtype, shape, raw bytes) of each tensor, in name order.

    Names are the ones in the model's published weight file, so a digest computed by a node
    for its span can be checked against one computed from the file by anybody.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(b"\0" + str(t.dtype).encode() + b"\0")
        h.update(",".join(str(d) for d in t.shape).encode() + b"\0")
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def layered_digest(
    tensors: Mapping[str, torch.Tensor], prefix: str, start: int, end: int
) -> tuple[str, list[str]]:
    """(span digest, per-layer digests) of layers [start, end), whose tensors are named
    `{prefix}{i}.*` in the model's weight file."""
    layers = []
    for i in range(start, end):
        p = f"{prefix}{i}."
        layers.append(weight_digest({k: v for k, v in tensors.items() if k.startswith(p)}))
    return span_digest(start, end, layers), layers
