"""The simulated enclave in a real child process: protocol end to end, and every refusal."""

from __future__ import annotations

import dataclasses
import logging
import os
from datetime import UTC, datetime, timedelta

import pytest
import torch

from tee import (
    BadChain,
    BadSignature,
    BindingMismatch,
    CodeRef,
    EnclaveError,
    MeasurementNotAllowed,
    NonceMismatch,
    NonceStore,
    Platform,
    Policy,
    Quote,
    QuoteTooOld,
    ReplayedNonce,
    SimulatedEnclave,
    SimulatedNotAllowed,
    StaleNonce,
    TrustAnchors,
    VerifiedQuote,
    code_digest,
    enclave_measurement,
    model_digest,
    verify_quote,
)
from tee.measurement import input_digest, report_data, result_digest
from tee.tensors import decode_tensors, encode_tensors

from .conftest import APP, MODEL, simulated_policy
from .forge import flip_bit


def _run(enclave: SimulatedEnclave, store: NonceStore, data: bytes = b"input"):
    nonce = store.issue()
    return nonce, enclave.run(data, nonce=nonce)


def _check(
    enclave: SimulatedEnclave,
    quote: Quote,
    output: bytes,
    nonce: bytes,
    store: NonceStore,
    **kw: object,
) -> VerifiedQuote:
    args: dict[str, object] = {
        "input": b"input",  # what the client asked `_run` to compute on
        "policy": simulated_policy(enclave),
        "trust": TrustAnchors(simulated_keys=(enclave.platform_public_key,)),
        "nonce_store": store,
    } | kw
    return verify_quote(quote, output=output, nonce=nonce, **args)  # type: ignore[arg-type]


def test_runs_in_its_own_process_and_measures_code_and_model(enclave) -> None:
    assert enclave.running
    store = NonceStore()
    nonce, result = _run(enclave, store)
    model, data, pid = result.output.split(b"|")
    assert (model, data) == (MODEL, b"input")
    assert int(pid) == enclave.pid != os.getpid()
    expected = enclave_measurement(code_digest(CodeRef.parse(APP)), model_digest(MODEL))
    assert enclave.measurement == expected == result.quote.measurement
    assert (
        result.simulated and result.platform is Platform.SIMULATED and "INSECURE" in repr(enclave)
    )


def test_quote_verifies_only_with_explicit_opt_in(enclave, caplog) -> None:
    store = NonceStore()
    nonce, result = _run(enclave, store)
    with pytest.raises(SimulatedNotAllowed):
        _check(
            enclave,
            result.quote,
            result.output,
            nonce,
            store,
            policy=simulated_policy(enclave, allow_simulated=False),
        )
    with caplog.at_level(logging.WARNING, logger="tee.simulated"):
        verified = _check(enclave, result.quote, result.output, nonce, store)
    assert (
        verified.simulated and verified.claims.simulated and verified.platform is Platform.SIMULATED
    )
    assert "SIMULATED" in caplog.text


def test_replayed_wrong_and_unknown_nonces(enclave) -> None:
    store = NonceStore()
    nonce, result = _run(enclave, store)
    with pytest.raises(NonceMismatch):
        _check(enclave, result.quote, result.output, store.issue(), store)
    _check(enclave, result.quote, result.output, nonce, store)
    with pytest.raises(ReplayedNonce):
        _check(enclave, result.quote, result.output, nonce, store)
    with pytest.raises(StaleNonce):  # a nonce this client never issued
        _check(enclave, result.quote, result.output, nonce, NonceStore())


def test_tampered_result_is_refused(enclave) -> None:
    store = NonceStore()
    nonce, result = _run(enclave, store)
    q = result.quote
    with pytest.raises(BindingMismatch):  # the host swaps the output
        _check(enclave, q, b"another answer", nonce, store)
    forged_digest = result_digest(b"another answer")
    with pytest.raises(BindingMismatch):  # ... and the quoted digest
        _check(
            enclave,
            dataclasses.replace(q, result_digest=forged_digest),
            b"another answer",
            nonce,
            store,
        )
    rebound = dataclasses.replace(  # ... and the envelope's report data: the signed one differs
        q,
        result_digest=forged_digest,
        report_data=report_data(nonce, q.measurement, q.input_digest, forged_digest),
    )
    with pytest.raises(BindingMismatch):
        _check(enclave, rebound, b"another answer", nonce, store)
    with pytest.raises(BadSignature):
        _check(
            enclave,
            dataclasses.replace(q, evidence=flip_bit(q.evidence, len(q.evidence) - 3)),
            result.output,
            nonce,
            store,
        )
    _check(enclave, q, result.output, nonce, store)  # the untouched quote still verifies


def test_a_quote_for_another_input_is_refused(enclave) -> None:
    """The host runs the measured code on an input of its choosing: a genuine quote, but not
    for the client's question."""
    store = NonceStore()
    nonce, result = _run(enclave, store, data=b"the host's input")
    with pytest.raises(BindingMismatch, match="another input"):
        _check(enclave, result.quote, result.output, nonce, store)  # the client sent b"input"
    forged = dataclasses.replace(result.quote, input_digest=input_digest(b"input"))
    with pytest.raises(BindingMismatch, match="report data"):
        _check(enclave, forged, result.output, nonce, store)
    _check(enclave, result.quote, result.output, nonce, store, input=b"the host's input")


