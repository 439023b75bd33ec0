"""Provision a Fides verifier into a node's enclave sealed, so that the node never reads it.

The verifier's weights are a secret from the service's operator (a service that knows them
answers with the verifier's own distribution and is never flagged: bench/fides_mimic.py). A node
started with `--fides-verifier NAME=DIR` reads them from its disk. A node started with
`--fides-sealed NAME=OWNER` instead opens an enclave with the verifier code and no model; the
owner (the party that distilled the verifier, holding the full bundle) then runs
`provision_verifier` (CLI: `secure-infer fides provision`):

1. `OfferProvisioning`: the enclave's X25519 key, quoted under the AWAITING measurement of
   `verification.fides.enclave_app` as this owner's installed copy measures it (so the enclave
   runs the code the owner expects) with the owner's fresh nonce; checked against the owner's
   pinned roots and policy (`tee.provisioning.verify_offer`).
2. `Provision`: the enclave bundle for `protocol` (`enclave_app.verifier_bundle`) sealed to that
   key (X25519 + HKDF-SHA384 + AES-256-GCM); the enclave opens it, loads it, erases its key and
   quotes the load with a second nonce: the owner checks that the enclave now runs exactly this
   verifier (`check_loaded`), i.e. reports the measurement that clients pin from the client
   bundle.

Threat model: the owner trusts the platform (its pinned AMD/Intel roots and `Policy`) and the
enclave code it pinned; the node's host relays ciphertext and cannot read or swap the model on
SEV-SNP/TDX hardware. With a SIMULATED enclave the exchange runs but protects nothing (the host
can read the enclave process's memory), and the result says so. The enclave's key lives as long
as its process: after a node restart, provision again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from decentralized.errors import AlreadyProvisioned, InvalidRequest, PeerMisbehaved, SessionMismatch
from decentralized.transport import sync_channel
from decentralized.v1 import classify_pb2
from secure_infer.certs import TLSMaterial
from secure_infer.classify_client import call
from secure_infer.client import credentials
from secure_infer.fides_client import GuestPins, pinned_trust
from tee import (
    CodeRef,
    Enrolment,
    NonceStore,
    Policy,
    Quote,
    TrustAnchors,
    check_loaded,
    code_digest,
    seal_model,
    verify_offer,
)
from tee.measurement import awaiting_measurement
from verification.fides import FidesVerifier
from verification.fides.enclave_app import ENTRY, PROTOCOLS, verifier_bundle

__all__ = ["ProvisionResult", "provision_verifier"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProvisionResult:
    """What the owner verified: which node's enclave now runs which verifier."""

    verifier: str
    node_id: str
    protocol: str
    measurement: bytes  # code+model: what clients pin (`published_measurement`)
    platform: str
    simulated: bool  # True: the exchange ran, but a SIMULATED enclave protects nothing
    pinning: str  # how the platform key or roots were pinned
    model_bytes: int  # size of the sealed bundle
    seconds: float
    enrolled: tuple[str, ...] = ()  # client CNs the enclave serves (empty: every caller)

    def summary(self) -> str:
        label = (
            "SIMULATED (INSECURE: the node's host can read the model)"
            if self.simulated
            else (f"{self.platform} hardware enclave")
        )
        audience = (
            f"serves enrolled clients only ({', '.join(self.enrolled)}), checked in the enclave"
            if self.enrolled
            else "serves every caller (no enrolment)"
        )
        return (
            f"verifier {self.verifier!r} provisioned sealed on node {self.node_id[:12]} "
            f"(protocol {self.protocol}, {self.model_bytes} bytes, {self.seconds:.2f} s): "
            f"{label}; {audience}; measurement {self.measurement.hex()[:16]}…; {self.pinning}"
        )


