from decentralized.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DescribeRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ModelDescription(_message.Message):
    __slots__ = ("model", "kind", "image_shape", "patch_size", "input_shape", "num_classes", "architecture", "digest", "threat_models")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    PATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    THREAT_MODELS_FIELD_NUMBER: _ClassVar[int]
    model: str
    kind: str
    image_shape: _containers.RepeatedScalarFieldContainer[int]
    patch_size: int
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    num_classes: int
    architecture: _containers.RepeatedScalarFieldContainer[str]
    digest: str
    threat_models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., kind: _Optional[str] = ..., image_shape: _Optional[_Iterable[int]] = ..., patch_size: _Optional[int] = ..., input_shape: _Optional[_Iterable[int]] = ..., num_classes: _Optional[int] = ..., architecture: _Optional[_Iterable[str]] = ..., digest: _Optional[str] = ..., threat_models: _Optional[_Iterable[str]] = ...) -> None: ...

class OpenSession(_message.Message):
    __slots__ = ("session_id", "rank", "model", "threat_model", "attention_mask", "rank_names", "peer_timeout_s", "max_new_tokens", "input_shape")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    THREAT_MODEL_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_MASK_FIELD_NUMBER: _ClassVar[int]
    RANK_NAMES_FIELD_NUMBER: _ClassVar[int]
    PEER_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    rank: int
    model: str
    threat_model: str
    attention_mask: _common_pb2.Tensor
    rank_names: _containers.RepeatedScalarFieldContainer[str]
    peer_timeout_s: float
    max_new_tokens: int
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, session_id: _Optional[str] = ..., rank: _Optional[int] = ..., model: _Optional[str] = ..., threat_model: _Optional[str] = ..., attention_mask: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., rank_names: _Optional[_Iterable[str]] = ..., peer_timeout_s: _Optional[float] = ..., max_new_tokens: _Optional[int] = ..., input_shape: _Optional[_Iterable[int]] = ...) -> None: ...

class SessionOpened(_message.Message):
    __slots__ = ("relay_address",)
    RELAY_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    relay_address: str
    def __init__(self, relay_address: _Optional[str] = ...) -> None: ...

class RunChunk(_message.Message):
    __slots__ = ("session_id", "relay_addresses", "share")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RELAY_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    relay_addresses: _containers.RepeatedScalarFieldContainer[str]
    share: bytes
    def __init__(self, session_id: _Optional[str] = ..., relay_addresses: _Optional[_Iterable[str]] = ..., share: _Optional[bytes] = ...) -> None: ...

class RunResult(_message.Message):
    __slots__ = ("output_share", "output_bound", "bytes_sent", "bytes_received", "rounds", "seconds", "dealer_online_requests", "dealer_round_trips", "dealer_preprocessed")
    OUTPUT_SHARE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_BOUND_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    DEALER_ONLINE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    DEALER_ROUND_TRIPS_FIELD_NUMBER: _ClassVar[int]
    DEALER_PREPROCESSED_FIELD_NUMBER: _ClassVar[int]
    output_share: _common_pb2.Tensor
    output_bound: float
    bytes_sent: int
    bytes_received: int
    rounds: int
    seconds: float
    dealer_online_requests: int
    dealer_round_trips: int
    dealer_preprocessed: bool
    def __init__(self, output_share: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., output_bound: _Optional[float] = ..., bytes_sent: _Optional[int] = ..., bytes_received: _Optional[int] = ..., rounds: _Optional[int] = ..., seconds: _Optional[float] = ..., dealer_online_requests: _Optional[int] = ..., dealer_round_trips: _Optional[int] = ..., dealer_preprocessed: _Optional[bool] = ...) -> None: ...

class StepResult(_message.Message):
    __slots__ = ("step", "token_share", "logit_bound", "done", "bytes_sent", "bytes_received", "rounds", "seconds", "dealer_online_requests", "dealer_round_trips", "dealer_preprocessed")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOKEN_SHARE_FIELD_NUMBER: _ClassVar[int]
    LOGIT_BOUND_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    DEALER_ONLINE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    DEALER_ROUND_TRIPS_FIELD_NUMBER: _ClassVar[int]
    DEALER_PREPROCESSED_FIELD_NUMBER: _ClassVar[int]
    step: int
    token_share: _common_pb2.Tensor
    logit_bound: float
    done: bool
    bytes_sent: int
    bytes_received: int
    rounds: int
    seconds: float
    dealer_online_requests: int
    dealer_round_trips: int
    dealer_preprocessed: bool
    def __init__(self, step: _Optional[int] = ..., token_share: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., logit_bound: _Optional[float] = ..., done: _Optional[bool] = ..., bytes_sent: _Optional[int] = ..., bytes_received: _Optional[int] = ..., rounds: _Optional[int] = ..., seconds: _Optional[float] = ..., dealer_online_requests: _Optional[int] = ..., dealer_round_trips: _Optional[int] = ..., dealer_preprocessed: _Optional[bool] = ...) -> None: ...

class MPCMessage(_message.Message):
    __slots__ = ("session_id", "src", "dst", "tag", "payload", "seq", "more")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    src: int
    dst: int
    tag: str
    payload: bytes
    seq: int
    more: bool
    def __init__(self, session_id: _Optional[str] = ..., src: _Optional[int] = ..., dst: _Optional[int] = ..., tag: _Optional[str] = ..., payload: _Optional[bytes] = ..., seq: _Optional[int] = ..., more: _Optional[bool] = ...) -> None: ...

class DeliverReply(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    def __init__(self, accepted: _Optional[int] = ...) -> None: ...
