"""verify="consensus" end to end: real node processes, honest and lying, over mTLS.

Each lie is caught on the request that carries it, convicted with a client-signed verdict whose
evidence verifies independently, and the liar is excluded from the next request of the epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sentence_transformers import SentenceTransformer

from decentralized.models._files import minilm_dir
from secure_infer import ConsensusOptions, InvalidManifest, NoConsensus
from secure_infer.client import Client
from secure_infer.localmesh import LocalMesh
from tests.consensus.conftest import MODEL
from verification.consensus import InvalidVerdict, verify_verdict
from verification.consensus.verdict import parse_verdict

TEXTS = [
    "The film's second half drags, but the performances carry it.",
    "A quiet, patient documentary about glaciers and the people who measure them.",
]
OTHER = [
    "I walked out after forty minutes; the plot made no sense at all.",
    "Funny, warm and far smarter than its trailer suggests.",
]


@pytest.fixture(scope="module")
def reference() -> SentenceTransformer:
    return SentenceTransformer(str(minilm_dir()), device="cpu")


def _check_embeddings(emb: np.ndarray, texts: list[str], ref: SentenceTransformer) -> None:
    want = ref.encode(texts)
    cos = (emb * want).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.99999


def test_honest_replicas_agree_within_the_calibrated_tolerance(
    client: Client, reference: SentenceTransformer
) -> None:
    res = client.embed(
        MODEL,
        TEXTS,
        verify="consensus",
        consensus=ConsensusOptions(k=3, candidates=("h1", "h2", "h3")),
    )
    _check_embeddings(res.embeddings, TEXTS, reference)
    report = res.consensus
    assert report is not None and report.checked and report.k == 3
    assert [(s.start, s.end) for s in report.spans] == [(0, 3), (3, 6)]
    for span in report.spans:
        assert sorted(span.replicas) == ["h1", "h2", "h3"]
        assert span.convicted == () and span.faults == () and span.escalations == 0
        assert 0 <= span.max_agreeing_distance <= span.tolerance < 1e-3
    assert report.verdicts == ()  # no dispute, nothing to sign
    assert {h.name for h in res.route} == {"h1", "h2", "h3"} and len(res.route) == 6
    assert "built by this client" in report.manifest


@pytest.mark.parametrize("liar", ["noise", "zeros", "wrong", "stale", "replay"])
def test_a_lying_replica_is_convicted_and_excluded_within_the_epoch(
    client: Client, reference: SentenceTransformer, liar: str, tmp_path: Path
) -> None:
    log = tmp_path / "verdicts.jsonl"
    options = ConsensusOptions(k=3, candidates=("h1", "h2", liar), verdict_log=log)
    # stale and replay answer honestly the first time they see a shape (stale then repeats its
    # [0, 3) reply on [3, 6)); the others lie on their first forward.
    for texts in (TEXTS, OTHER):
        res = client.embed(MODEL, texts, verify="consensus", consensus=options)
        _check_embeddings(res.embeddings, texts, reference)
        assert res.consensus is not None
        if res.consensus.convicted or liar not in ("stale", "replay"):
            break
    report = res.consensus
    assert report is not None
    # Convicted on the first span it lied on, and excluded at once: not asked for later spans.
    assert report.convicted == (liar,)
    lied = next(i for i, s in enumerate(report.spans) if s.convicted)
    assert all(liar not in s.replicas for s in report.spans[lied + 1 :])
    (verdict,) = report.verdicts
    assert verdict.convicted == (_node_id(client, liar),)
    # The verdict verifies on its own: the client's signature, the nodes' receipts, the evidence.
    logged = [line for line in log.read_text().splitlines() if line]
    assert len(logged) == 1
    checked = verify_verdict(
        logged[0], client_key=verdict.client_key, manifest=client.manifest(MODEL)
    )
    # The evidence covers every replica, so the whole decision is recomputed from it.
    assert checked.id == verdict.id and set(checked.evidence) == set(range(len(checked.receipts)))
    # The liar is excluded for the rest of the epoch: the next request plans without it.
    options2 = ConsensusOptions(k=2, candidates=("h1", "h2", liar))
    after = client.embed(MODEL, OTHER, verify="consensus", consensus=options2)
    assert after.consensus is not None
    assert liar not in {n for s in after.consensus.spans for n in s.replicas}
    assert after.consensus.refused[liar].startswith("convicted in epoch")
    assert client.reputation.standing(liar)["convictions"] == 1


def _node_id(client: Client, name: str) -> str:
    return next(n["node_id"] for n in client.nodes() if n["name"] == name)


def test_a_forged_verdict_does_not_verify(client: Client, tmp_path: Path) -> None:
    log = tmp_path / "v.jsonl"
    client.embed(
        MODEL,
        TEXTS,
        verify="consensus",
        consensus=ConsensusOptions(k=3, candidates=("h1", "h2", "zeros"), verdict_log=log),
    )
    text = log.read_text().splitlines()[0]
    data = json.loads(text)
    verify_verdict(text)
    # The client claims the honest node lied: its signature no longer covers the body.
    data["deviate"] = [data["winner"]]
    with pytest.raises(InvalidVerdict, match="signature"):
        verify_verdict(json.dumps(data))
    # Re-signed by a client that swaps the evidence: the receipts expose it.
    v = parse_verdict(text)
    (liar,) = v.deviate
    swapped = dict(v.evidence)
    swapped[liar] = (swapped[liar][0], swapped[v.winner][1])  # pretend the liar answered right
    from verification.consensus.verdict import sign_verdict

    forged = sign_verdict(
        Ed25519PrivateKey.generate(),
        model=v.model,
        start=v.start,
        end=v.end,
        epoch=v.epoch,
        time_s=v.time_s,
        receipts=v.receipts,
        decision=_decision(v),
        step_tokens=v.step_tokens,
        evidence=swapped,
    )
    with pytest.raises(InvalidVerdict, match="does not hash to its receipt"):
        verify_verdict(forged.to_json())


def _decision(v):  # type: ignore[no-untyped-def]
    from verification.consensus import Decision

    agree = tuple(i for i in range(len(v.receipts)) if i not in v.deviate)
    return Decision(v.winner, agree, v.deviate, v.distances, v.tolerance)


def test_two_disagreeing_replicas_escalate_to_a_third(
    client: Client, reference: SentenceTransformer
) -> None:
    # k = 2 among {h1, h2, zeros}: whenever zeros is drawn, the pair disagrees and the span
    # escalates to the remaining node, whose vote convicts zeros. Drawn with probability 2/3
    # per request; ten requests leave it undrawn with probability (1/3)^10 = 2e-5.
    options = ConsensusOptions(k=2, max_replicas=3, candidates=("h1", "h2", "zeros"))
    for i in range(10):
        texts = [f"{TEXTS[0]} ({i})"]
        res = client.embed(MODEL, texts, verify="consensus", consensus=options)
        _check_embeddings(res.embeddings, texts, reference)
        assert res.consensus is not None
        if res.consensus.convicted:
            span = next(s for s in res.consensus.spans if s.convicted)
            assert span.convicted == ("zeros",) and span.escalations == 1
            assert len(span.replicas) == 3
            return
    pytest.fail("zeros was never drawn in ten requests")


def test_no_majority_and_nobody_left_is_an_error(client: Client) -> None:
    options = ConsensusOptions(k=2, max_replicas=3, candidates=("h1", "zeros"))
    with pytest.raises(NoConsensus, match=r"\[0, 3\).*disagree"):
        client.embed(MODEL, TEXTS, verify="consensus", consensus=options)
    # Nobody was convicted: with two replicas the client cannot tell which one lied.
    assert all(
        client.reputation.excluded(n["name"], node_id=n["node_id"]) is None for n in client.nodes()
    )


def test_a_replica_that_dies_mid_request_is_replaced(
    client: Client, reference: SentenceTransformer, mesh: LocalMesh
) -> None:
    options = ConsensusOptions(k=3, candidates=("h1", "h2", "h3", "dropper"))
    # The dropper dies on its first forward; draw until it is among the three replicas.
    for _ in range(12):
        if not mesh.nodes["dropper"].alive:
            break
        res = client.embed(MODEL, TEXTS, verify="consensus", consensus=options)
        _check_embeddings(res.embeddings, TEXTS, reference)
    assert not mesh.nodes["dropper"].alive
    assert res.consensus is not None
    # It was drawn for [0, 3), or (not drawn there) for [3, 6): the span where it died.
    span = next(s for s in res.consensus.spans if s.faults)
    assert any(f.startswith("dropper:") for f in span.faults)
    assert "dropper" not in span.replicas and len(span.replicas) == 3  # replaced by the fourth
    assert res.consensus.convicted == ()  # dying is a fault, not a lie
    assert mesh.nodes["h1"].alive  # and the mesh keeps serving


def test_a_node_whose_weight_commitment_does_not_match_is_refused(client: Client) -> None:
    options = ConsensusOptions(k=2, candidates=("h1", "h2", "badcommit"))
    res = client.embed(MODEL, TEXTS, verify="consensus", consensus=options)
    assert res.consensus is not None
    assert "badcommit" not in {n for s in res.consensus.spans for n in s.replicas}
    assert "does not match the manifest" in res.consensus.refused["badcommit"]


def test_a_record_span_outside_the_model_is_refused_for_that_span_only(
    client: Client, reference: SentenceTransformer
) -> None:
    # badspan serves [0, 3) and [3, 6) honestly and also announces [4, 9) of a 6-layer model.
    options = ConsensusOptions(k=3, candidates=("h1", "h2", "badspan"))
    for texts in (TEXTS, OTHER):
        res = client.embed(MODEL, texts, verify="consensus", consensus=options)
        _check_embeddings(res.embeddings, texts, reference)
        assert res.consensus is not None
        assert "[4, 9) is outside the model" in res.consensus.refused["badspan"]
        # Its spans the manifest covers stay eligible: k = 3 of three names takes it on both.
        assert all(sorted(s.replicas) == ["badspan", "h1", "h2"] for s in res.consensus.spans)
    # The manifest is calibrated once, not again on every request for the span it cannot cover.
    assert client.manifest(MODEL) is client.manifest(MODEL)


def test_a_replica_refusing_with_any_status_is_a_fault_not_an_abort(
    client: Client, reference: SentenceTransformer, mesh: LocalMesh
) -> None:
    from secure_infer import NoRoute

    # refuse answers every forward with OUT_OF_RANGE (not a fail-over code of plain chains).
    options = ConsensusOptions(k=3, candidates=("h1", "h2", "refuse"))
    res = client.embed(MODEL, TEXTS, verify="consensus", consensus=options)
    _check_embeddings(res.embeddings, TEXTS, reference)
    assert res.consensus is not None and res.consensus.convicted == ()
    first = res.consensus.spans[0]
    assert [f.split(":")[0] for f in first.faults] == ["refuse"]
    assert "OUT_OF_RANGE" in first.faults[0]
    # Nobody was left to replace it: the two replicas that answered decide.
    assert sorted(first.replicas) == ["h1", "h2"] and first.decisions == 1
    standing = client.reputation.standing("refuse", node_id=_node_id(client, "refuse"))
    assert standing["recent_faults"] >= 1 and standing["convictions"] == 0
    # Too few answers to decide: a clear error, and every node keeps serving.
    with (
        Client(mesh.seeds, tls=mesh.client_tls()) as fresh,
        pytest.raises(NoRoute, match="no decision is possible.*OUT_OF_RANGE"),
    ):
        fresh.embed(
            MODEL,
            TEXTS,
            verify="consensus",
            consensus=ConsensusOptions(k=2, candidates=("h1", "refuse")),
        )
    assert mesh.nodes["refuse"].alive and mesh.nodes["h1"].alive


def test_one_certificate_fills_one_replica_and_its_conviction_covers_all_its_keys(
    client: Client, reference: SentenceTransformer
) -> None:
    # Two processes with two keys behind the one certificate "sybil", both returning zeros.
    ids = {n["node_id"] for n in client.nodes() if n["name"] == "sybil"}
    assert len(ids) == 2
    options = ConsensusOptions(k=3, candidates=("h1", "h2", "sybil"))
    res = client.embed(MODEL, TEXTS, verify="consensus", consensus=options)
    _check_embeddings(res.embeddings, TEXTS, reference)  # the two zeros never outvote h1, h2
    assert res.consensus is not None
    assert sorted(res.consensus.spans[0].replicas) == ["h1", "h2", "sybil"]
    assert res.consensus.convicted == ("sybil",)
    assert client.reputation.standing("sybil")["convictions"] == 1
    # The conviction is the name's: its other key does not bring it back within the period.
    after = client.embed(
        MODEL,
        OTHER,
        verify="consensus",
        consensus=ConsensusOptions(k=2, candidates=("h1", "h2", "sybil")),
    )
    assert after.consensus is not None
    assert all("sybil" not in s.replicas for s in after.consensus.spans)
    assert after.consensus.refused["sybil"].startswith("convicted in epoch")


def test_unchecked_requests_are_planned_over_the_same_spans_as_checked_ones(
    client: Client,
) -> None:
    from secure_infer import NoRoute

    # solo alone serves [0, 6): no second node could ever be compared with it, so under
    # verify="consensus" it must carry no request, checked or not; otherwise every request it
    # gets would be one it knows is unchecked.
    options = ConsensusOptions(k=2, check_rate=0.01, candidates=("h1", "h2", "solo"))
    unchecked = 0
    for i in range(4):
        res = client.embed(MODEL, [f"{TEXTS[0]} ({i})"], verify="consensus", consensus=options)
        assert res.consensus is not None
        unchecked += not res.consensus.checked
        assert [(s.start, s.end) for s in res.consensus.spans] == [(0, 3), (3, 6)]
        assert "solo" not in {h.name for h in res.route}
    assert unchecked >= 1  # check_rate 0.01: all four checked with probability 1e-8
    # Where no span has k eligible nodes, an unchecked request fails like a checked one.
    alone = ConsensusOptions(k=2, check_rate=0.01, candidates=("h1", "solo"))
    for _ in range(3):
        with pytest.raises(NoRoute, match="with 2 eligible nodes"):
            client.embed(MODEL, TEXTS, verify="consensus", consensus=alone)


def test_a_published_manifest_is_checked_against_the_pinned_publisher(
    client: Client, tmp_path: Path, mesh: LocalMesh
) -> None:
    publisher = Ed25519PrivateKey.generate()
    pinned = publisher.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    path = tmp_path / "manifest.json"
    client.manifest(MODEL).sign(publisher).save(path)
    options = ConsensusOptions(k=2, candidates=("h1", "h2"), manifest=path, publisher_key=pinned)
    res = client.embed(MODEL, TEXTS, verify="consensus", consensus=options)
    assert res.consensus is not None and res.consensus.manifest.startswith("published, signed")
    other = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    with (
        Client(mesh.seeds, tls=mesh.client_tls()) as fresh,
        pytest.raises(InvalidManifest, match="pinned publisher"),
    ):
        fresh.manifest(MODEL, ConsensusOptions(manifest=path, publisher_key=other))
    data = json.loads(path.read_text())
    data["tolerances"]["0-3"]["value"] = 1.0  # a looser tolerance lets liars through
    path.write_text(json.dumps(data))
    with (
        Client(mesh.seeds, tls=mesh.client_tls()) as fresh,
        pytest.raises(InvalidManifest, match="bad publisher signature"),
    ):
        fresh.manifest(MODEL, ConsensusOptions(manifest=path, publisher_key=pinned))


def test_bad_options_are_refused(client: Client) -> None:
    from secure_infer import InvalidRequest

    with pytest.raises(InvalidRequest, match="verify must be"):
        client.embed(MODEL, TEXTS, verify="majority")
    with pytest.raises(InvalidRequest, match="needs verify='consensus'"):
        client.embed(MODEL, TEXTS, consensus=ConsensusOptions())
    with pytest.raises(InvalidRequest, match="privacy must be 'split'"):
        client.embed(MODEL, TEXTS, privacy="mpc", verify="consensus")
    with pytest.raises(ValueError, match="k >= 2"):
        ConsensusOptions(k=1)
    from secure_infer import NoRoute

    with pytest.raises(NoRoute, match="with 3 eligible nodes"):
        client.embed(
            MODEL,
            TEXTS,
            verify="consensus",
            consensus=ConsensusOptions(k=3, candidates=("h1", "h2")),
        )


def test_cli_infer_with_consensus_then_verdicts_and_manifests_are_checked(
    mesh: LocalMesh, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from secure_infer import cli

    log = tmp_path / "verdicts.jsonl"
    base = ["--seeds", ",".join(mesh.seeds), "--certs", str(mesh.certs_dir)]
    args = ["infer", *base, "--model", MODEL, "--text", TEXTS[0], "--verify", "consensus"]
    # Two honest replicas and zeros on each span: the CLI reports the conviction.
    lying = ["--k", "3", "--candidates", "h1,h2,zeros", "--verdict-log", str(log), "--json"]
    assert cli.main([*args, *lying]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["consensus"]["k"] == 3 and len(doc["embeddings"]) == 1
    assert doc["consensus"]["spans"][0]["convicted"] == ["zeros"]
    assert all(s["max_agreeing_distance"] <= s["tolerance"] for s in doc["consensus"]["spans"])
    # The verdict checks out from the command line.
    assert cli.main(["verdict", str(log)]) == 0
    assert "1 verdict(s) verified" in capsys.readouterr().out
    args += ["--candidates", "h1,h2,h3"]
    # A published, signed manifest: build, check, and refuse under another key.
    key = Ed25519PrivateKey.generate()
    pem = tmp_path / "publisher.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    out = tmp_path / "minilm.manifest.json"
    assert (
        cli.main(["manifest", "build", "--model", MODEL, "--out", str(out), "--sign-key", str(pem)])
        == 0
    )
    assert "21 span tolerances" in capsys.readouterr().out
    assert cli.main(["manifest", "verify", str(out), "--publisher-key", _raw_hex(key)]) == 0
    other = _raw_hex(Ed25519PrivateKey.generate())
    assert cli.main(["manifest", "verify", str(out), "--publisher-key", other]) == 1
    assert "pinned publisher" in capsys.readouterr().err
    assert cli.main([*args, "--manifest", str(out), "--publisher-key", _raw_hex(key)]) == 0
    assert "published, signed" in capsys.readouterr().out


def _raw_hex(key: Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        .hex()
    )


def test_a_node_refusing_a_plain_request_is_failed_over_not_obeyed(mesh: LocalMesh) -> None:
    """Plain split inference (no consensus): a node answering any error status, here
    OUT_OF_RANGE, is banned and the request fails over; it cannot abort the request."""
    from secure_infer import NoRoute

    with Client(mesh.seeds, tls=mesh.client_tls()) as fresh:
        mesh_client = fresh._mesh  # the SDK's mesh client: which nodes it bans
        refuse = _node_id(fresh, "refuse")
        for node in fresh.nodes():  # leave the planner the refusing node only
            if node["node_id"] != refuse:
                mesh_client.ban(node["node_id"])
        with pytest.raises(NoRoute, match="after refuse failed.*OUT_OF_RANGE"):
            fresh.embed(MODEL, TEXTS)
        assert refuse in mesh_client.banned()
    assert mesh.nodes["refuse"].alive
