"""Sealed model provisioning: model bytes that only an attested enclave can read.

The host of an enclave (a node's operator) loads code and model into it, so with `Enclave.load`
the host has the model in the clear. When the model is a secret the host must not learn (a
Fides verifier: a service that knows it answers with its distribution and is never flagged),
the enclave starts with code only and the model's owner sends the bytes encrypted to a key that
exists only inside that enclave:

    owner                                              enclave (code imported, no model)
    nonce n                       --- n --->           X25519 key (e, E): once per enclave
                                  <-- E, quote(n, awaiting_measurement(code digest),
                                               input = offer_request(entry),
                                               output = offer(E)) ---
    verify_offer(...): pinned roots, the AWAITING measurement of the code the owner expects,
    nonce once  ->  E
    X25519 key (o, O); K = HKDF-SHA384(X25519(o, E), info = (awaiting measurement, E, O))
    c = AES-256-GCM(K, iv, (model, enrolment), aad = (awaiting measurement, E, O))
    nonce m, O, iv || c           --->                 K; open c (else refuse, stay awaiting);
                                                       load the model; erase e
                                  <-- quote(m, code+model measurement,
                                            input = sealed_input(O, c),
                                            output = loaded(code digest, model digest,
                                                            enrolment digest)) ---
    check_loaded(...): the enclave now runs the expected code on exactly this model, and
    serves only the clients of the enrolment sealed with it (`tee.enrolment`; optional)

The awaiting measurement (`tee.measurement.awaiting_measurement`) differs from every code+model
measurement, so an offer quote can never be taken for a loaded enclave's, nor the reverse. After
loading, the enclave's measurement is `enclave_measurement(code digest, model digest)`: the same
as if the host had loaded the plaintext, so clients pin the same value either way.

Threat model: on SEV-SNP or TDX hardware the host sees the offer, the ciphertext and the
enclave's answers, but not `e`, `K` or the model; it can refuse service or relay someone else's
ciphertext (which either fails to open or loads another model, and then the measurement a
client pins does not match). The owner trusts the platform (its pinned roots and the policy) and
the enclave code it pinned. With a SIMULATED enclave the host can read the enclave process's
memory, key and model included: the exchange runs, but nothing is secret (labelled so). The
key lives as long as the enclave process: restarting a node means provisioning again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tee._encoding import decode, encode
from tee.enrolment import Enrolment
from tee.errors import MalformedEvidence, SealedModelRejected
from tee.measurement import (
    DIGEST_SIZE,
    CodeRef,
    awaiting_measurement,
    code_digest,
    enclave_measurement,
    model_digest,
)
from tee.policy import NonceStore, Policy
from tee.quote import Quote
from tee.verifier import TrustAnchors, VerifiedQuote, verify_quote

__all__ = [
    "ProvisioningKey",
    "ProvisioningOffer",
    "SealedModel",
    "check_loaded",
    "loaded_output",
    "offer_output",
    "offer_request",
    "parse_loaded_output",
    "parse_offer_output",
    "seal_model",
    "sealed_input",
    "unseal_payload",
    "verify_offer",
]

_KEY_SIZE = 32  # X25519 public keys
_IV_SIZE = 12  # AES-GCM
_OFFER = b"secure-infer/tee/provision-offer/v1"
_REQUEST = b"secure-infer/tee/provision-request/v1"
_SEALED = b"secure-infer/tee/sealed-model/v1"
_LOADED = b"secure-infer/tee/sealed-loaded/v2"
_KEY_INFO = b"secure-infer/tee/provision-key/v1"
_PAYLOAD = b"secure-infer/tee/sealed-payload/v1"  # model bytes, enrolment (tee.enrolment)


@dataclass(frozen=True, slots=True)
class ProvisioningOffer:
    """What `Enclave.offer_provisioning` returns: the quoted offer (the enclave's key)."""

    offer: bytes
    quote: Quote


@dataclass(frozen=True, slots=True)
class SealedModel:
    """A model sealed to one enclave's provisioning key (`seal_model`)."""

    owner_public: bytes  # the owner's ephemeral X25519 public key
    ciphertext: bytes  # IV || AES-256-GCM(model) with its tag


def offer_request(entry: str) -> bytes:
    """The input an enclave quotes when it offers its provisioning key for code `entry`."""
    return encode(_REQUEST, entry.encode())


def offer_output(enclave_public: bytes) -> bytes:
    """The output an enclave quotes with its provisioning key."""
    return encode(_OFFER, enclave_public)


def parse_offer_output(output: bytes) -> bytes:
    """The enclave's X25519 public key from a provisioning offer; MalformedEvidence otherwise."""
    try:
        domain, enclave_public = decode(output, 2)
    except ValueError as exc:
        raise MalformedEvidence(f"not a provisioning offer: {exc}") from None
    if domain != _OFFER or len(enclave_public) != _KEY_SIZE:
        raise MalformedEvidence("not a provisioning offer")
    return enclave_public


def sealed_input(sealed: SealedModel) -> bytes:
    """The input an enclave quotes when it has loaded `sealed` (binds the exact ciphertext)."""
    return encode(_SEALED, sealed.owner_public, hashlib.sha384(sealed.ciphertext).digest())


def loaded_output(code: bytes, model: bytes, enrolment: bytes = b"") -> bytes:
    """The output an enclave quotes after loading a sealed model: its code and model digests,
    and the digest of the enrolment sealed with it (`Enrolment.digest`; empty: none)."""
    return encode(_LOADED, code, model, enrolment)


def parse_loaded_output(output: bytes) -> tuple[bytes, bytes, bytes]:
    """(code digest, model digest, enrolment digest or b"") from `loaded_output` bytes;
    MalformedEvidence otherwise (unauthenticated: `check_loaded` is what the owner relies on)."""
    try:
        domain, code, model, enrolment = decode(output, 4)
    except ValueError as exc:
        raise MalformedEvidence(f"not a sealed load's output: {exc}") from None
    if domain != _LOADED:
        raise MalformedEvidence("not a sealed load's output")
    return code, model, enrolment


def unseal_payload(plaintext: bytes) -> tuple[bytes, Enrolment | None]:
    """(model bytes, enrolment) from what `ProvisioningKey.open` returns."""
    try:
        domain, model, enrolment = decode(plaintext, 3)
    except ValueError as exc:
        raise SealedModelRejected(f"not a sealed payload: {exc}") from None
    if domain != _PAYLOAD:
        raise SealedModelRejected("not a sealed payload")
    try:
        return model, Enrolment.from_bytes(enrolment) if enrolment else None
    except (MalformedEvidence, ValueError) as exc:
        raise SealedModelRejected(f"bad enrolment: {exc}") from None


def _key(shared: bytes, awaiting: bytes, enclave_public: bytes, owner_public: bytes) -> bytes:
    info = encode(_KEY_INFO, awaiting, enclave_public, owner_public)
    return HKDF(hashes.SHA384(), 32, salt=None, info=info).derive(shared)


def _aad(awaiting: bytes, enclave_public: bytes, owner_public: bytes) -> bytes:
    return encode(_SEALED, awaiting, enclave_public, owner_public)


def verify_offer(
    quote: Quote,
    *,
    offer: bytes,
    code: CodeRef | str,
    nonce: bytes,
    policy: Policy,
    trust: TrustAnchors,
    nonce_store: NonceStore,
    source: bytes | None = None,
) -> tuple[bytes, VerifiedQuote]:
    """Check that `offer` comes from an enclave on an attested platform that runs `code` (its
    module source read here, or `source`) and has no model yet; returns its public key.

    Raises like `tee.verify_quote` (the policy's own allow list is replaced by the awaiting
    measurement of `code`: this is the only one an offer may carry)."""
    ref = CodeRef.parse(code) if isinstance(code, str) else code
    awaiting = awaiting_measurement(code_digest(ref, source))
    verified = verify_quote(
        quote,
        input=offer_request(ref.entry),
        output=offer,
        nonce=nonce,
        policy=_only(policy, awaiting),
        trust=trust,
        nonce_store=nonce_store,
    )
    return parse_offer_output(offer), verified


def seal_model(
    enclave_public: bytes, model: bytes, *, awaiting: bytes, enrolment: Enrolment | None = None
) -> SealedModel:
    """Encrypt `model` to the enclave key of a verified offer (`awaiting`: its measurement),
    with the `enrolment` of the clients the enclave may serve (None: every caller)."""
    if len(enclave_public) != _KEY_SIZE or len(awaiting) != DIGEST_SIZE:
        raise ValueError("an X25519 public key and a 48-byte awaiting measurement are needed")
    owner = X25519PrivateKey.generate()
    owner_public = owner.public_key().public_bytes_raw()
    shared = owner.exchange(X25519PublicKey.from_public_bytes(enclave_public))
    key = _key(shared, awaiting, enclave_public, owner_public)
    iv = os.urandom(_IV_SIZE)
    payload = encode(_PAYLOAD, model, enrolment.to_bytes() if enrolment else b"")
    body = AESGCM(key).encrypt(iv, payload, _aad(awaiting, enclave_public, owner_public))
    return SealedModel(owner_public=owner_public, ciphertext=iv + body)


class ProvisioningKey:
    """The enclave's side: one X25519 key per enclave, erased once a model is loaded."""

    def __init__(self, awaiting: bytes) -> None:
        self.awaiting = awaiting
        self._private: X25519PrivateKey | None = X25519PrivateKey.generate()
        self.public = self._private.public_key().public_bytes_raw()

    def open(self, sealed: SealedModel) -> bytes:
        """The sealed payload (`unseal_payload`); `SealedModelRejected` if it was not sealed to
        this key (or was altered). The key stays usable after a refusal: the owner may retry."""
        if self._private is None:
            raise SealedModelRejected("this enclave already loaded its model")
        if len(sealed.owner_public) != _KEY_SIZE or len(sealed.ciphertext) < _IV_SIZE + 16:
            raise SealedModelRejected("a sealed model needs a 32-byte owner key and a ciphertext")
        try:
            owner = X25519PublicKey.from_public_bytes(sealed.owner_public)
            shared = self._private.exchange(owner)
        except ValueError as exc:
            raise SealedModelRejected(f"bad owner key: {exc}") from None
        key = _key(shared, self.awaiting, self.public, sealed.owner_public)
        iv, body = sealed.ciphertext[:_IV_SIZE], sealed.ciphertext[_IV_SIZE:]
        aad = _aad(self.awaiting, self.public, sealed.owner_public)
        try:
            return AESGCM(key).decrypt(iv, body, aad)
        except InvalidTag:
            raise SealedModelRejected(
                "the sealed model does not open: altered, or sealed to another enclave's key"
            ) from None

    def erase(self) -> None:
        """Forget the private key (after a successful load)."""
        self._private = None


def check_loaded(
    quote: Quote,
    *,
    sealed: SealedModel,
    code: CodeRef | str,
    model: bytes,
    nonce: bytes,
    policy: Policy,
    trust: TrustAnchors,
    nonce_store: NonceStore,
    source: bytes | None = None,
    enrolment: Enrolment | None = None,
) -> VerifiedQuote:
    """Check the enclave's answer to a sealed load: it loaded exactly `sealed`, and now runs
    `code` on `model` (measurement `enclave_measurement(code digest, model digest)`) with the
    `enrolment` sealed with it."""
    ref = CodeRef.parse(code) if isinstance(code, str) else code
    cd, md = code_digest(ref, source), model_digest(model)
    return verify_quote(
        quote,
        input=sealed_input(sealed),
        output=loaded_output(cd, md, enrolment.digest() if enrolment else b""),
        nonce=nonce,
        policy=_only(policy, enclave_measurement(cd, md)),
        trust=trust,
        nonce_store=nonce_store,
    )


def _only(policy: Policy, measurement: bytes) -> Policy:
    return dataclasses.replace(policy, allowed_code_measurements=frozenset({measurement}))
