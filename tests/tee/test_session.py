"""Attested sessions with a real simulated enclave process: one quote, then a tag per result."""

from __future__ import annotations

import os

import pytest

from tee import (
    AttestedSession,
    BindingMismatch,
    EnclaveError,
    MalformedEvidence,
    MeasurementNotAllowed,
    NonceStore,
    Policy,
    ReplayedNonce,
    SessionKey,
    SimulatedEnclave,
    SimulatedNotAllowed,
    TrustAnchors,
    UnknownSession,
)
from tee.session import EnclaveSessions, open_request, parse_offer

from .conftest import MODEL, simulated_policy


def _open(enclave: SimulatedEnclave, **policy: object) -> AttestedSession:
    store, key = NonceStore(), SessionKey()
    nonce = store.issue()
    offer = enclave.open_session(key.public, nonce=nonce)
    return AttestedSession.open(
        offer.quote,
        offer=offer.offer,
        key=key,
        nonce=nonce,
        policy=simulated_policy(enclave, **policy),
        trust=TrustAnchors(simulated_keys=(enclave.platform_public_key,)),
        nonce_store=store,
    )


def test_one_quote_then_tagged_results(enclave) -> None:
    session = _open(enclave)
    assert session.quote.simulated and session.quote.measurement == enclave.measurement
    for data in (b"first", b"second", b""):
        seq = session.next_seq()
        result = enclave.run_in_session(data, session_id=session.session_id, seq=seq)
        model, echoed, pid = result.output.split(b"|")
        assert (model, echoed, int(pid)) == (MODEL, data, enclave.pid)
        session.check(
            seq=seq, answered_seq=result.seq, data=data, output=result.output, tag=result.tag
        )
    assert session.next_seq() == 4


def test_altered_replayed_or_redirected_results_are_refused(enclave) -> None:
    session = _open(enclave)
    seq = session.next_seq()
    good = enclave.run_in_session(b"question", session_id=session.session_id, seq=seq)
    check = {"seq": seq, "answered_seq": seq, "data": b"question", "tag": good.tag}
    with pytest.raises(BindingMismatch):  # the host changes the answer
        session.check(output=good.output + b"!", **check)  # type: ignore[arg-type]
    with pytest.raises(EnclaveError, match="already used"):  # each seq runs once
        enclave.run_in_session(b"host's input", session_id=session.session_id, seq=seq)
    other = enclave.run_in_session(b"host's input", session_id=session.session_id, seq=seq + 50)
    with pytest.raises(BindingMismatch):  # the host ran the enclave on another input
        session.check(**(check | {"tag": other.tag}), output=other.output)  # type: ignore[arg-type]
    session.check(output=good.output, **check)  # type: ignore[arg-type]
    later = session.next_seq()
    with pytest.raises(ReplayedNonce):  # the old answer to a new request, seq as it was
        session.check(
            seq=later, answered_seq=seq, data=b"question", output=good.output, tag=good.tag
        )
    with pytest.raises(BindingMismatch):  # ... or relabelled with the new seq: the tag says no
        session.check(
            seq=later, answered_seq=later, data=b"question", output=good.output, tag=good.tag
        )
    # A tag from another session (another key) does not verify in this one.
    other_session = _open(enclave)
    foreign = enclave.run_in_session(b"question", session_id=other_session.session_id, seq=later)
    with pytest.raises(BindingMismatch):
        session.check(
            seq=later, answered_seq=later, data=b"question", output=foreign.output, tag=foreign.tag
        )


def test_the_opening_quote_is_checked_like_any_quote(enclave) -> None:
    with pytest.raises(SimulatedNotAllowed):
        _open(enclave, allow_simulated=False)
    with pytest.raises(MeasurementNotAllowed):
        _open(enclave, allowed_code_measurements=frozenset({bytes(48)}))
    # An offer the host swapped (its own key exchange): the quote bound another offer.
    store, key = NonceStore(), SessionKey()
    nonce = store.issue()
    offer = enclave.open_session(key.public, nonce=nonce)
    mine = EnclaveSessions().open(key.public, nonce, enclave.measurement)[1]
    with pytest.raises(BindingMismatch):
        AttestedSession.open(
            offer.quote,
            offer=mine,
            key=key,
            nonce=nonce,
            policy=Policy(
                allowed_launch_measurements=None,
                allowed_code_measurements=None,
                allow_simulated=True,
            ),
            trust=TrustAnchors(simulated_keys=(enclave.platform_public_key,)),
            nonce_store=store,
        )


def test_unknown_sessions_and_misuse(enclave) -> None:
    with pytest.raises(UnknownSession):
        enclave.run_in_session(b"x", session_id=os.urandom(16), seq=1)
    session = _open(enclave)  # the enclave still serves
    with pytest.raises(ValueError, match="sequence"):
        enclave.run_in_session(b"x", session_id=session.session_id, seq=0)
    with pytest.raises(ValueError, match="session id"):
        enclave.run_in_session(b"x", session_id=b"short", seq=1)
    with pytest.raises(EnclaveError, match="32 bytes"):
        enclave.open_session(b"not a key", nonce=os.urandom(32))
    seq = session.next_seq()
    assert enclave.run_in_session(b"x", session_id=session.session_id, seq=seq).seq == seq
    for bad in (b"", open_request(b"k" * 32)):
        with pytest.raises(MalformedEvidence):
            parse_offer(bad)


def test_the_enclave_forgets_its_oldest_sessions() -> None:
    sessions = EnclaveSessions(capacity=2)
    ids = [
        parse_offer(sessions.open(SessionKey().public, os.urandom(32), bytes(48))[1])[1]
        for _ in range(3)
    ]
    with pytest.raises(UnknownSession):
        sessions.key(ids[0])
    assert len(sessions.key(ids[1])) == len(sessions.key(ids[2])) == 48