def test_unpinned_platform_key_and_other_measurements(enclave) -> None:
    store = NonceStore()
    nonce, result = _run(enclave, store)
    with SimulatedEnclave(timeout_s=60) as other:
        with pytest.raises(BadChain):
            _check(
                enclave,
                result.quote,
                result.output,
                nonce,
                store,
                trust=TrustAnchors(simulated_keys=(other.platform_public_key,)),
            )
    with pytest.raises(MeasurementNotAllowed):
        _check(
            enclave,
            result.quote,
            result.output,
            nonce,
            store,
            policy=simulated_policy(enclave, allowed_code_measurements=frozenset({bytes(48)})),
        )


def test_old_quote(enclave) -> None:
    store = NonceStore()
    nonce, result = _run(enclave, store)
    later = datetime.now(UTC) + timedelta(seconds=301)
    with pytest.raises(QuoteTooOld):
        _check(enclave, result.quote, result.output, nonce, store, now=later)


def test_quote_json_round_trip(enclave) -> None:
    store = NonceStore()
    nonce, result = _run(enclave, store)
    quote = Quote.from_json(result.quote.to_json())
    assert quote == result.quote and '"simulated": true' in result.quote.to_json()
    _check(enclave, quote, result.output, nonce, store)


def test_handler_errors_timeouts_and_misuse_raise_enclave_error() -> None:
    with SimulatedEnclave(timeout_s=30) as enc:
        with pytest.raises(EnclaveError):
            enc.run(b"x", nonce=os.urandom(32))  # nothing loaded
        enc.load("tests.tee.enclave_apps:failing", b"")
        with pytest.raises(EnclaveError, match="failed on purpose"):
            enc.run(b"fail", nonce=os.urandom(32))
        assert enc.run(b"ok", nonce=os.urandom(32)).output == b"ok"  # still serving
        with pytest.raises(EnclaveError, match="already loaded"):
            enc.load(APP, MODEL)
        with pytest.raises(ValueError, match="nonce"):
            enc.run(b"x", nonce=b"short")
        enc._timeout_s = 0.5  # shorten only this run, not the start-up
        with pytest.raises(EnclaveError, match="in time"):
            enc.run(b"slow", nonce=os.urandom(32))
        assert enc._proc.poll() is not None  # a timed-out enclave is stopped
        assert not enc.running
    with pytest.raises(EnclaveError, match="not running"):
        enc.run(b"x", nonce=os.urandom(32))


def test_torch_model_runs_inside_the_enclave() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 3)
    weights = encode_tensors(dict(layer.state_dict()))
    x = torch.randn(4, 8)
    store = NonceStore()
    with SimulatedEnclave(timeout_s=120) as enc:
        measurement = enc.load("tests.tee.torch_apps:linear_classifier", weights)
        nonce = store.issue()
        request = encode_tensors({"x": x})
        result = enc.run(request, nonce=nonce)
        verified = verify_quote(
            result.quote,
            input=request,
            output=result.output,
            nonce=nonce,
            policy=Policy(
                allowed_launch_measurements=None,
                allowed_code_measurements=frozenset({measurement}),
                allow_simulated=True,
            ),
            trust=TrustAnchors(simulated_keys=(enc.platform_public_key,)),
            nonce_store=store,
        )
    probs = decode_tensors(result.output)["probs"]
    with torch.no_grad():
        expected = torch.softmax(layer(x), dim=-1)
    torch.testing.assert_close(probs, expected, rtol=0, atol=1e-6)
    assert verified.simulated


GOOD_APP = b"""def make(model):
    return lambda data: b"good|" + model + b"|" + data
"""
EVIL_APP = b"""def make(model):
    return lambda data: b"evil|" + model  # leaks the model, whatever it is asked
"""


def test_the_enclave_runs_the_source_it_measures_not_a_planted_pyc(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python would run a cached `.pyc` whose header matches only the source's size and
    modification time; the enclave executes the very bytes it hashes."""
    import importlib.util
    import py_compile

    from tee import code_digest, enclave_measurement, model_digest

    package = tmp_path / "planted_pkg"
    package.mkdir()
    (package / "__init__.py").write_bytes(b"")
    source = package / "app.py"
    evil = EVIL_APP.ljust(len(GOOD_APP), b"#")[: len(GOOD_APP)]
    assert len(evil) == len(GOOD_APP)
    source.write_bytes(evil)
    stamp = os.stat(source).st_mtime
    py_compile.compile(str(source), cfile=importlib.util.cache_from_source(str(source)))
    source.write_bytes(GOOD_APP)  # same size, same modification time: the .pyc looks fresh
    os.utime(source, (stamp, stamp))
    monkeypatch.syspath_prepend(str(tmp_path))
    store = NonceStore()
    with SimulatedEnclave(timeout_s=60) as enclave:
        measured = enclave.load("planted_pkg.app:make", b"secret")
        good = code_digest(CodeRef.parse("planted_pkg.app:make"), GOOD_APP)
        assert measured == enclave_measurement(good, model_digest(b"secret"))
        assert enclave.run(b"q", nonce=store.issue()).output == b"good|secret|q"


def test_an_enclave_that_failed_to_load_code_serves_nothing_more() -> None:
    """The host named code that does not load: its top level may have run all the same, so
    the enclave does not go on as if it were fresh."""
    store = NonceStore()
    for bad in ("tests.tee.enclave_apps:no_such_factory", "tests.tee.no_such_module:f"):
        with SimulatedEnclave(timeout_s=60) as enclave:
            with pytest.raises(EnclaveError):
                enclave.load(bad, MODEL)
            with pytest.raises(EnclaveError, match="serves nothing more"):
                enclave.load(APP, MODEL)
            with pytest.raises(EnclaveError, match="serves nothing more"):
                enclave.offer_provisioning(APP, nonce=store.issue())
            assert enclave.running
