"""verification.consensus without a mesh: distances, decisions, receipts, manifests, reputation,
verdicts, and the calibrated tolerances of the real MiniLM weights."""

from __future__ import annotations

import json
import math

import pytest
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from verification.consensus import (
    BadReceipt,
    Decision,
    InvalidManifest,
    InvalidVerdict,
    Manifest,
    Receipt,
    Reputation,
    Tolerance,
    decide,
    decide_distances,
    distance,
    node_id_of,
    receipt_message,
    sign_verdict,
    span_digest,
    tensor_digest,
    verify_verdict,
)
from verification.consensus.manifest import build
from verification.consensus.verdict import WireTensor

GEN = torch.Generator().manual_seed(0)


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_distance_is_relative_per_token_and_symmetric() -> None:
    a = torch.randn(2, 5, 16, generator=GEN)
    a[0, 0] *= 1000  # a huge first token must not dominate the others
    b = a.clone()
    b[1, 3] += 0.01 * a[1, 3].norm() / 4 * torch.ones(16) / 1.0
    d = distance(a, b)
    assert d == pytest.approx(distance(b, a))
    assert d == pytest.approx(0.01, rel=1e-3)
    assert distance(a, a) == 0.0
    assert distance(a, a[:, :4]) == math.inf
    nan = a.clone()
    nan[0, 0, 0] = float("nan")
    assert distance(a, nan) == math.inf


def test_majority_decision_and_undecided_cases() -> None:
    x = torch.randn(1, 4, 8, generator=GEN)
    honest = [x + 1e-7 * torch.randn(x.shape, generator=GEN) for _ in range(3)]
    liar = torch.zeros_like(x)
    d = decide([honest[0], liar, honest[1]], 1e-5)
    assert d.decided and d.winner in (0, 2) and d.deviate == (1,) and set(d.agree) == {0, 2}
    assert not decide([honest[0], liar], 1e-5).decided  # 1 vs 1: no strict majority
    assert decide([honest[0], honest[1]], 1e-5).deviate == ()
    # Two colluding liars with the same answer outvote one honest node: the stated limit.
    assert decide([liar, liar.clone(), honest[0]], 1e-5).deviate == (2,)
    two_liars = decide([honest[0], liar, liar + 1, honest[1]], 1e-5)  # 2 of 4 is no majority
    assert not two_liars.decided


def test_tolerance_calibration_is_margin_times_twice_the_worst_variant() -> None:
    exact = torch.randn(1, 3, 8, generator=GEN, dtype=torch.float64)
    variants = [exact * (1 + 1e-6), exact * (1 - 3e-6)]
    tol = Tolerance.calibrate([(exact, variants)], margin=4.0)
    assert tol.eps_max == pytest.approx(3e-6, rel=1e-3)
    assert tol.value == pytest.approx(4 * 2 * 3e-6, rel=1e-3) and tol.samples == 2
    with pytest.raises(ValueError, match="finite"):
        Tolerance.calibrate([])


def _receipt(key: Ed25519PrivateKey, out: bytes = b"o") -> Receipt:
    args = {
        "model": "m",
        "start": 0,
        "end": 3,
        "session_id": "",
        "past_length": 0,
        "input_digest": tensor_digest("float32", [1], b"\0\0\0\0"),
        "output_digest": tensor_digest("float32", [1], out * 4),
        "node_id": node_id_of(_raw(key)),
    }
    return Receipt(**args, public_key=_raw(key), signature=key.sign(receipt_message(**args)))


def test_receipts_bind_every_field() -> None:
    key = Ed25519PrivateKey.generate()
    r = _receipt(key)
    r.verify()
    assert Receipt.from_json(json.loads(json.dumps(r.to_json()))) == r
    for field, value in [("end", 4), ("past_length", 1), ("node_id", "n2"), ("session_id", "s")]:
        forged = Receipt(**{**r.fields(), field: value})
        with pytest.raises(BadReceipt, match="bad signature|not derived from its key"):
            forged.verify()
    other = Receipt(**{**r.fields(), "public_key": _raw(Ed25519PrivateKey.generate())})
    with pytest.raises(BadReceipt):
        other.verify()
    # A receipt in another node's name, signed by a key of one's own: the id must be the key's.
    mallory = Ed25519PrivateKey.generate()
    args = {k: v for k, v in r.fields().items() if k not in ("public_key", "signature")}
    framed = Receipt(**args, public_key=_raw(mallory), signature=mallory.sign(r.message()))
    with pytest.raises(BadReceipt, match="not derived from its key"):
        framed.verify()


