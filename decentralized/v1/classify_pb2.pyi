from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISTRIBUTION: _ClassVar[Phase]
    PREPARE: _ClassVar[Phase]
    JUDGE: _ClassVar[Phase]
DISTRIBUTION: Phase
PREPARE: Phase
JUDGE: Phase

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClassifierInfo(_message.Message):
    __slots__ = ("name", "input_kind", "input_shape", "labels", "arch", "digest")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INPUT_KIND_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    name: str
    input_kind: str
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    labels: _containers.RepeatedScalarFieldContainer[str]
    arch: str
    digest: str
    def __init__(self, name: _Optional[str] = ..., input_kind: _Optional[str] = ..., input_shape: _Optional[_Iterable[int]] = ..., labels: _Optional[_Iterable[str]] = ..., arch: _Optional[str] = ..., digest: _Optional[str] = ...) -> None: ...

class VerifierInfo(_message.Message):
    __slots__ = ("name", "task", "n_classes", "platform", "simulated", "measurement", "simulated_platform_key", "protocol", "sealed_owner", "enrolled_only")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    N_CLASSES_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    SIMULATED_FIELD_NUMBER: _ClassVar[int]
    MEASUREMENT_FIELD_NUMBER: _ClassVar[int]
    SIMULATED_PLATFORM_KEY_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    SEALED_OWNER_FIELD_NUMBER: _ClassVar[int]
    ENROLLED_ONLY_FIELD_NUMBER: _ClassVar[int]
    name: str
    task: str
    n_classes: int
    platform: str
    simulated: bool
    measurement: bytes
    simulated_platform_key: bytes
    protocol: str
    sealed_owner: str
    enrolled_only: bool
    def __init__(self, name: _Optional[str] = ..., task: _Optional[str] = ..., n_classes: _Optional[int] = ..., platform: _Optional[str] = ..., simulated: _Optional[bool] = ..., measurement: _Optional[bytes] = ..., simulated_platform_key: _Optional[bytes] = ..., protocol: _Optional[str] = ..., sealed_owner: _Optional[str] = ..., enrolled_only: _Optional[bool] = ...) -> None: ...

class VerifierSlotInfo(_message.Message):
    __slots__ = ("name", "owner", "platform", "simulated")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    SIMULATED_FIELD_NUMBER: _ClassVar[int]
    name: str
    owner: str
    platform: str
    simulated: bool
    def __init__(self, name: _Optional[str] = ..., owner: _Optional[str] = ..., platform: _Optional[str] = ..., simulated: _Optional[bool] = ...) -> None: ...

class ListModelsReply(_message.Message):
    __slots__ = ("classifiers", "verifiers", "max_inputs_per_call", "slots")
    CLASSIFIERS_FIELD_NUMBER: _ClassVar[int]
    VERIFIERS_FIELD_NUMBER: _ClassVar[int]
    MAX_INPUTS_PER_CALL_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    classifiers: _containers.RepeatedCompositeFieldContainer[ClassifierInfo]
    verifiers: _containers.RepeatedCompositeFieldContainer[VerifierInfo]
    max_inputs_per_call: int
    slots: _containers.RepeatedCompositeFieldContainer[VerifierSlotInfo]
    def __init__(self, classifiers: _Optional[_Iterable[_Union[ClassifierInfo, _Mapping]]] = ..., verifiers: _Optional[_Iterable[_Union[VerifierInfo, _Mapping]]] = ..., max_inputs_per_call: _Optional[int] = ..., slots: _Optional[_Iterable[_Union[VerifierSlotInfo, _Mapping]]] = ...) -> None: ...

class Inputs(_message.Message):
    __slots__ = ("texts", "images", "count")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    images: bytes
    count: int
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., images: _Optional[bytes] = ..., count: _Optional[int] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("model", "inputs")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: Inputs
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Union[Inputs, _Mapping]] = ...) -> None: ...

