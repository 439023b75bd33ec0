"""Conversions between protobuf messages and domain objects. The only place that knows both.

Everything that arrives from a peer is validated here before any other code sees it: dtype from
a fixed list, shape non-negative and bounded (each dimension, and the product of the dimensions
with zeros counted as 1), byte length equal to prod(shape) * itemsize. Any failure to build a
tensor is an InvalidRequest. No pickle anywhere: tensors are raw little-endian bytes.
"""

from __future__ import annotations

import math
import re
import sys

import numpy as np
import torch

from decentralized.errors import InvalidRequest
from decentralized.v1 import common_pb2
from verification.consensus.digests import tensor_digest

# Each wire dtype name -> (torch dtype, bytes per element).
_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "float32": (torch.float32, 4),
    "float16": (torch.float16, 2),
    "bfloat16": (torch.bfloat16, 2),
    "int64": (torch.int64, 8),
    "int32": (torch.int32, 4),
    "bool": (torch.bool, 1),
}
_NAMES = {dtype: name for name, (dtype, _) in _DTYPES.items()}
MAX_DIMS = 8  # no model here needs more
MAX_TENSOR_BYTES = (
    60 * 1024 * 1024
)  # per tensor: requests stream in chunks, replies fit one message
SESSION_ID_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("secure-infer's wire format assumes a little-endian host")


def tensor_to_proto(t: torch.Tensor) -> common_pb2.Tensor:
    """A torch tensor -> Tensor message (a copy of its bytes, C-contiguous)."""
    if t.dtype not in _NAMES:
        raise InvalidRequest(f"dtype {t.dtype} cannot travel; allowed: {', '.join(_DTYPES)}")
    t = t.detach().to("cpu").contiguous()
    data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return common_pb2.Tensor(data=data, dtype=_NAMES[t.dtype], shape=list(t.shape))


def tensor_header_nbytes(msg: common_pb2.Tensor, what: str) -> int:
    """Validate dtype and shape of a Tensor message; the byte length its data must have.

    Every dimension is capped before anything is multiplied, and so is the product of the
    dimensions with each 0 counted as 1: a zero-element shape such as [2**62, 2**62, 0] has
    product 0 but would overflow torch's size and stride arithmetic, so it is refused like an
    oversized one.
    """
    if msg.dtype not in _DTYPES:
        raise InvalidRequest(f"{what}: unknown dtype {msg.dtype!r}; allowed: {', '.join(_DTYPES)}")
    shape = list(msg.shape)
    if len(shape) > MAX_DIMS or any(d < 0 for d in shape):
        raise InvalidRequest(
            f"{what}: invalid shape {shape} (at most {MAX_DIMS} dimensions, each >= 0)"
        )
    itemsize = _DTYPES[msg.dtype][1]
    max_elements = MAX_TENSOR_BYTES // itemsize
    if any(d > max_elements for d in shape):
        raise InvalidRequest(
            f"{what}: shape {shape} exceeds the {MAX_TENSOR_BYTES}-byte limit "
            f"(a dimension above {max_elements} {msg.dtype} elements)"
        )
    extent = 1
    for d in shape:  # each factor <= max_elements, so this stays small
        extent *= max(d, 1)
        if extent > max_elements:
            raise InvalidRequest(
                f"{what}: shape {shape} exceeds the {MAX_TENSOR_BYTES}-byte limit "
                f"(more than {max_elements} {msg.dtype} elements, zero dimensions counted as 1)"
            )
    return math.prod(shape) * itemsize