def test_span_digest_is_fixed_by_the_layer_digests() -> None:
    layers = [f"{i:064x}" for i in range(4)]
    assert span_digest(1, 3, layers[1:3]) != span_digest(0, 2, layers[1:3])  # position bound
    assert span_digest(1, 3, layers[1:3]) != span_digest(1, 3, [layers[1], layers[0]])
    with pytest.raises(ValueError, match="needs 2 layer digests"):
        span_digest(1, 3, layers[1:2])


def test_manifest_signature_pinning_and_tampering() -> None:
    layers = [f"{i:064x}" for i in range(3)]
    tol = Tolerance(1e-5, 1e-6, 4.0, 8, "test")
    publisher = Ed25519PrivateKey.generate()
    signed = build("m", layers, {(0, 3): tol}, {"inputs": "x"}).sign(publisher)
    text = signed.to_json()
    m = Manifest.from_json(text, publisher_key=_raw(publisher))
    assert m.span_digest(0, 3) == span_digest(0, 3, layers) and m.tolerance(0, 3) == tol
    with pytest.raises(InvalidManifest, match="no calibrated tolerance"):
        m.tolerance(0, 2)
    with pytest.raises(InvalidManifest, match="pinned publisher"):
        Manifest.from_json(text, publisher_key=_raw(Ed25519PrivateKey.generate()))
    data = json.loads(text)
    data["layer_digests"][1] = "f" * 64  # a node with other weights would now match
    with pytest.raises(InvalidManifest, match="bad publisher signature"):
        Manifest.from_json(json.dumps(data), publisher_key=_raw(publisher))
    unsigned = build("m", layers, {(0, 3): tol}, {}).to_json()
    with pytest.raises(InvalidManifest, match="signed by nobody"):
        Manifest.from_json(unsigned, publisher_key=_raw(publisher))
    assert not Manifest.from_json(unsigned, publisher_key=None).signed
    with pytest.raises(InvalidManifest, match="malformed"):
        Manifest.from_json('{"format": "secure-infer/manifest/v1"}', publisher_key=None)


def test_reputation_excludes_at_once_for_a_full_period_then_bans() -> None:
    now = [1099.0]  # one second before the end of epoch 10
    rep = Reputation(
        epoch_s=100, exclusion_epochs=1, ban_after=2, max_faults=2, clock=lambda: now[0]
    )
    assert rep.excluded("a") is None
    rep.convict("a", "v" * 64)
    assert rep.excluded("a").startswith("convicted in epoch 10")  # type: ignore[union-attr]
    now[0] = 1100.0
    assert rep.excluded("a") is not None  # a new epoch, but not a full period: still out
    now[0] = 1198.9
    assert rep.excluded("a") is not None
    now[0] = 1199.0
    assert rep.excluded("a") is None  # a full period after the conviction: back on probation
    rep.convict("a", "w" * 64)
    now[0] = 5000.0
    assert rep.excluded("a") == "banned after 2 convictions"
    assert rep.excluded("a", node_id="a-new-key") == "banned after 2 convictions"  # keyed by name
    # Faults count against one record (node id), within a sliding period, not against a name.
    now[0] = 5099.0
    rep.fault("id-b")
    assert rep.excluded("b", node_id="id-b") is None
    now[0] = 5100.0
    rep.fault("id-b")
    assert rep.excluded("b", node_id="id-b") == "2 faults in the last 100 s"
    assert rep.excluded("b", node_id="id-b2") is None and rep.excluded("b") is None
    now[0] = 5198.0
    assert rep.excluded("b", node_id="id-b") is not None  # the epoch changed, the faults are recent
    now[0] = 5199.0
    assert rep.excluded("b", node_id="id-b") is None