def provision_verifier(
    address: str,
    name: str,
    full: Path,
    *,
    protocol: str = "distribution",
    tls: TLSMaterial | None = None,
    insecure_dev: bool = False,
    node_name: str = "",
    allow_simulated: bool = False,
    simulated_keys: tuple[bytes, ...] = (),
    trust: TrustAnchors | None = None,
    guest: GuestPins | None = None,
    enrol: Sequence[str] = (),
    timeout_s: float = 120.0,
) -> ProvisionResult:
    """Send the full Fides directory `full` sealed to the enclave of slot `name` on the node at
    `address` (see the module docstring); raises `tee.AttestationError` subclasses if the
    enclave's evidence is not accepted, mesh errors (`NotPermitted`, `AlreadyProvisioned`,
    `InvalidRequest`, ...) if the node refuses.

    Args:
        node_name: the node's certificate name, checked in the TLS handshake (optional).
        allow_simulated: accept a SIMULATED enclave (development only: it protects nothing).
        simulated_keys: PEM platform keys to pin; if empty and `allow_simulated`, the key the
            node sends is used (trust on first use, which adds nothing for a simulated enclave).
        trust: pinned AMD/Intel roots for hardware enclaves.
        guest: the hardware guest image to accept (`GuestPins`; default: none pinned, so every
            hardware enclave is refused: any confidential guest could claim the enclave's
            measurement, and the owner's model would be sealed to it).
        enrol: client certificate CNs (issued by the mesh CA of `tls`) that the enclave will
            serve, sealed with the model (`tee.enrolment`): the enclave then refuses every
            other caller, its host included, authenticates each request and encrypts each
            answer. Empty: it answers every caller (who can then relay its answers).
    """
    if protocol not in PROTOCOLS:
        raise InvalidRequest(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    fides = FidesVerifier.load(full)
    if fides.client_only:
        raise InvalidRequest(f"{full} is a client bundle: provisioning needs the full one")
    model = verifier_bundle(full, protocol)
    enrolment = None
    if enrol:
        if tls is None:
            raise InvalidRequest("an enrolment names the clients of a mesh CA: tls is needed")
        enrolment = Enrolment(Path(tls.ca_cert).read_bytes(), tuple(enrol))
    t0 = time.perf_counter()
    anchors = trust or TrustAnchors()
    pins = guest or GuestPins()
    policy = Policy(
        **pins.policy_fields(),
        allowed_code_measurements=frozenset(),  # replaced by the exact value at each step
        allow_simulated=allow_simulated,
    )
    nonces = NonceStore()
    channel = sync_channel(address, credentials(tls, insecure_dev), node_name)
    try:
        nonce = nonces.issue()
        offer = _call(
            channel,
            "OfferProvisioning",
            classify_pb2.ProvisioningOfferRequest(verifier=name, nonce=nonce),
            timeout_s,
        )
        if offer.entry != ENTRY:
            raise PeerMisbehaved(f"the node's enclave runs {offer.entry!r}, not {ENTRY!r}")
        quote = Quote.from_json(offer.quote_json)
        anchors, pinning = pinned_trust(
            anchors, simulated_keys, allow_simulated, quote.simulated, offer.simulated_platform_key
        )
        if not quote.simulated:
            pinning = f"{pinning}; {pins.describe()}"
        enclave_public, _ = verify_offer(
            quote,
            offer=offer.offer,
            code=ENTRY,
            nonce=nonce,
            policy=policy,
            trust=anchors,
            nonce_store=nonces,
        )
        awaiting = awaiting_measurement(code_digest(CodeRef.parse(ENTRY)))
        sealed = seal_model(enclave_public, model, awaiting=awaiting, enrolment=enrolment)
        nonce = nonces.issue()
        reply = _call(
            channel,
            "Provision",
            classify_pb2.ProvisionRequest(
                verifier=name,
                owner_public=sealed.owner_public,
                sealed_model=sealed.ciphertext,
                nonce=nonce,
                task=fides.task,
                n_classes=fides.n_classes,
                protocol=protocol,
            ),
            timeout_s,
        )
        verified = check_loaded(
            Quote.from_json(reply.quote_json),
            sealed=sealed,
            code=ENTRY,
            model=model,
            nonce=nonce,
            policy=policy,
            trust=anchors,
            nonce_store=nonces,
            enrolment=enrolment,
        )
    finally:
        channel.close()
    return ProvisionResult(
        verifier=name,
        node_id=reply.node_id,
        protocol=protocol,
        measurement=verified.measurement,
        platform=verified.platform.value,
        simulated=verified.simulated,
        pinning=pinning,
        model_bytes=len(model),
        seconds=time.perf_counter() - t0,
        enrolled=tuple(sorted(set(enrol))),
    )


def _call(channel: Any, method: str, request: Any, timeout_s: float) -> Any:
    try:
        return call(channel, method, request, timeout_s)
    except SessionMismatch as exc:  # FAILED_PRECONDITION: these RPCs send it for one reason
        raise AlreadyProvisioned(str(exc)) from None
