from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("data", "dtype", "shape")
    DATA_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, data: _Optional[bytes] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class Span(_message.Message):
    __slots__ = ("model", "start", "end", "weight_digest")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    model: str
    start: int
    end: int
    weight_digest: str
    def __init__(self, model: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., weight_digest: _Optional[str] = ...) -> None: ...

class NodeRecord(_message.Message):
    __slots__ = ("node_id", "public_key", "address", "name", "spans", "device", "load", "layers_per_s", "timestamp_ms", "version", "insecure_dev", "mpc_models", "max_tokens")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPANS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    LAYERS_PER_S_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INSECURE_DEV_FIELD_NUMBER: _ClassVar[int]
    MPC_MODELS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    public_key: bytes
    address: str
    name: str
    spans: _containers.RepeatedCompositeFieldContainer[Span]
    device: str
    load: int
    layers_per_s: float
    timestamp_ms: int
    version: str
    insecure_dev: bool
    mpc_models: _containers.RepeatedScalarFieldContainer[str]
    max_tokens: int
    def __init__(self, node_id: _Optional[str] = ..., public_key: _Optional[bytes] = ..., address: _Optional[str] = ..., name: _Optional[str] = ..., spans: _Optional[_Iterable[_Union[Span, _Mapping]]] = ..., device: _Optional[str] = ..., load: _Optional[int] = ..., layers_per_s: _Optional[float] = ..., timestamp_ms: _Optional[int] = ..., version: _Optional[str] = ..., insecure_dev: _Optional[bool] = ..., mpc_models: _Optional[_Iterable[str]] = ..., max_tokens: _Optional[int] = ...) -> None: ...

class SignedNodeRecord(_message.Message):
    __slots__ = ("record", "signature", "certificate", "key_binding")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    KEY_BINDING_FIELD_NUMBER: _ClassVar[int]
    record: bytes
    signature: bytes
    certificate: bytes
    key_binding: bytes
    def __init__(self, record: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., certificate: _Optional[bytes] = ..., key_binding: _Optional[bytes] = ...) -> None: ...
