from __future__ import annotations

import pytest
import torch

from decentralized import _wire
from decentralized.errors import InvalidRequest
from decentralized.v1 import common_pb2


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.bool]
)
def test_round_trip_every_dtype(dtype: torch.dtype) -> None:
    t = (torch.randn(2, 3, 5) * 10).to(dtype)
    back = _wire.tensor_from_proto(_wire.tensor_to_proto(t))
    assert back.dtype == dtype
    assert torch.equal(back, t)


def test_round_trip_non_contiguous_and_empty() -> None:
    t = torch.randn(4, 6).t()
    assert torch.equal(_wire.tensor_from_proto(_wire.tensor_to_proto(t)), t)
    e = torch.empty(0, 3)
    assert _wire.tensor_from_proto(_wire.tensor_to_proto(e)).shape == (0, 3)


def test_raw_little_endian_bytes_not_pickle() -> None:
    msg = _wire.tensor_to_proto(torch.tensor([1.0, 2.0], dtype=torch.float32))
    assert msg.data == b"\x00\x00\x80?\x00\x00\x00@"
    assert msg.dtype == "float32"
    assert list(msg.shape) == [2]


def test_truncated_data_is_rejected() -> None:
    msg = _wire.tensor_to_proto(torch.randn(2, 3))
    msg.data = msg.data[:-1]
    with pytest.raises(InvalidRequest, match="need 24 bytes, got 23"):
        _wire.tensor_from_proto(msg)


def test_oversized_data_is_rejected() -> None:
    msg = _wire.tensor_to_proto(torch.randn(2, 3))
    msg.data += b"\0" * 4
    with pytest.raises(InvalidRequest, match="truncated or oversized"):
        _wire.tensor_from_proto(msg)


def test_unknown_dtype_and_bad_shapes() -> None:
    with pytest.raises(InvalidRequest, match="unknown dtype 'complex64'"):
        _wire.tensor_from_proto(common_pb2.Tensor(data=b"", dtype="complex64", shape=[0]))
    with pytest.raises(InvalidRequest, match="invalid shape"):
        _wire.tensor_from_proto(common_pb2.Tensor(data=b"", dtype="float32", shape=[-1, 2]))
    with pytest.raises(InvalidRequest, match="invalid shape"):
        _wire.tensor_from_proto(common_pb2.Tensor(data=b"", dtype="float32", shape=[1] * 9))
    with pytest.raises(InvalidRequest, match="exceeds"):
        _wire.tensor_from_proto(common_pb2.Tensor(data=b"", dtype="float32", shape=[1 << 30]))