def test_reputation_takes_node_ids_by_keyword_and_forgets_old_faults() -> None:
    now = [0.0]
    rep = Reputation(epoch_s=100, max_faults=1, clock=lambda: now[0])
    rep.fault("id-a")
    # The old signature was excluded(node_id): a positional id must not pass for a name.
    with pytest.raises(TypeError):
        rep.excluded("a", "id-a")  # type: ignore[misc]
    with pytest.raises(TypeError):
        rep.standing("a", "id-a")  # type: ignore[misc]
    assert rep.excluded("a", node_id="id-a") == "1 faults in the last 100 s"
    for i in range(50):  # records gossiped once, each failing once
        rep.fault(f"gossip-{i}")
    assert rep.tracked_faults() == 51
    now[0] = 150.0
    assert rep.tracked_faults() == 0  # nothing kept once the faults are a period old
    rep.fault("id-b")
    assert rep.tracked_faults() == 1


def _tensor(t: torch.Tensor) -> WireTensor:
    t = t.contiguous()
    return WireTensor("float32", tuple(t.shape), t.numpy().tobytes())


def _signed_receipt(key: Ed25519PrivateKey, sent: WireTensor, out: WireTensor) -> Receipt:
    args = {
        "model": "m",
        "start": 0,
        "end": 1,
        "session_id": "",
        "past_length": 0,
        "input_digest": sent.digest(),
        "output_digest": out.digest(),
        "node_id": node_id_of(_raw(key)),
    }
    return Receipt(**args, public_key=_raw(key), signature=key.sign(receipt_message(**args)))


def _verdict(client: Ed25519PrivateKey, receipts, decision, evidence):  # type: ignore[no-untyped-def]
    return sign_verdict(
        client,
        model="m",
        start=0,
        end=1,
        epoch=3,
        time_s=1.0,
        receipts=receipts,
        decision=decision,
        step_tokens=2,
        evidence=evidence,
    )


def test_verdict_round_trip_and_forgeries() -> None:
    x = torch.randn(1, 2, 4, generator=GEN)
    good = x * 2
    bad = torch.zeros_like(x)
    keys = [Ed25519PrivateKey.generate() for _ in range(3)]
    outs = [good, bad, good.clone()]
    sent = _tensor(x)
    receipts = [_signed_receipt(k, sent, _tensor(o)) for k, o in zip(keys, outs, strict=True)]
    decision = decide(outs, 1e-6)
    client = Ed25519PrivateKey.generate()
    evidence = {j: (sent, _tensor(outs[j])) for j in range(3)}
    v = _verdict(client, receipts, decision, evidence)
    assert v.convicted == (node_id_of(_raw(keys[1])),)
    checked = verify_verdict(v.to_json(), client_key=_raw(client))
    assert checked.id == v.id
    with pytest.raises(InvalidVerdict, match="pinned"):
        verify_verdict(v.to_json(), client_key=_raw(keys[0]))
    data = json.loads(v.to_json())
    data["distances"][0][1] = 0.0
    with pytest.raises(InvalidVerdict, match="signature"):
        verify_verdict(json.dumps(data))
    # A client that lies about the distances, re-signing its lie, is caught by the evidence.
    lying = decide([good, bad, good.clone()], 1e-6)
    fake = Decision(
        lying.winner,
        lying.agree,
        lying.deviate,
        tuple(tuple(0.5 if i != j else 0.0 for j in range(3)) for i in range(3)),
        1.0,
    )
    with pytest.raises(InvalidVerdict, match="decision does not follow|does not match"):
        verify_verdict(_verdict(client, receipts, fake, evidence).to_json())
    # Against the manifest, the tolerance must be the published one for the span.
    layers = [f"{i:064x}" for i in range(2)]
    manifest = build("m", layers, {(0, 1): Tolerance(1e-6, 1e-7, 4.0, 1, "t")}, {})
    verify_verdict(v.to_json(), manifest=manifest)
    loose = build("m", layers, {(0, 1): Tolerance(1e-3, 1e-4, 4.0, 1, "t")}, {})
    with pytest.raises(InvalidVerdict, match="not the manifest's"):
        verify_verdict(v.to_json(), manifest=loose)


