"""The SIMULATED platform: quotes signed by a software key. INSECURE, for development and tests.

Threat: none is resisted. The "platform key" is an ECDSA P-384 key generated in the enclave
        process on this host; anyone with access to the host (the operator included) can read
        it or run other code under it. A simulated quote shows only that the protocol works:
        nonce, code+model measurement and result digest are bound and signed end to end.
Format: evidence = encode(statement, DER signature), statement = encode(MAGIC, report_data,
        measurement, timestamp in ms (8 bytes big-endian), key id (SHA-256 of the SPKI DER)),
        signed with ECDSA P-384 / SHA-384. MAGIC spells out that the quote is insecure.
Verify: only with `Policy.allow_simulated=True` AND the platform key pinned by the caller (the
        key printed by the enclave that the client launched itself); every acceptance logs a
        warning and the returned claims say `simulated=True`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tee._encoding import decode, encode
from tee.errors import (
    BadChain,
    BadSignature,
    BindingMismatch,
    MalformedEvidence,
    QuoteTooOld,
    SimulatedNotAllowed,
)
from tee.policy import Policy

__all__ = [
    "SIMULATED_MAGIC",
    "SimulatedClaims",
    "SimulatedPlatform",
    "load_platform_key",
    "verify_simulated_evidence",
]

logger = logging.getLogger(__name__)

SIMULATED_MAGIC = b"SECURE-INFER SIMULATED QUOTE v1 -- INSECURE: NO HARDWARE ROOT OF TRUST"
_MAX_CLOCK_SKEW_S = 5.0  # a quote timestamp may be this far in the future


def _key_id(key: ec.EllipticCurvePublicKey) -> bytes:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()


def load_platform_key(pem: bytes) -> ec.EllipticCurvePublicKey:
    """Load a simulated platform's public key (PEM SubjectPublicKeyInfo, P-384)."""
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise MalformedEvidence("simulated platform key must be ECDSA P-384")
    return key


class SimulatedPlatform:
    """A software "platform" holding a fresh P-384 key; lives inside the enclave process."""

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP384R1())
        logger.warning(
            "SIMULATED TEE platform key generated: quotes it signs are INSECURE (no hardware)"
        )

    def public_key_pem(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def quote(self, report_data: bytes, measurement: bytes) -> bytes:
        """Sign a statement over the 64-byte report data and the measurement, timestamped now."""
        timestamp_ms = int(time.time() * 1000).to_bytes(8, "big")
        statement = encode(
            SIMULATED_MAGIC, report_data, measurement, timestamp_ms, _key_id(self._key.public_key())
        )
        return encode(statement, self._key.sign(statement, ec.ECDSA(hashes.SHA384())))


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulatedClaims:
    """What a verified simulated quote says. It proves nothing about isolation."""

    report_data: bytes
    measurement: bytes
    timestamp: datetime
    key_id: bytes
    simulated: bool = True


def verify_simulated_evidence(
    evidence: bytes,
    *,
    keys: Sequence[ec.EllipticCurvePublicKey],
    policy: Policy,
    now: datetime,
) -> SimulatedClaims:
    """Verify simulated evidence against pinned platform keys; raises unless allowed and valid."""
    if not policy.allow_simulated:
        raise SimulatedNotAllowed("simulated (insecure) evidence and policy.allow_simulated=False")
    statement, signature = decode(evidence, 2)
    magic, report_data, measurement, timestamp_ms, key_id = decode(statement, 5)
    if magic != SIMULATED_MAGIC or len(timestamp_ms) != 8 or len(report_data) != 64:
        raise MalformedEvidence("not a simulated quote statement")
    matching = [k for k in keys if hmac.compare_digest(_key_id(k), key_id)]
    if not matching:
        raise BadChain("simulated quote is signed by a platform key that is not pinned")
    try:
        matching[0].verify(signature, statement, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise BadSignature("simulated quote signature does not verify") from None
    timestamp = datetime.fromtimestamp(int.from_bytes(timestamp_ms, "big") / 1000, tz=UTC)
    age_s = (now - timestamp).total_seconds()
    if age_s > policy.max_age_s or age_s < -_MAX_CLOCK_SKEW_S:
        raise QuoteTooOld(f"simulated quote is {age_s:.1f} s old; max_age_s={policy.max_age_s}")
    expected = policy.expected_report_data
    if expected is not None and not hmac.compare_digest(report_data, expected):
        raise BindingMismatch("simulated quote report data differs from the expected value")
    logger.warning("accepted SIMULATED attestation evidence: it provides NO security")
    return SimulatedClaims(
        report_data=report_data, measurement=measurement, timestamp=timestamp, key_id=key_id
    )
