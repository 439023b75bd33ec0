"""Trusted execution: enclaves, quotes and attestation verification (hazmat layer).

Backends: `SimulatedEnclave` (INSECURE, its own process, a local software platform key: for
development and tests) and `ConfigfsTsmEnclave` (AMD SEV-SNP / Intel TDX guests through Linux
configfs-tsm); quotes bind the nonce, the code+model measurement and the input and output
digests. Attested sessions (`tee.session`) amortize one quote over many results (HMAC per
result under a key the quote binds). Sealed provisioning (`tee.provisioning`) loads a model the
host must not read: its owner encrypts it to a key the attested enclave offers. Verifiers:
`verify_quote` for enclave quotes, and the platform verifiers `verify_snp_report` and
`verify_tdx_quote` against pinned AMD and Intel roots. Errors are rooted at `TEEError` (tree in
`tee.errors`). This package never imports gRPC or the other bottom packages (`mpc`,
`verification`). See docs/attestation.md for the threat model.
"""

from __future__ import annotations

from tee.configfs_tsm import TsmReport, get_report, tsm_available
from tee.enclave import ConfigfsTsmEnclave, Enclave, SimulatedEnclave
from tee.enrolment import Enrolment, sign_identity
from tee.errors import (
    AttestationError,
    BadChain,
    BadSignature,
    BindingMismatch,
    ClientNotEnrolled,
    DebugNotAllowed,
    EnclaveError,
    Expired,
    FreshnessError,
    MalformedEvidence,
    MeasurementNotAllowed,
    NonceMismatch,
    PolicyViolation,
    QuoteTooOld,
    ReplayedNonce,
    Revoked,
    SealedModelRejected,
    SimulatedNotAllowed,
    StaleNonce,
    TCBTooLow,
    TEEError,
    UnknownSession,
    UnsupportedPlatform,
)
from tee.measurement import CodeRef, code_digest, enclave_measurement, input_digest, model_digest
from tee.policy import NonceStore, Policy
from tee.provisioning import ProvisioningOffer, SealedModel, check_loaded, seal_model, verify_offer
from tee.quote import AttestedResult, Platform, Quote
from tee.session import AttestedSession, SessionKey, SessionOffer, SessionResult
from tee.simulated import SimulatedClaims, load_platform_key
from tee.snp import SnpClaims, SnpTrust, verify_snp_report
from tee.tcb import SnpTcb
from tee.tdx import TdxClaims, verify_tdx_quote
from tee.verifier import TrustAnchors, VerifiedQuote, verify_quote

__all__ = [
    "AttestationError",
    "AttestedResult",
    "AttestedSession",
    "BadChain",
    "BadSignature",
    "BindingMismatch",
    "ClientNotEnrolled",
    "CodeRef",
    "ConfigfsTsmEnclave",
    "DebugNotAllowed",
    "Enclave",
    "EnclaveError",
    "Enrolment",
    "Expired",
    "FreshnessError",
    "MalformedEvidence",
    "MeasurementNotAllowed",
    "NonceMismatch",
    "NonceStore",
    "Platform",
    "Policy",
    "PolicyViolation",
    "ProvisioningOffer",
    "Quote",
    "QuoteTooOld",
    "ReplayedNonce",
    "Revoked",
    "SealedModel",
    "SealedModelRejected",
    "SessionKey",
    "SessionOffer",
    "SessionResult",
    "SimulatedClaims",
    "SimulatedEnclave",
    "SimulatedNotAllowed",
    "SnpClaims",
    "SnpTcb",
    "SnpTrust",
    "StaleNonce",
    "TCBTooLow",
    "TEEError",
    "TdxClaims",
    "TrustAnchors",
    "TsmReport",
    "UnknownSession",
    "UnsupportedPlatform",
    "VerifiedQuote",
    "check_loaded",
    "code_digest",
    "enclave_measurement",
    "get_report",
    "input_digest",
    "load_platform_key",
    "model_digest",
    "seal_model",
    "sign_identity",
    "tsm_available",
    "verify_offer",
    "verify_quote",
    "verify_snp_report",
    "verify_tdx_quote",
]
