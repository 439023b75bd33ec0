"""Client enrolment checked inside the enclave (`tee.enrolment`): a model sealed with an
enrolment serves only the clients it names, in sessions whose requests are authenticated and
whose answers are encrypted, so the enclave's host can neither query it nor read what it says.
A real simulated enclave process; certificates from a real mesh CA (`secure_infer.certs`)."""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secure_infer import certs
from tee import (
    AttestedSession,
    BindingMismatch,
    ClientNotEnrolled,
    EnclaveError,
    Enrolment,
    MalformedEvidence,
    NonceStore,
    SessionKey,
    SimulatedEnclave,
    TrustAnchors,
    check_loaded,
    code_digest,
    seal_model,
    sign_identity,
    verify_offer,
)
from tee.enrolment import check_identity
from tee.measurement import CodeRef, awaiting_measurement

from .conftest import APP, MODEL
from .test_provisioning import POLICY


class Party:
    """A mesh certificate (PEM) and its private key."""

    def __init__(self, directory: Path, name: str) -> None:
        tls = certs.issue(directory, name, role="client")
        self.cert = Path(tls.cert).read_bytes()
        key = serialization.load_pem_private_key(Path(tls.key).read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self.key = key

    def opening(self, client_public: bytes, nonce: bytes) -> dict[str, bytes]:
        return {
            "certificate": self.cert,
            "signature": sign_identity(self.key, client_public, nonce),
        }


@pytest.fixture(scope="module")
def mesh_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("ca")
    certs.init_ca(directory)
    return directory


@pytest.fixture(scope="module")
def alice(mesh_ca: Path) -> Party:
    return Party(mesh_ca, "alice")


@pytest.fixture(scope="module")
def mallory(mesh_ca: Path) -> Party:
    """Same CA, a CN the owner did not enrol (e.g. the service's operator)."""
    return Party(mesh_ca, "mallory")


@pytest.fixture(scope="module")
def enrolment(mesh_ca: Path) -> Enrolment:
    return Enrolment((mesh_ca / "ca.crt").read_bytes(), ("alice", "bob"))


def test_check_identity_admits_an_enrolled_signed_opening_only(
    enrolment: Enrolment, alice: Party, mallory: Party, tmp_path: Path
) -> None:
    public, nonce = SessionKey().public, os.urandom(32)
    assert (
        check_identity(enrolment, **alice.opening(public, nonce), client_public=public, nonce=nonce)
        == "alice"
    )
    certs.init_ca(tmp_path)  # another CA issuing an "alice"
    forged = Party(tmp_path, "alice")
    other_nonce = os.urandom(32)
    cases = {
        "not enrolled": mallory.opening(public, nonce),
        "not issued by": forged.opening(public, nonce),
        "does not verify": {  # alice's signature over another opening (a replay elsewhere)
            "certificate": alice.cert,
            "signature": sign_identity(alice.key, public, other_nonce),
        },
        "enrolled clients only": {"certificate": b"", "signature": b""},
        "not a certificate": {"certificate": b"junk", "signature": b"x"},
    }
    for match, opening in cases.items():
        with pytest.raises(ClientNotEnrolled, match=match):
            check_identity(enrolment, **opening, client_public=public, nonce=nonce)
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=3 * 365)
    with pytest.raises(ClientNotEnrolled, match="certificate is outside its validity"):
        check_identity(
            enrolment, **alice.opening(public, nonce), client_public=public, nonce=nonce, now=later
        )


def test_an_expired_ca_admits_nobody(enrolment: Enrolment, alice: Party) -> None:
    public, nonce = SessionKey().public, os.urandom(32)
    after = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=20 * 365)
    with pytest.raises(ClientNotEnrolled, match="enrolment's CA is outside its validity"):
        check_identity(
            enrolment, **alice.opening(public, nonce), client_public=public, nonce=nonce, now=after
        )


def test_an_enrolment_round_trips_and_refuses_nonsense(enrolment: Enrolment) -> None:
    again = Enrolment.from_bytes(enrolment.to_bytes())
    assert again.digest() == enrolment.digest() and set(again.names) == {"alice", "bob"}
    assert Enrolment(enrolment.ca_pem, ("bob", "alice")).digest() == enrolment.digest()
    with pytest.raises(ValueError, match="client names"):
        Enrolment(enrolment.ca_pem, ())
    with pytest.raises(ValueError, match="PEM certificate"):
        Enrolment(b"not a certificate", ("alice",))
    with pytest.raises(MalformedEvidence):
        Enrolment.from_bytes(b"{}")


@pytest.fixture
def enrolled(enrolment: Enrolment) -> Iterator[tuple[SimulatedEnclave, NonceStore]]:
    """A SIMULATED enclave provisioned with MODEL sealed together with `enrolment`."""
    store = NonceStore()
    with SimulatedEnclave(timeout_s=60) as enclave:
        trust = TrustAnchors(simulated_keys=(enclave.platform_public_key,))
        nonce = store.issue()
        offer = enclave.offer_provisioning(APP, nonce=nonce)
        public, _ = verify_offer(
            offer.quote,
            offer=offer.offer,
            code=APP,
            nonce=nonce,
            policy=POLICY,
            trust=trust,
            nonce_store=store,
        )
        awaiting = awaiting_measurement(code_digest(CodeRef.parse(APP)))
        sealed = seal_model(public, MODEL, awaiting=awaiting, enrolment=enrolment)
        assert MODEL not in sealed.ciphertext and b"alice" not in sealed.ciphertext
        nonce = store.issue()
        loaded = enclave.load_sealed(sealed, nonce=nonce)
        check = {
            "sealed": sealed,
            "code": APP,
            "model": MODEL,
            "nonce": nonce,
            "policy": POLICY,
            "trust": trust,
        }
        with pytest.raises(BindingMismatch):  # the quote names the enrolment it loaded
            check_loaded(loaded.quote, **check, nonce_store=NonceStore(), enrolment=None)
        check_loaded(loaded.quote, **check, nonce_store=store, enrolment=enrolment)
        yield enclave, store


