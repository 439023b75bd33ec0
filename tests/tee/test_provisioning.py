"""Sealed provisioning with a real simulated enclave process: the owner's model reaches the
enclave encrypted to a key the enclave offered under a quote, never in the host's clear."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from tee import (
    BindingMismatch,
    EnclaveError,
    MeasurementNotAllowed,
    NonceStore,
    Policy,
    ReplayedNonce,
    SealedModel,
    SealedModelRejected,
    SimulatedEnclave,
    SimulatedNotAllowed,
    TrustAnchors,
    check_loaded,
    code_digest,
    enclave_measurement,
    model_digest,
    seal_model,
    verify_offer,
)
from tee.measurement import CodeRef, awaiting_measurement
from tee.provisioning import parse_offer_output

from .conftest import APP, MODEL

POLICY = Policy(
    allowed_launch_measurements=None, allowed_code_measurements=frozenset(), allow_simulated=True
)


@pytest.fixture
def awaiting() -> Iterator[SimulatedEnclave]:
    """A fresh SIMULATED enclave with nothing loaded (each test provisions its own)."""
    with SimulatedEnclave(timeout_s=60) as enc:
        yield enc


def _offer(enclave: SimulatedEnclave, store: NonceStore, **kw: object) -> bytes:
    nonce = store.issue()
    offer = enclave.offer_provisioning(APP, nonce=nonce)
    public, verified = verify_offer(
        offer.quote,
        offer=offer.offer,
        code=kw.pop("code", APP),  # type: ignore[arg-type]
        nonce=nonce,
        policy=kw.pop("policy", POLICY),  # type: ignore[arg-type]
        trust=TrustAnchors(simulated_keys=(enclave.platform_public_key,)),
        nonce_store=store,
        source=kw.pop("source", None),  # type: ignore[arg-type]
    )
    assert verified.simulated and not kw
    return public


def _awaiting() -> bytes:
    return awaiting_measurement(code_digest(CodeRef.parse(APP)))


def test_sealed_model_loads_and_the_enclave_proves_which(awaiting: SimulatedEnclave) -> None:
    store = NonceStore()
    public = _offer(awaiting, store)
    sealed = seal_model(public, MODEL, awaiting=_awaiting())
    assert MODEL not in sealed.ciphertext  # what the host relays is ciphertext
    nonce = store.issue()
    result = awaiting.load_sealed(sealed, nonce=nonce)
    verified = check_loaded(
        result.quote,
        sealed=sealed,
        code=APP,
        model=MODEL,
        nonce=nonce,
        policy=POLICY,
        trust=TrustAnchors(simulated_keys=(awaiting.platform_public_key,)),
        nonce_store=store,
    )
    # The same measurement as a plaintext load of the same model: clients pin one value.
    want = enclave_measurement(code_digest(CodeRef.parse(APP)), model_digest(MODEL))
    assert verified.measurement == awaiting.measurement == want
    out = awaiting.run(b"question", nonce=store.issue())
    model, data, _ = out.output.split(b"|")
    assert (model, data) == (MODEL, b"question")
    # The key is gone: a second model cannot be provisioned, and no offer is made any more.
    with pytest.raises(SealedModelRejected):
        awaiting.load_sealed(sealed, nonce=store.issue())
    with pytest.raises(SealedModelRejected):
        awaiting.offer_provisioning(APP, nonce=store.issue())
    assert awaiting.run(b"still", nonce=store.issue()).output.startswith(MODEL)


def test_every_offer_quotes_a_fresh_key_under_the_awaiting_measurement(awaiting) -> None:
    store = NonceStore()
    first, second = _offer(awaiting, store), _offer(awaiting, store)
    assert first != second and len(first) == len(second) == 32
    offer = awaiting.offer_provisioning(APP, nonce=store.issue())
    assert offer.quote.measurement == _awaiting()
    latest = parse_offer_output(offer.offer)
    # A model sealed for an earlier offer never opens: its key is erased (so the host cannot
    # load the owner's older payload, say with an older enrolment, in place of the latest).
    with pytest.raises(SealedModelRejected, match="does not open"):
        awaiting.load_sealed(seal_model(second, MODEL, awaiting=_awaiting()), nonce=store.issue())
    with pytest.raises(SealedModelRejected, match="no provisioning offer is open"):
        awaiting.load_sealed(seal_model(latest, MODEL, awaiting=_awaiting()), nonce=store.issue())
    with pytest.raises(EnclaveError, match="awaits a model for"):  # one entry per enclave
        awaiting.offer_provisioning("tests.tee.enclave_apps:failing", nonce=store.issue())
    latest = _offer(awaiting, store)  # one attempt per offer: the owner asks again
    assert awaiting.load_sealed(
        seal_model(latest, MODEL, awaiting=_awaiting()), nonce=store.issue()
    )


def test_owner_refuses_offers_it_should_not_trust(awaiting: SimulatedEnclave) -> None:
    store = NonceStore()
    with pytest.raises(MeasurementNotAllowed):  # the owner expects another version of the code
        _offer(awaiting, store, source=b"def process_id(model): ...")
    with pytest.raises(BindingMismatch):  # ... or another entry point
        _offer(awaiting, store, code="tests.tee.enclave_apps:failing")
    with pytest.raises(SimulatedNotAllowed):  # a production policy refuses simulated evidence
        _offer(awaiting, store, policy=dataclasses.replace(POLICY, allow_simulated=False))
    nonce = store.issue()
    offer = awaiting.offer_provisioning(APP, nonce=nonce)
    trust = TrustAnchors(simulated_keys=(awaiting.platform_public_key,))
    kw = {"code": APP, "nonce": nonce, "policy": POLICY, "trust": trust, "nonce_store": store}
    with pytest.raises(BindingMismatch):  # the host swaps in its own key
        verify_offer(offer.quote, offer=offer.offer[:-32] + bytes(32), **kw)  # type: ignore[arg-type]
    verify_offer(offer.quote, offer=offer.offer, **kw)  # type: ignore[arg-type]
    with pytest.raises(ReplayedNonce):  # an old offer replayed
        verify_offer(offer.quote, offer=offer.offer, **kw)  # type: ignore[arg-type]


def test_a_model_that_does_not_open_is_refused_and_the_enclave_keeps_waiting(awaiting) -> None:
    store = NonceStore()
    with SimulatedEnclave(timeout_s=60) as other:  # sealed to another enclave's key
        other_public = _offer(other, NonceStore())

    def bad(public: bytes) -> list[SealedModel]:
        sealed = seal_model(public, MODEL, awaiting=_awaiting())
        flipped = bytearray(sealed.ciphertext)
        flipped[20] ^= 1
        return [
            SealedModel(sealed.owner_public, bytes(flipped)),
            seal_model(other_public, MODEL, awaiting=_awaiting()),
            seal_model(public, MODEL, awaiting=bytes(48)),  # bound to another measurement
            SealedModel(bytes(32), sealed.ciphertext),
            SealedModel(sealed.owner_public, b"short"),
        ]

    for i in range(5):  # each attempt on an offer of its own
        with pytest.raises(SealedModelRejected):
            awaiting.load_sealed(bad(_offer(awaiting, store))[i], nonce=store.issue())
    with pytest.raises(EnclaveError, match="nothing loaded"):
        _ = awaiting.measurement
    sealed = seal_model(_offer(awaiting, store), MODEL, awaiting=_awaiting())
    result = awaiting.load_sealed(sealed, nonce=store.issue())  # the right one still loads
    assert result.quote.measurement == awaiting.measurement


def test_plain_and_sealed_loads_do_not_mix(awaiting: SimulatedEnclave) -> None:
    store = NonceStore()
    with pytest.raises(SealedModelRejected, match="no provisioning offer"):
        awaiting.load_sealed(SealedModel(bytes(32), bytes(64)), nonce=store.issue())
    _offer(awaiting, store)
    with pytest.raises(EnclaveError, match="already loaded code"):
        awaiting.load(APP, MODEL)  # the host cannot slip a plaintext model in after an offer


def test_check_loaded_refuses_another_model(awaiting: SimulatedEnclave) -> None:
    store = NonceStore()
    sealed = seal_model(_offer(awaiting, store), MODEL, awaiting=_awaiting())
    nonce = store.issue()
    result = awaiting.load_sealed(sealed, nonce=nonce)
    trust = TrustAnchors(simulated_keys=(awaiting.platform_public_key,))
    with pytest.raises(BindingMismatch):  # the quoted model digest is another one
        check_loaded(
            result.quote,
            sealed=sealed,
            code=APP,
            model=MODEL + b"!",
            nonce=nonce,
            policy=POLICY,
            trust=trust,
            nonce_store=store,
        )


def test_a_model_the_code_refuses_leaves_the_enclave_waiting() -> None:
    strict = "tests.tee.enclave_apps:strict"
    awaiting = awaiting_measurement(code_digest(CodeRef.parse(strict)))
    with SimulatedEnclave(timeout_s=60) as enclave:
        store = NonceStore()
        offer = enclave.offer_provisioning(strict, nonce=store.issue())
        public = parse_offer_output(offer.offer)
        with pytest.raises(SealedModelRejected, match=r"refused it \(ValueError\)") as refused:
            enclave.load_sealed(seal_model(public, b"junk", awaiting=awaiting), nonce=store.issue())
        assert "junk" not in str(refused.value)  # the type only: no text about the model
        offer = enclave.offer_provisioning(strict, nonce=store.issue())  # offer again
        public = parse_offer_output(offer.offer)
        result = enclave.load_sealed(
            seal_model(public, MODEL, awaiting=awaiting), nonce=store.issue()
        )
        assert result.quote.measurement == enclave.measurement
        assert enclave.run(b"q", nonce=store.issue()).output.startswith(MODEL + b"|q|")