def test_check_hidden() -> None:
    _wire.check_hidden(torch.zeros(1, 2, 8), 8)
    with pytest.raises(InvalidRequest, match=r"expected shape \(batch, tokens, 8\)"):
        _wire.check_hidden(torch.zeros(1, 2, 7), 8)
    with pytest.raises(InvalidRequest, match="float dtype"):
        _wire.check_hidden(torch.zeros(1, 2, 8, dtype=torch.int64), 8)
    with pytest.raises(InvalidRequest, match="NaN"):
        _wire.check_hidden(torch.full((1, 2, 8), float("nan")), 8)
    with pytest.raises(InvalidRequest, match="expected shape"):
        _wire.check_hidden(torch.zeros(0, 2, 8), 8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_check_hidden_finds_one_non_finite_value_in_every_float_dtype(
    dtype: torch.dtype, bad: float
) -> None:
    """The check runs in numpy (bfloat16 by its exponent bits): one bad value anywhere in a
    tensor above torch's parallel grain is found, and large finite values pass."""
    hidden = torch.randn(2, 64, 384).to(dtype)  # 49,152 elements
    hidden[0, 0, 0] = 60000.0 if dtype == torch.float16 else 3.0e38
    _wire.check_hidden(hidden, 384)
    hidden[1, 63, 383] = bad
    with pytest.raises(InvalidRequest, match="NaN or infinite"):
        _wire.check_hidden(hidden, 384)
    hidden[1, 63, 383] = 0.0
    hidden[0, 5, 6] = bad  # an even index: inside the view below
    with pytest.raises(InvalidRequest, match="NaN or infinite"):
        _wire.check_hidden(hidden[:, :, ::2], 192)  # a strided view too


def test_check_hidden_takes_a_clients_tensor_that_requires_grad() -> None:
    """The client checks its own input too (an embedding computed outside inference mode)."""
    hidden = torch.zeros(1, 2, 8, requires_grad=True)
    _wire.check_hidden(hidden, 8)
    with pytest.raises(InvalidRequest, match="NaN"):
        _wire.check_hidden(hidden * float("nan"), 8)


def test_check_mask() -> None:
    hidden = torch.zeros(2, 3, 4)
    _wire.check_mask(torch.tensor([[1, 1, 0], [1, 0, 0]]), hidden)
    with pytest.raises(InvalidRequest, match="expected shape"):
        _wire.check_mask(torch.ones(2, 4, dtype=torch.int64), hidden)
    with pytest.raises(InvalidRequest, match="0 or 1"):
        _wire.check_mask(torch.tensor([[1, 2, 0], [1, 0, 0]]), hidden)
    with pytest.raises(InvalidRequest, match="at least one"):
        _wire.check_mask(torch.tensor([[1, 1, 0], [0, 0, 0]]), hidden)
    with pytest.raises(InvalidRequest, match="integer dtype"):
        _wire.check_mask(torch.ones(2, 3), hidden)


@pytest.mark.parametrize(
    "shape",
    [
        [2**62, 2**62, 0],  # zero elements, but torch's size arithmetic overflows
        [2**63 - 1, 0],
        [0, 2**40, 2**40, 2**40],  # torch's stride arithmetic overflows
        [0, 1 << 24],  # a zero-element tensor still bounded: each dimension is capped
        [0, 1 << 12, 1 << 12],  # ... and so is the product with zeros counted as 1
    ],
)
def test_zero_element_shapes_with_huge_dims_are_invalid(shape: list[int]) -> None:
    for decode in (_wire.tensor_from_proto, lambda m: _wire.tensor_header_nbytes(m, "tensor")):
        with pytest.raises(InvalidRequest, match="exceeds the 62914560-byte limit"):
            decode(common_pb2.Tensor(data=b"", dtype="float32", shape=shape))


def test_zero_element_shapes_within_limits_still_decode() -> None:
    elements = _wire.MAX_TENSOR_BYTES // 4
    for shape in ([1, 0, 384], [0, elements], [0] * _wire.MAX_DIMS):
        msg = common_pb2.Tensor(data=b"", dtype="float32", shape=shape)
        assert tuple(_wire.tensor_from_proto(msg).shape) == tuple(shape)
    with pytest.raises(InvalidRequest, match="exceeds"):
        _wire.tensor_from_proto(
            common_pb2.Tensor(data=b"", dtype="float32", shape=[0, elements + 1])
        )
    # The cap follows the dtype: one-byte bools may have four times as many elements.
    msg = common_pb2.Tensor(data=b"", dtype="bool", shape=[0, 4 * elements])
    assert tuple(_wire.tensor_from_proto(msg).shape) == (0, 4 * elements)


def test_a_torch_failure_while_decoding_is_invalid_request(monkeypatch: pytest.MonkeyPatch) -> None:
    # Whatever torch refuses to build from the wire is the sender's fault, never a RuntimeError
    # that escapes a client's fail-over or becomes INTERNAL on a node.
    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Storage size calculation overflowed")

    monkeypatch.setattr(torch, "empty", refuse)
    with pytest.raises(InvalidRequest, match="cannot build a float32 tensor"):
        _wire.tensor_from_proto(common_pb2.Tensor(data=b"", dtype="float32", shape=[1, 0, 384]))