def tensor_from_proto(msg: common_pb2.Tensor, what: str = "tensor") -> torch.Tensor:
    """A Tensor message -> torch tensor; raises InvalidRequest on any inconsistency.

    Every failure to build the tensor is an InvalidRequest, never a torch error: a server
    answers INVALID_ARGUMENT, and a client treats the peer that sent it as misbehaving.
    """
    nbytes = tensor_header_nbytes(msg, what)
    if len(msg.data) != nbytes:
        raise InvalidRequest(
            f"{what}: dtype {msg.dtype} and shape {list(msg.shape)} need {nbytes} bytes, "
            f"got {len(msg.data)} (truncated or oversized)"
        )
    dtype, _ = _DTYPES[msg.dtype]
    shape = tuple(msg.shape)
    try:
        if nbytes == 0:
            return torch.empty(shape, dtype=dtype)
        raw = torch.frombuffer(bytearray(msg.data), dtype=torch.uint8)
        return raw.view(dtype).reshape(shape)
    except (RuntimeError, ValueError, TypeError, OverflowError) as exc:
        raise InvalidRequest(
            f"{what}: cannot build a {msg.dtype} tensor of shape {list(shape)}: "
            f"{type(exc).__name__}"
        ) from None


def check_hidden(t: torch.Tensor, hidden_size: int, what: str = "hidden") -> None:
    """Hidden states must be float (B, T, hidden_size) with B, T >= 1 and finite values."""
    if t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise InvalidRequest(f"{what}: expected a float dtype, got {_NAMES.get(t.dtype)}")
    if t.dim() != 3 or t.shape[0] < 1 or t.shape[1] < 1 or t.shape[2] != hidden_size:
        raise InvalidRequest(
            f"{what}: expected shape (batch, tokens, {hidden_size}), got {list(t.shape)}"
        )
    if not all_finite(t):
        raise InvalidRequest(f"{what}: contains NaN or infinite values")


# The value checks below run on a node's event-loop thread before a job is queued, and on a
# client's RPC threads (consensus replicas), so they use numpy, not torch: a torch op on a
# large tensor there (above torch's 32,768-element grain) starts an OpenMP thread team of that
# thread beside the compute thread's, and on 2 cores the compute thread's decoder steps then
# took twice as long (bench/split.py, session 17).
def all_finite(t: torch.Tensor) -> bool:
    """Whether every value of a float tensor is finite (numpy on CPU tensors: see above)."""
    t = t.detach()
    if t.device.type != "cpu":  # a client's own tensor on an accelerator: no node loop here
        return bool(torch.isfinite(t).all())
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: exponent bits all ones = inf/nan
        exponent = t.view(torch.int16).numpy() & 0x7F80
        return not bool((exponent == 0x7F80).any())
    return bool(np.isfinite(t.numpy()).all())


def check_mask(mask: torch.Tensor, hidden: torch.Tensor) -> None:
    """An attention mask must be int64/int32/bool (B, T) of 0/1 matching the hidden states."""
    if mask.dtype not in (torch.int64, torch.int32, torch.bool):
        raise InvalidRequest(f"attention_mask: expected an integer dtype, got {mask.dtype}")
    if tuple(mask.shape) != tuple(hidden.shape[:2]):
        raise InvalidRequest(
            f"attention_mask: expected shape {list(hidden.shape[:2])}, got {list(mask.shape)}"
        )
    values = mask.detach().cpu().numpy().astype(np.int64)  # numpy: see `all_finite`
    if bool(((values != 0) & (values != 1)).any()):
        raise InvalidRequest("attention_mask: values must be 0 or 1")
    if bool((values.sum(axis=1) == 0).any()):
        raise InvalidRequest("attention_mask: every row needs at least one attended token")


def proto_digest(msg: common_pb2.Tensor, extra: bytes = b"") -> bytes:
    """SHA-256 of a Tensor message as it travelled (see verification.consensus.digests)."""
    return tensor_digest(msg.dtype, list(msg.shape), msg.data, extra=extra)


def forward_input_digest(
    hidden: common_pb2.Tensor, attention_mask: common_pb2.Tensor | None
) -> bytes:
    """The input digest of a forward receipt: the hidden states with the mask's digest folded in."""
    extra = proto_digest(attention_mask) if attention_mask is not None else b""
    return proto_digest(hidden, extra)