class ClassifyReply(_message.Message):
    __slots__ = ("probs", "n_classes", "compute_s", "node_id", "model_digest")
    PROBS_FIELD_NUMBER: _ClassVar[int]
    N_CLASSES_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    probs: bytes
    n_classes: int
    compute_s: float
    node_id: str
    model_digest: str
    def __init__(self, probs: _Optional[bytes] = ..., n_classes: _Optional[int] = ..., compute_s: _Optional[float] = ..., node_id: _Optional[str] = ..., model_digest: _Optional[str] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("verifier", "inputs", "nonce", "session_id", "seq", "phase", "sealed", "request_digest", "service_probs", "request_tag")
    VERIFIER_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    REQUEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SERVICE_PROBS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TAG_FIELD_NUMBER: _ClassVar[int]
    verifier: str
    inputs: Inputs
    nonce: bytes
    session_id: bytes
    seq: int
    phase: Phase
    sealed: bytes
    request_digest: bytes
    service_probs: bytes
    request_tag: bytes
    def __init__(self, verifier: _Optional[str] = ..., inputs: _Optional[_Union[Inputs, _Mapping]] = ..., nonce: _Optional[bytes] = ..., session_id: _Optional[bytes] = ..., seq: _Optional[int] = ..., phase: _Optional[_Union[Phase, str]] = ..., sealed: _Optional[bytes] = ..., request_digest: _Optional[bytes] = ..., service_probs: _Optional[bytes] = ..., request_tag: _Optional[bytes] = ...) -> None: ...

class VerifyReply(_message.Message):
    __slots__ = ("output", "quote_json", "compute_s", "node_id", "tag", "seq")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    QUOTE_JSON_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    output: bytes
    quote_json: str
    compute_s: float
    node_id: str
    tag: bytes
    seq: int
    def __init__(self, output: _Optional[bytes] = ..., quote_json: _Optional[str] = ..., compute_s: _Optional[float] = ..., node_id: _Optional[str] = ..., tag: _Optional[bytes] = ..., seq: _Optional[int] = ...) -> None: ...

class AttestedSessionRequest(_message.Message):
    __slots__ = ("verifier", "client_public", "nonce", "client_certificate", "identity_signature")
    VERIFIER_FIELD_NUMBER: _ClassVar[int]
    CLIENT_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    verifier: str
    client_public: bytes
    nonce: bytes
    client_certificate: bytes
    identity_signature: bytes
    def __init__(self, verifier: _Optional[str] = ..., client_public: _Optional[bytes] = ..., nonce: _Optional[bytes] = ..., client_certificate: _Optional[bytes] = ..., identity_signature: _Optional[bytes] = ...) -> None: ...

class AttestedSessionReply(_message.Message):
    __slots__ = ("offer", "quote_json", "node_id")
    OFFER_FIELD_NUMBER: _ClassVar[int]
    QUOTE_JSON_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    offer: bytes
    quote_json: str
    node_id: str
    def __init__(self, offer: _Optional[bytes] = ..., quote_json: _Optional[str] = ..., node_id: _Optional[str] = ...) -> None: ...

class ProvisioningOfferRequest(_message.Message):
    __slots__ = ("verifier", "nonce")
    VERIFIER_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    verifier: str
    nonce: bytes
    def __init__(self, verifier: _Optional[str] = ..., nonce: _Optional[bytes] = ...) -> None: ...

class ProvisioningOfferReply(_message.Message):
    __slots__ = ("offer", "quote_json", "entry", "simulated_platform_key", "node_id")
    OFFER_FIELD_NUMBER: _ClassVar[int]
    QUOTE_JSON_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    SIMULATED_PLATFORM_KEY_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    offer: bytes
    quote_json: str
    entry: str
    simulated_platform_key: bytes
    node_id: str
    def __init__(self, offer: _Optional[bytes] = ..., quote_json: _Optional[str] = ..., entry: _Optional[str] = ..., simulated_platform_key: _Optional[bytes] = ..., node_id: _Optional[str] = ...) -> None: ...

class ProvisionRequest(_message.Message):
    __slots__ = ("verifier", "owner_public", "sealed_model", "nonce", "task", "n_classes", "protocol")
    VERIFIER_FIELD_NUMBER: _ClassVar[int]
    OWNER_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    SEALED_MODEL_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    N_CLASSES_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    verifier: str
    owner_public: bytes
    sealed_model: bytes
    nonce: bytes
    task: str
    n_classes: int
    protocol: str
    def __init__(self, verifier: _Optional[str] = ..., owner_public: _Optional[bytes] = ..., sealed_model: _Optional[bytes] = ..., nonce: _Optional[bytes] = ..., task: _Optional[str] = ..., n_classes: _Optional[int] = ..., protocol: _Optional[str] = ...) -> None: ...

class ProvisionReply(_message.Message):
    __slots__ = ("output", "quote_json", "verifier", "node_id")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    QUOTE_JSON_FIELD_NUMBER: _ClassVar[int]
    VERIFIER_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    output: bytes
    quote_json: str
    verifier: VerifierInfo
    node_id: str
    def __init__(self, output: _Optional[bytes] = ..., quote_json: _Optional[str] = ..., verifier: _Optional[_Union[VerifierInfo, _Mapping]] = ..., node_id: _Optional[str] = ...) -> None: ...
