"""Exceptions raised by the `tee` package, all rooted at `TEEError`.

    TEEError
    +-- EnclaveError                 the enclave process failed, or was used out of order
    |   +-- UnknownSession           no such session in the enclave (expired, or a restart)
    |   +-- SealedModelRejected      a sealed model does not open there, or one is loaded
    |   +-- ClientNotEnrolled        the enclave serves enrolled clients only (tee.enrolment)
    +-- UnsupportedPlatform          the backend is absent here (e.g. no configfs-tsm)
    +-- AttestationError             evidence was not accepted; never a bare False
        +-- MalformedEvidence        truncated, wrong version/size, unparseable (also ValueError)
        +-- BadSignature             the signature of a report, quote or QE report is wrong
        +-- BadChain                 a certificate/CRL is not signed by its issuer, the chain
        |                            does not end at the pinned root, or keys are not certified
        |   +-- Expired              a certificate or CRL is outside its validity at `now`
        |   +-- Revoked              a certificate's serial is on its issuer's CRL
        +-- PolicyViolation          authentic evidence that the policy refuses
        |   +-- DebugNotAllowed      the guest/TD can be debugged by the host
        |   +-- MeasurementNotAllowed
        |   +-- TCBTooLow            firmware/microcode SVNs below the policy's minimum
        |   +-- SimulatedNotAllowed  simulated evidence without an explicit opt-in
        +-- BindingMismatch          report data does not bind this nonce/measurement/result
        +-- FreshnessError
            +-- NonceMismatch        the quote answers another nonce than the expected one
            +-- ReplayedNonce        the nonce was already consumed
            +-- StaleNonce           the nonce was never issued here, or its lifetime ran out
            +-- QuoteTooOld          a timestamped (simulated) quote is older than max_age_s

Messages say what was expected and what arrived; they never carry keys, inputs or model bytes.
"""

from __future__ import annotations

__all__ = [
    "AttestationError",
    "BadChain",
    "BadSignature",
    "BindingMismatch",
    "ClientNotEnrolled",
    "DebugNotAllowed",
    "EnclaveError",
    "Expired",
    "FreshnessError",
    "MalformedEvidence",
    "MeasurementNotAllowed",
    "NonceMismatch",
    "PolicyViolation",
    "QuoteTooOld",
    "ReplayedNonce",
    "Revoked",
    "SealedModelRejected",
    "SimulatedNotAllowed",
    "StaleNonce",
    "TCBTooLow",
    "TEEError",
    "UnknownSession",
    "UnsupportedPlatform",
]


class TEEError(Exception):
    """Root of every error the `tee` package raises on purpose."""


class EnclaveError(TEEError):
    """The enclave process failed (crashed, raised, timed out) or was called out of order."""


class UnknownSession(EnclaveError):
    """The enclave holds no such session (dropped, expired, or the enclave restarted): re-open."""


class SealedModelRejected(EnclaveError):
    """A sealed model did not open in the enclave (altered, or sealed to another enclave's key),
    or the enclave already holds its model. An awaiting enclave stays ready for another try."""


class ClientNotEnrolled(EnclaveError):
    """The enclave's sealed enrolment does not admit this caller (`tee.enrolment`): no
    certificate, one from another CA or with a CN not enrolled, a bad signature, an
    unauthenticated request, or a per-request quote asked of an enrolled-only enclave."""


class UnsupportedPlatform(TEEError):
    """The requested backend is not available on this machine.

    Attributes:
        reason: A short machine-readable reason, e.g. ``"no-configfs-tsm"``.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class AttestationError(TEEError):
    """Evidence was not accepted. Every verifier raises a subclass; none returns False."""


class MalformedEvidence(AttestationError, ValueError):
    """The evidence cannot be parsed: wrong size, version, type or encoding."""


class BadSignature(AttestationError):
    """The signature over an SNP report, a TDX quote or a QE report does not verify."""


class BadChain(AttestationError):
    """A certificate chain is broken (bad signature, name, CA flag) or misses the pinned root."""


class Expired(BadChain):
    """A certificate or CRL is not valid at the verification time `now`."""


class Revoked(BadChain):
    """A certificate in the chain is listed on its issuer's CRL."""


class PolicyViolation(AttestationError):
    """Authentic evidence whose claims the verifier's `Policy` refuses."""


class DebugNotAllowed(PolicyViolation):
    """The guest policy or TD attributes allow host debugging (memory is not confidential)."""


class MeasurementNotAllowed(PolicyViolation):
    """The launch or code+model measurement is not in the policy's allow list."""


class TCBTooLow(PolicyViolation):
    """The reported TCB (SNP SPLs, TDX TEE_TCB_SVN) is below the policy's minimum."""


class SimulatedNotAllowed(PolicyViolation):
    """Simulated (insecure) evidence was presented without `allow_simulated=True`."""


class BindingMismatch(AttestationError):
    """The report data does not bind the expected nonce, code+model measurement or result."""


class FreshnessError(AttestationError):
    """The evidence is not fresh: wrong, replayed, unknown or too old nonce or quote."""


class NonceMismatch(FreshnessError):
    """The quote was made for another nonce than the one the verifier expects."""


class ReplayedNonce(FreshnessError):
    """The nonce was already consumed by an earlier successful verification."""


class StaleNonce(FreshnessError):
    """The nonce was never issued by this nonce store, or its lifetime has run out."""


class QuoteTooOld(FreshnessError):
    """A timestamped quote is older than the policy's `max_age_s` (or from the future)."""