def test_a_conviction_verifies_only_with_evidence_that_recomputes_it() -> None:
    x = torch.randn(1, 2, 4, generator=GEN)
    good = x * 2
    sent = _tensor(x)
    honest = [Ed25519PrivateKey.generate() for _ in range(3)]
    client = Ed25519PrivateKey.generate()  # a malicious client: it signs whatever it likes
    claim = Decision(0, (0, 1), (2,), ((0.0, 0.0, 1.0), (0.0, 0.0, 1.0), (1.0, 1.0, 0.0)), 1e-6)
    # 1. A receipt in the victim's name under another key: the victim's id is not that key's.
    victim_id = node_id_of(_raw(honest[2]))
    mallory = Ed25519PrivateKey.generate()
    framed = _signed_receipt(mallory, sent, _tensor(torch.zeros_like(x)))
    args = {k: v for k, v in framed.fields().items() if k not in ("node_id", "signature")}
    args["node_id"] = victim_id
    forged = Receipt(**args, signature=mallory.sign(Receipt(**args, signature=b"").message()))
    receipts = [_signed_receipt(k, sent, _tensor(good)) for k in honest[:2]] + [forged]
    with pytest.raises(InvalidVerdict, match="not derived from its key"):
        verify_verdict(_verdict(client, receipts, claim, None).to_json())
    # 2. Three honest receipts with the same output, one "convicted" on stated distances alone.
    same = [_signed_receipt(k, sent, _tensor(good)) for k in honest]
    with pytest.raises(InvalidVerdict, match="unverifiable: no evidence"):
        verify_verdict(_verdict(client, same, claim, None).to_json())
    # ... and with the evidence, the recomputed distances give it away.
    evidence = {j: (sent, _tensor(good)) for j in range(3)}
    with pytest.raises(InvalidVerdict, match="does not match"):
        verify_verdict(_verdict(client, same, claim, evidence).to_json())
    # 3. Evidence for the winner and the convicted only: the others are the client's word.
    other = _tensor(x + 1)
    mixed = [
        _signed_receipt(honest[0], sent, _tensor(good)),
        _signed_receipt(honest[1], sent, _tensor(good)),
        _signed_receipt(honest[2], other, _tensor(torch.zeros_like(x))),  # another input
    ]
    partial = {0: (sent, _tensor(good)), 2: (other, _tensor(torch.zeros_like(x)))}
    with pytest.raises(InvalidVerdict, match="unverifiable: no evidence for replica"):
        verify_verdict(_verdict(client, mixed, claim, partial).to_json())
    # 4. With every replica's evidence, a replica sent another input cannot be convicted.
    full = {**partial, 1: (sent, _tensor(good))}
    with pytest.raises(InvalidVerdict, match="not the same step"):
        verify_verdict(_verdict(client, mixed, claim, full).to_json())


def test_minilm_tolerances_separate_rounding_from_a_one_percent_lie() -> None:
    from decentralized.models import load_client_parts, load_span
    from decentralized.models.calibrate import calibrate_tolerances

    tol = calibrate_tolerances("all-MiniLM-L6-v2", starts=[0])
    assert set(tol) == {(0, e) for e in range(1, 7)}
    assert all(t.value < 1e-4 and t.eps_max > 0 for t in tol.values())
    parts = load_client_parts("all-MiniLM-L6-v2")
    ids, mask = parts.tokenize(["An honest node on other hardware rounds differently."])
    hidden = parts.embed(ids)
    span = load_span("all-MiniLM-L6-v2", 0, 6, torch.device("cpu"))
    out = span.forward(hidden, mask)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # another honest execution
    try:
        again = span.forward(hidden, mask)
    finally:
        torch.set_num_threads(threads)
    assert distance(out, again) <= tol[(0, 6)].value
    noisy = out * (1 + 0.01 * torch.randn(out.shape, generator=GEN))
    assert distance(out, noisy) > 100 * tol[(0, 6)].value


