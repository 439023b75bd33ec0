"""secure-infer: private and verifiable inference on a decentralized mesh of nodes.

The safe-defaults layer: `Client` (the SDK), its result types, and the mesh PKI helpers.
"""

from __future__ import annotations

__version__ = "0.1.0"

from decentralized.mpc_client import MPCOptions
from secure_infer.certs import TLSMaterial
from secure_infer.client import Client
from secure_infer.errors import (
    AttestationError,
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
from secure_infer.fides_client import FidesOptions
from secure_infer.he_client import HEClassifyResult as ClassifyResult
from secure_infer.results import (
    ClassificationResult,
    EmbedResult,
    Failover,
    FidesCheck,
    GenerateResult,
    HopRecord,
    MPCClassificationResult,
    MPCParty,
    MPCReport,
    Privacy,
    QuoteSummary,
    TokenEvent,
)

__all__ = [
    "AttestationError",
    "CertError",
    "ClassificationResult",
    "ClassifyResult",
    "Client",
    "ConfigError",
    "Draining",
    "EmbedResult",
    "Failover",
    "FidesCheck",
    "FidesOptions",
    "GarbageOutput",
    "GenerateResult",
    "HopRecord",
    "InvalidRequest",
    "MPCClassificationResult",
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
    "QuoteSummary",
    "SessionAborted",
    "SessionMismatch",
    "TLSMaterial",
    "TokenEvent",
    "UnknownModel",
    "__version__",
]
