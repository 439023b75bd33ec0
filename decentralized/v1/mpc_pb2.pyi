from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

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
