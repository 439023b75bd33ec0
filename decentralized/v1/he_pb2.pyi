from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListHeadsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HeadInfo(_message.Message):
    __slots__ = ("name", "input_kind", "input_dim", "labels", "layers", "depth", "strategies", "digest", "packed_min_batch")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INPUT_KIND_FIELD_NUMBER: _ClassVar[int]
    INPUT_DIM_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    STRATEGIES_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    PACKED_MIN_BATCH_FIELD_NUMBER: _ClassVar[int]
    name: str
    input_kind: str
    input_dim: int
    labels: _containers.RepeatedScalarFieldContainer[str]
    layers: _containers.RepeatedScalarFieldContainer[str]
    depth: int
    strategies: _containers.RepeatedScalarFieldContainer[str]
    digest: str
    packed_min_batch: int
    def __init__(self, name: _Optional[str] = ..., input_kind: _Optional[str] = ..., input_dim: _Optional[int] = ..., labels: _Optional[_Iterable[str]] = ..., layers: _Optional[_Iterable[str]] = ..., depth: _Optional[int] = ..., strategies: _Optional[_Iterable[str]] = ..., digest: _Optional[str] = ..., packed_min_batch: _Optional[int] = ...) -> None: ...

class ListHeadsReply(_message.Message):
    __slots__ = ("heads", "params_name", "params_description", "max_context_bytes", "max_inputs_per_call", "session_idle_s", "layouts", "max_batch_examples", "max_batch_bytes")
    HEADS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMS_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_INPUTS_PER_CALL_FIELD_NUMBER: _ClassVar[int]
    SESSION_IDLE_S_FIELD_NUMBER: _ClassVar[int]
    LAYOUTS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_BYTES_FIELD_NUMBER: _ClassVar[int]
    heads: _containers.RepeatedCompositeFieldContainer[HeadInfo]
    params_name: str
    params_description: str
    max_context_bytes: int
    max_inputs_per_call: int
    session_idle_s: float
    layouts: _containers.RepeatedScalarFieldContainer[str]
    max_batch_examples: int
    max_batch_bytes: int
    def __init__(self, heads: _Optional[_Iterable[_Union[HeadInfo, _Mapping]]] = ..., params_name: _Optional[str] = ..., params_description: _Optional[str] = ..., max_context_bytes: _Optional[int] = ..., max_inputs_per_call: _Optional[int] = ..., session_idle_s: _Optional[float] = ..., layouts: _Optional[_Iterable[str]] = ..., max_batch_examples: _Optional[int] = ..., max_batch_bytes: _Optional[int] = ...) -> None: ...

class ContextChunk(_message.Message):
    __slots__ = ("params_name", "total_bytes", "data")
    PARAMS_NAME_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    params_name: str
    total_bytes: int
    data: bytes
    def __init__(self, params_name: _Optional[str] = ..., total_bytes: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class OpenSessionReply(_message.Message):
    __slots__ = ("session_id", "idle_expiry_s", "context_bytes")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    IDLE_EXPIRY_S_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_BYTES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    idle_expiry_s: float
    context_bytes: int
    def __init__(self, session_id: _Optional[str] = ..., idle_expiry_s: _Optional[float] = ..., context_bytes: _Optional[int] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("session_id", "head", "inputs")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    head: str
    inputs: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, session_id: _Optional[str] = ..., head: _Optional[str] = ..., inputs: _Optional[_Iterable[bytes]] = ...) -> None: ...

class EncryptedOutput(_message.Message):
    __slots__ = ("ciphertexts",)
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    ciphertexts: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, ciphertexts: _Optional[_Iterable[bytes]] = ...) -> None: ...

class EvaluateReply(_message.Message):
    __slots__ = ("outputs", "compute_s", "node_id", "head_digest")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HEAD_DIGEST_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[EncryptedOutput]
    compute_s: float
    node_id: str
    head_digest: str
    def __init__(self, outputs: _Optional[_Iterable[_Union[EncryptedOutput, _Mapping]]] = ..., compute_s: _Optional[float] = ..., node_id: _Optional[str] = ..., head_digest: _Optional[str] = ...) -> None: ...

class PackedHeader(_message.Message):
    __slots__ = ("session_id", "head", "layout", "batch_size", "n_ciphertexts", "total_bytes")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    N_CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    head: str
    layout: str
    batch_size: int
    n_ciphertexts: int
    total_bytes: int
    def __init__(self, session_id: _Optional[str] = ..., head: _Optional[str] = ..., layout: _Optional[str] = ..., batch_size: _Optional[int] = ..., n_ciphertexts: _Optional[int] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class PackedChunk(_message.Message):
    __slots__ = ("header", "ciphertexts")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    header: PackedHeader
    ciphertexts: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, header: _Optional[_Union[PackedHeader, _Mapping]] = ..., ciphertexts: _Optional[_Iterable[bytes]] = ...) -> None: ...

class PackedReply(_message.Message):
    __slots__ = ("layout", "batch_size", "outputs", "compute_s", "node_id", "head_digest")
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HEAD_DIGEST_FIELD_NUMBER: _ClassVar[int]
    layout: str
    batch_size: int
    outputs: _containers.RepeatedScalarFieldContainer[bytes]
    compute_s: float
    node_id: str
    head_digest: str
    def __init__(self, layout: _Optional[str] = ..., batch_size: _Optional[int] = ..., outputs: _Optional[_Iterable[bytes]] = ..., compute_s: _Optional[float] = ..., node_id: _Optional[str] = ..., head_digest: _Optional[str] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionReply(_message.Message):
    __slots__ = ("existed",)
    EXISTED_FIELD_NUMBER: _ClassVar[int]
    existed: bool
    def __init__(self, existed: _Optional[bool] = ...) -> None: ...
