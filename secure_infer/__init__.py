"""secure-infer: private and verifiable inference on a decentralized mesh of nodes.

The safe-defaults layer: `Client` (the SDK), its result types, and the mesh PKI helpers.
"""

from __future__ import annotations

__version__ = "0.1.0"

from decentralized.mpc_client import MPCOptions
from secure_infer.certs import TLSMaterial
from secure_infer.client import Client
from secure_infer.errors import (
    CertError,
    ConfigError,
    Draining,
    GarbageOutput,
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
from secure_infer.he_client import HEClassifyResult as ClassifyResult
from secure_infer.results import (
    EmbedResult,
    Failover,
    GenerateResult,
    HopRecord,
    MPCParty,
    MPCReport,
    Privacy,
    TokenEvent,
)

__all__ = [
    "CertError",
    "ClassifyResult",
    "Client",
    "ConfigError",
    "Draining",
    "EmbedResult",
    "Failover",
    "GarbageOutput",
    "GenerateResult",
    "HopRecord",
    "InvalidRequest",
    "MPCOptions",
    "MPCParty",
    "MPCReport",
    "MeshError",
    "NoRoute",
    "NotANode",
    "Overloaded",
    "PeerMisbehaved",
    "PeerUnavailable",
    "Privacy",
    "SessionAborted",
    "SessionMismatch",
    "TLSMaterial",
    "TokenEvent",
    "UnknownModel",
    "__version__",
]
