"""secure-infer: private and verifiable inference on a decentralized mesh of nodes.

The safe-defaults layer: `Client` (the SDK), its result types, and the mesh PKI helpers.
"""

from __future__ import annotations

__version__ = "0.1.0"

from secure_infer.certs import TLSMaterial
from secure_infer.client import Client
from secure_infer.errors import (
    CertError,
    ConfigError,
    Draining,
    InvalidRequest,
    MeshError,
    NoRoute,
    NotANode,
    Overloaded,
    PeerMisbehaved,
    PeerUnavailable,
    SessionMismatch,
    UnknownModel,
)
from secure_infer.results import (
    EmbedResult,
    Failover,
    GenerateResult,
    HopRecord,
    Privacy,
    TokenEvent,
)

__all__ = [
    "CertError",
    "Client",
    "ConfigError",
    "Draining",
    "EmbedResult",
    "Failover",
    "GenerateResult",
    "HopRecord",
    "InvalidRequest",
    "MeshError",
    "NoRoute",
    "NotANode",
    "Overloaded",
    "PeerMisbehaved",
    "PeerUnavailable",
    "Privacy",
    "SessionMismatch",
    "TLSMaterial",
    "TokenEvent",
    "UnknownModel",
    "__version__",
]