def _open(enclave: SimulatedEnclave, store: NonceStore, party: Party | None) -> AttestedSession:
    key, nonce = SessionKey(), store.issue()
    opening = party.opening(key.public, nonce) if party else {}
    offer = enclave.open_session(key.public, nonce=nonce, **opening)
    return AttestedSession.open(
        offer.quote,
        offer=offer.offer,
        key=key,
        nonce=nonce,
        policy=dataclasses.replace(POLICY, allowed_code_measurements={enclave.measurement}),
        trust=TrustAnchors(simulated_keys=(enclave.platform_public_key,)),
        nonce_store=store,
    )


def test_an_enrolled_enclave_serves_its_clients_only_and_hides_answers_from_its_host(
    enrolled: tuple[SimulatedEnclave, NonceStore], alice: Party, mallory: Party
) -> None:
    enclave, store = enrolled
    with pytest.raises(ClientNotEnrolled, match="sessions only"):  # no per-request quotes
        enclave.run(b"question", nonce=store.issue())
    for stranger in (None, mallory):  # the host itself, or a certificate not enrolled
        with pytest.raises(ClientNotEnrolled):
            _open(enclave, store, stranger)
    session = _open(enclave, store, alice)
    assert session.enrolled  # quoted in the offer: the enclave itself enforces it
    seq = session.next_seq()
    for tag in (b"", os.urandom(48)):  # the host using alice's session: it lacks the key
        with pytest.raises(ClientNotEnrolled, match="not authenticated"):
            enclave.run_in_session(
                b"question", session_id=session.session_id, seq=seq, request_tag=tag
            )
    result = enclave.run_in_session(
        b"question",
        session_id=session.session_id,
        seq=seq,
        request_tag=session.request_tag(seq, b"question"),
    )
    assert MODEL not in result.output and b"question" not in result.output  # what the host sees
    plain = session.check(
        seq=seq, answered_seq=result.seq, data=b"question", output=result.output, tag=result.tag
    )
    model, data, _ = plain.split(b"|")
    assert (model, data) == (MODEL, b"question")
    # A request tag made for another input does not run it.
    seq = session.next_seq()
    with pytest.raises(ClientNotEnrolled):
        enclave.run_in_session(
            b"host's question",
            session_id=session.session_id,
            seq=seq,
            request_tag=session.request_tag(seq, b"question"),
        )
    assert enclave.running  # refusals leave it serving


def test_sessions_without_an_enrolment_stay_open_and_in_the_clear(
    tmp_path: Path, alice: Party
) -> None:
    """The default (no enrolment): any caller, plaintext outputs; a request tag is checked
    when one is sent."""
    store = NonceStore()
    with SimulatedEnclave(timeout_s=60) as enclave:
        enclave.load(APP, MODEL)
        session = _open(enclave, store, None)
        assert not session.enrolled
        assert _open(enclave, store, alice).enrolled is False
        seq = session.next_seq()
        result = enclave.run_in_session(b"q", session_id=session.session_id, seq=seq)
        assert result.output.startswith(MODEL + b"|q|")
        with pytest.raises(ClientNotEnrolled):
            enclave.run_in_session(
                b"q", session_id=session.session_id, seq=seq + 1, request_tag=bytes(48)
            )


def test_the_enclave_runs_each_sequence_number_once(
    enrolled: tuple[SimulatedEnclave, NonceStore], alice: Party
) -> None:
    """The host replaying an enrolled client's authenticated request is refused: the answer is
    not computed twice, and the output's AES-GCM IV (the sequence number) is never reused."""
    enclave, store = enrolled
    session = _open(enclave, store, alice)
    seqs = [session.next_seq() for _ in range(3)]

    def send(seq: int) -> object:
        return enclave.run_in_session(
            b"question",
            session_id=session.session_id,
            seq=seq,
            request_tag=session.request_tag(seq, b"question"),
        )

    send(seqs[1])  # out of order within the window is fine
    send(seqs[0])
    for seq in seqs[:2]:
        with pytest.raises(EnclaveError, match="already used"):
            send(seq)
    send(seqs[2])
    far = seqs[2] + 2000
    send(far)
    with pytest.raises(EnclaveError, match="more than 1024 below"):
        send(seqs[2] + 1)  # never used, but too old to tell
    assert enclave.running


def test_a_captured_session_opening_is_not_admitted_twice(
    enrolled: tuple[SimulatedEnclave, NonceStore], alice: Party
) -> None:
    """The host replaying alice's signed opening cannot derive the session key, but each
    replay would open a session logged as alice (and push out an older one): refused."""
    enclave, store = enrolled
    key, nonce = SessionKey(), store.issue()
    opening = alice.opening(key.public, nonce)
    enclave.open_session(key.public, nonce=nonce, **opening)
    with pytest.raises(ClientNotEnrolled, match="used before"):
        enclave.open_session(key.public, nonce=nonce, **opening)
    assert _open(enclave, store, alice).enrolled  # a fresh opening still works
