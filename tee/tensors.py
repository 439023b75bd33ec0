"""Tensors across the enclave boundary as safetensors bytes (no pickle).

Enclave handlers take and return bytes; these helpers turn a ``dict[str, torch.Tensor]`` into
safetensors bytes and back, so torch models (e.g. Fides verification models) can run inside an
enclave without pickling anything. Importing this module imports torch.
"""

from __future__ import annotations

import torch
from safetensors.torch import load, save

__all__ = ["decode_tensors", "encode_tensors"]


def encode_tensors(tensors: dict[str, torch.Tensor]) -> bytes:
    """Serialize named tensors (contiguous CPU copies are made as needed)."""
    return save({name: t.detach().cpu().contiguous() for name, t in tensors.items()})


def decode_tensors(data: bytes) -> dict[str, torch.Tensor]:
    """Parse safetensors bytes; raises safetensors' error on malformed input."""
    return load(data)
