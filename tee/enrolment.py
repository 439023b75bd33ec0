"""Client enrolment checked inside the enclave: which clients may use a sealed model.

An enclave that answers every caller lets its host, and anyone the host serves, query the model
it protects. For a Fides verifier that is the relay attack (the service's operator asks the
verifier about the client's input and answers with its output, never flagged), so sealing the
weights alone does not keep the verifier's function from the host. An enrolment, sealed by the
model's owner together with the model (`tee.provisioning.seal_model(..., enrolment=...)`),
lists the clients the enclave serves: the CA that issues their certificates and their CNs.

    client (certificate, its key k)                    enclave (enrolment sealed with the model)
    X25519 key (c, C), nonce n
    sig = ECDSA_k(identity_message(C, n))  --- C, n, certificate, sig --->
                                           check: issued by the enrolled CA, valid now, CN
                                           enrolled, sig by the certificate's key over (C, n)
                                           else ClientNotEnrolled; the session's offer (quoted)
                                           says "enrolled" (tee.session)
    every request q:  data, HMAC(K, request(s, q, H(data)))  --->  checked before running
                                           <---  AES-256-GCM(K', output), tag

The host relays the opening but cannot sign it; replaying a client's opening gets the host a
session whose key it cannot derive (it lacks c), whose requests it cannot authenticate and
whose outputs it cannot read. Per-request quotes (no session) are refused. What it rests on:
the enclave platform (on SEV-SNP/TDX hardware; a SIMULATED enclave's host reads the process's
memory, enrolment and keys included), the CA's issuing policy (who gets a certificate with an
enrolled CN), and the enrolled clients themselves (one may still relay for the service). The
enrolment is fixed when the model is sealed: no revocation list is consulted, so removing a
client means provisioning a new enclave (sessions already open end with their client's
re-opening or the enclave).
"""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tee._encoding import encode
from tee.errors import ClientNotEnrolled, MalformedEvidence

__all__ = ["Enrolment", "check_identity", "identity_message", "sign_identity"]

_IDENTITY = b"secure-infer/tee/session-identity/v1"
MAX_NAMES = 1024


@dataclass(frozen=True, slots=True)
class Enrolment:
    """The clients an enclave serves: certificates issued by `ca_pem` whose CN is in `names`."""

    ca_pem: bytes
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.names or len(self.names) > MAX_NAMES or not all(self.names):
            raise ValueError(f"an enrolment lists 1..{MAX_NAMES} non-empty client names")
        try:
            ca = x509.load_pem_x509_certificate(self.ca_pem)
        except ValueError as exc:
            raise ValueError(f"the enrolment's CA is not a PEM certificate: {exc}") from None
        if not isinstance(ca.public_key(), ec.EllipticCurvePublicKey):
            raise ValueError("the enrolment's CA must have an EC key (the mesh CA's)")

    def to_bytes(self) -> bytes:
        """Canonical JSON (what is sealed, and what `digest` covers)."""
        doc = {"ca_pem": self.ca_pem.decode(), "names": sorted(set(self.names))}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Enrolment:
        try:
            doc = json.loads(data)
            return cls(doc["ca_pem"].encode(), tuple(str(n) for n in doc["names"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise MalformedEvidence(f"not an enrolment: {exc}") from None

    def digest(self) -> bytes:
        return hashlib.sha384(self.to_bytes()).digest()


def identity_message(client_public: bytes, nonce: bytes) -> bytes:
    """What a client signs to open a session: its session key and the opening's nonce."""
    return encode(_IDENTITY, client_public, nonce)


def sign_identity(
    private_key: ec.EllipticCurvePrivateKey, client_public: bytes, nonce: bytes
) -> bytes:
    """The client's signature (ECDSA-SHA256 by its certificate's key) over the opening."""
    return private_key.sign(identity_message(client_public, nonce), ec.ECDSA(hashes.SHA256()))


def check_identity(
    enrolment: Enrolment,
    certificate: bytes,
    signature: bytes,
    client_public: bytes,
    nonce: bytes,
    now: datetime.datetime | None = None,
) -> str:
    """The enrolled CN of the client opening a session; `ClientNotEnrolled` otherwise."""
    if not certificate or not signature:
        raise ClientNotEnrolled(
            "this enclave serves enrolled clients only: open the session with a certificate "
            "and a signature"
        )
    try:
        cert = x509.load_pem_x509_certificate(certificate)
    except ValueError as exc:
        raise ClientNotEnrolled(f"not a certificate: {exc}") from None
    ca = x509.load_pem_x509_certificate(enrolment.ca_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise ClientNotEnrolled("the certificate was not issued by the enrolment's CA") from None
    when = now or datetime.datetime.now(datetime.UTC)
    for which, c in (("enrolment's CA", ca), ("certificate", cert)):
        if not c.not_valid_before_utc <= when <= c.not_valid_after_utc:
            raise ClientNotEnrolled(f"the {which} is outside its validity period")
    names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    enrolled = [n for n in names if n in enrolment.names]
    if not enrolled:
        raise ClientNotEnrolled(f"certificate CN {names} is not enrolled")
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ClientNotEnrolled("the certificate's key is not an EC key")
    try:
        key.verify(signature, identity_message(client_public, nonce), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise ClientNotEnrolled(
            "the opening's signature does not verify under the certificate's key"
        ) from None
    return enrolled[0]
