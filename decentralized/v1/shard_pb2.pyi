from decentralized.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ForwardRequest(_message.Message):
    __slots__ = ("model", "start", "end", "hidden", "attention_mask", "session_id", "past_length", "total_bytes")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_MASK_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PAST_LENGTH_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    model: str
    start: int
    end: int
    hidden: _common_pb2.Tensor
    attention_mask: _common_pb2.Tensor
    session_id: str
    past_length: int
    total_bytes: int
    def __init__(self, model: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., hidden: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., attention_mask: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., session_id: _Optional[str] = ..., past_length: _Optional[int] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class ForwardReply(_message.Message):
    __slots__ = ("hidden", "compute_s", "node_id", "device", "input_digest", "output_digest", "signature")
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    INPUT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    hidden: _common_pb2.Tensor
    compute_s: float
    node_id: str
    device: str
    input_digest: bytes
    output_digest: bytes
    signature: bytes
    def __init__(self, hidden: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., compute_s: _Optional[float] = ..., node_id: _Optional[str] = ..., device: _Optional[str] = ..., input_digest: _Optional[bytes] = ..., output_digest: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class EndSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class EndSessionReply(_message.Message):
    __slots__ = ("existed",)
    EXISTED_FIELD_NUMBER: _ClassVar[int]
    existed: bool
    def __init__(self, existed: _Optional[bool] = ...) -> None: ...