def _five_replicas() -> tuple[
    list[Receipt], list[torch.Tensor], dict[int, tuple[WireTensor, WireTensor]]
]:
    x = torch.randn(1, 2, 4, generator=GEN)
    good, bad = x * 2, x * 3
    outs = [good, good.clone(), good.clone(), good.clone(), bad]
    sent = _tensor(x)
    keys = [Ed25519PrivateKey.generate() for _ in outs]
    receipts = [_signed_receipt(k, sent, _tensor(o)) for k, o in zip(keys, outs, strict=True)]
    evidence = {j: (sent, _tensor(o)) for j, o in enumerate(outs)}
    return receipts, outs, evidence


def _restate(
    d: Decision, rows: list[list[float]], winner: int | None, deviate: tuple[int, ...]
) -> Decision:
    agree = tuple(i for i in range(len(rows)) if i not in deviate)
    return Decision(winner, agree, deviate, tuple(tuple(r) for r in rows), d.tolerance)


def test_a_verdict_cannot_convict_its_winner_through_the_distance_matrix() -> None:
    receipts, outs, evidence = _five_replicas()
    client = Ed25519PrivateKey.generate()
    honest = decide(outs, 1e-5)
    assert honest.winner == 0 and honest.deviate == (4,)
    verify_verdict(_verdict(client, receipts, honest, evidence).to_json())
    rows = [list(r) for r in honest.distances]
    # The reviewer's attack: the winner's distance to itself set to inf, the winner "deviates".
    diag = [list(r) for r in rows]
    diag[0][0] = math.inf
    with pytest.raises(InvalidVerdict, match=r"distance \[0\]\[0\] of a replica to itself"):
        verify_verdict(
            _verdict(client, receipts, _restate(honest, diag, 0, (0, 4)), evidence).to_json()
        )
    # A clean diagonal, but the winner named among the deviating replicas anyway.
    with pytest.raises(InvalidVerdict, match="winner, replica 0, is also named as deviating"):
        verify_verdict(
            _verdict(client, receipts, _restate(honest, rows, 0, (0, 4)), evidence).to_json()
        )
    # An asymmetric matrix (the verifier used to read the upper triangle only).
    skew = [list(r) for r in rows]
    skew[3][0] = math.inf
    with pytest.raises(InvalidVerdict, match=r"distances \[0\]\[3\] and \[3\]\[0\] differ"):
        verify_verdict(
            _verdict(client, receipts, _restate(honest, skew, 0, (3, 4)), evidence).to_json()
        )
    # The stated decision must be exactly the recomputed one: not another honest replica
    # convicted, nor a deviating one left out, nor another winner.
    for winner, deviate in ((0, (3, 4)), (0, ()), (1, (4,)), (None, (0, 1, 2, 3, 4))):
        with pytest.raises(InvalidVerdict, match="decision does not follow"):
            verify_verdict(
                _verdict(
                    client, receipts, _restate(honest, rows, winner, deviate), evidence
                ).to_json()
            )


def test_one_receipt_counted_twice_does_not_outvote_an_honest_replica() -> None:
    x = torch.randn(1, 2, 4, generator=GEN)
    good, bad = x * 2, x * 3
    sent = _tensor(x)
    mallory, honest = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    rm, rh = (
        _signed_receipt(mallory, sent, _tensor(bad)),
        _signed_receipt(honest, sent, _tensor(good)),
    )
    outs = [bad, bad, good]
    decision = decide(outs, 1e-5)
    assert decision.deviate == (2,)  # on the outputs alone, the honest one would lose
    evidence = {j: (sent, _tensor(o)) for j, o in enumerate(outs)}
    client = Ed25519PrivateKey.generate()
    with pytest.raises(InvalidVerdict, match="receipt 1 is a second receipt of node"):
        verify_verdict(_verdict(client, [rm, rm, rh], decision, evidence).to_json())


def test_decide_distances_is_the_rule_decide_applies() -> None:
    x = torch.randn(1, 3, 8, generator=GEN)
    outs = [x, x * 2, x.clone(), x + 1e-9]
    d = decide(outs, 1e-5)
    again = decide_distances(d.distances, 1e-5)
    assert (again.winner, again.agree, again.deviate) == (d.winner, d.agree, d.deviate)
    with pytest.raises(ValueError, match="square"):
        decide_distances([[0.0, 1.0]], 1e-5)
