"""Every exception the SDK and CLI raise, in one tree (gRPC status in parentheses)::

Exception
├── MeshError                 decentralized.errors
│   ├── InvalidRequest        bad tensor, shape, dtype, field      (INVALID_ARGUMENT)
│   ├── UnknownModel          model or span not served             (NOT_FOUND)
│   ├── SessionMismatch       KV-cache session lost or out of step (FAILED_PRECONDITION)
│   ├── Overloaded            node at capacity                     (RESOURCE_EXHAUSTED)
│   ├── Draining              node shutting down                   (UNAVAILABLE)
│   ├── NotPermitted          caller's certificate may not do this (PERMISSION_DENIED)
│   │   └── NotANode          record not sent by that node
│   ├── AlreadyProvisioned    sealed verifier slot already loaded  (FAILED_PRECONDITION)
│   ├── PeerUnavailable       node died, stalled, or refused       (UNAVAILABLE, DEADLINE)
│   ├── PeerMisbehaved        invalid answer or record             (DATA_LOSS)
│   ├── SessionAborted        an MPC party died, stalled or lied   (ABORTED)
│   ├── EnclaveFailed         a node's enclave failed              (INTERNAL)
│   └── NoRoute               no live nodes cover the layers
├── TEEError                  tee.errors (raised with their own type, client side)
│   └── AttestationError      quote not accepted                   (PERMISSION_DENIED)
│       ├── MalformedEvidence, BadSignature, BadChain, BindingMismatch
│       ├── PolicyViolation: SimulatedNotAllowed, MeasurementNotAllowed, ...
│       └── FreshnessError: NonceMismatch, ReplayedNonce, StaleNonce, QuoteTooOld
├── ConsensusError            verification.consensus (raised with their own type)
│   ├── NoConsensus           replicas disagree, no majority left  (ABORTED)
│   ├── InvalidManifest       manifest malformed or badly signed   (FAILED_PRECONDITION)
│   ├── InvalidVerdict        a verdict or its evidence is false
│   └── BadReceipt            a node's forward receipt is false
├── GarbageOutput             mpc.errors: an MPC output out of the model's range
├── CertError                 mesh PKI files missing or invalid
└── ConfigError (ValueError)  invalid node configuration

`status_code(exc)` gives the gRPC status any of them corresponds to (`decentralized.errors`).
"""

from __future__ import annotations

from decentralized.errors import (
    AlreadyProvisioned,
    Draining,
    EnclaveFailed,
    InvalidRequest,
    MeshError,
    NoRoute,
    NotANode,
    NotPermitted,
    Overloaded,
    PeerMisbehaved,
    PeerUnavailable,
    SessionAborted,
    SessionMismatch,
    UnknownModel,
    status_code,
)
from mpc.errors import GarbageOutput
from secure_infer.certs import CertError
from secure_infer.config import ConfigError
from tee.errors import (
    AttestationError,
    BadChain,
    BadSignature,
    BindingMismatch,
    FreshnessError,
    MalformedEvidence,
    MeasurementNotAllowed,
    NonceMismatch,
    PolicyViolation,
    QuoteTooOld,
    ReplayedNonce,
    SimulatedNotAllowed,
    StaleNonce,
    TEEError,
)
from verification.consensus import (
    BadReceipt,
    ConsensusError,
    InvalidManifest,
    InvalidVerdict,
    NoConsensus,
)

__all__ = [
    "AlreadyProvisioned",
    "AttestationError",
    "BadChain",
    "BadReceipt",
    "BadSignature",
    "BindingMismatch",
    "CertError",
    "ConfigError",
    "ConsensusError",
    "Draining",
    "EnclaveFailed",
    "FreshnessError",
    "GarbageOutput",
    "InvalidManifest",
    "InvalidRequest",
    "InvalidVerdict",
    "MalformedEvidence",
    "MeasurementNotAllowed",
    "MeshError",
    "NoConsensus",
    "NoRoute",
    "NonceMismatch",
    "NotANode",
    "NotPermitted",
    "Overloaded",
    "PeerMisbehaved",
    "PeerUnavailable",
    "PolicyViolation",
    "QuoteTooOld",
    "ReplayedNonce",
    "SessionAborted",
    "SessionMismatch",
    "SimulatedNotAllowed",
    "StaleNonce",
    "TEEError",
    "UnknownModel",
    "status_code",
]
