"""secure-infer: private and verifiable inference on a decentralized mesh of nodes.

The safe-defaults layer: `Client` (the SDK), its result types, and the mesh PKI helpers.
"""

from __future__ import annotations

__version__ = "0.1.0"

from decentralized.consensus import ConsensusOptions
from decentralized.mpc_client import MPCOptions
from secure_infer.certs import TLSMaterial
from secure_infer.client import Client
from secure_infer.errors import (
    AttestationError,
    CertError,
    ConfigError,
    Draining,
    GarbageOutput,
    InvalidManifest,
    InvalidRequest,
    InvalidVerdict,
    MeshError,
    NoConsensus,
    NoRoute,
    NotANode,
    Overloaded,
    PeerMisbehaved,
    PeerUnavailable,
    SessionAborted,
    SessionMismatch,
    UnknownModel,
)
from secure_infer.fides_client import FidesOptions, GuestPins
from secure_infer.he_client import HEClassifyResult as ClassifyResult
from secure_infer.results import (
    ClassificationResult,
    ConsensusReport,
    ConsensusSpan,
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
    "ConsensusOptions",
    "ConsensusReport",
    "ConsensusSpan",
    "Draining",
    "EmbedResult",
    "Failover",
    "FidesCheck",
    "FidesOptions",
    "GarbageOutput",
    "GenerateResult",
    "GuestPins",
    "HopRecord",
    "InvalidManifest",
    "InvalidRequest",
    "InvalidVerdict",
    "MPCClassificationResult",
    "MPCOptions",
    "MPCParty",
    "MPCReport",
    "MeshError",
    "NoConsensus",
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
