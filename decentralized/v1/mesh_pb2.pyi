from decentralized.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("record", "uptime_s", "peers", "requests_total", "errors_total", "sessions", "draining")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ERRORS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    record: _common_pb2.SignedNodeRecord
    uptime_s: float
    peers: int
    requests_total: int
    errors_total: int
    sessions: int
    draining: bool
    def __init__(self, record: _Optional[_Union[_common_pb2.SignedNodeRecord, _Mapping]] = ..., uptime_s: _Optional[float] = ..., peers: _Optional[int] = ..., requests_total: _Optional[int] = ..., errors_total: _Optional[int] = ..., sessions: _Optional[int] = ..., draining: _Optional[bool] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("record",)
    RECORD_FIELD_NUMBER: _ClassVar[int]
    record: _common_pb2.SignedNodeRecord
    def __init__(self, record: _Optional[_Union[_common_pb2.SignedNodeRecord, _Mapping]] = ...) -> None: ...

class ListPeersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PeerList(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[_common_pb2.SignedNodeRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[_common_pb2.SignedNodeRecord, _Mapping]]] = ...) -> None: ...
