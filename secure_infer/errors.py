"""Every exception the SDK and CLI raise, in one tree (gRPC status in parentheses)::

Exception
├── MeshError                 decentralized.errors
│   ├── InvalidRequest        bad tensor, shape, dtype, field      (INVALID_ARGUMENT)
│   ├── UnknownModel          model or span not served             (NOT_FOUND)
│   ├── SessionMismatch       KV-cache session lost or out of step (FAILED_PRECONDITION)
│   ├── Overloaded            node at capacity                     (RESOURCE_EXHAUSTED)
│   ├── Draining              node shutting down                   (UNAVAILABLE)
│   ├── NotANode              record not sent by that node         (PERMISSION_DENIED)
│   ├── PeerUnavailable       node died, stalled, or refused       (UNAVAILABLE, DEADLINE)
│   ├── PeerMisbehaved        invalid answer or record             (DATA_LOSS)
│   ├── SessionAborted        an MPC party died, stalled or lied   (ABORTED)
│   └── NoRoute               no live nodes cover the layers
├── GarbageOutput             mpc.errors: an MPC output out of the model's range
├── CertError                 mesh PKI files missing or invalid
└── ConfigError (ValueError)  invalid node configuration
"""

from __future__ import annotations

from decentralized.errors import (
    Draining,
    InvalidRequest,
    MeshError,
    NoRoute,
    NotANode,
    Overloaded,
    PeerMisbehaved,
    PeerUnavailable,
    SessionAborted,
    SessionMismatch,
    UnknownModel,
)
from mpc.errors import GarbageOutput
from secure_infer.certs import CertError
from secure_infer.config import ConfigError

__all__ = [
    "CertError",
    "ConfigError",
    "Draining",
    "GarbageOutput",
    "InvalidRequest",
    "MeshError",
    "NoRoute",
    "NotANode",
    "Overloaded",
    "PeerMisbehaved",
    "PeerUnavailable",
    "SessionAborted",
    "SessionMismatch",
    "UnknownModel",
]
