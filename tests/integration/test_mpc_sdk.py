"""`client.embed(..., privacy="mpc")` through a mesh of real node daemons over mTLS.

Four nodes run all-MiniLM-L6-v2 under MPC; every session takes two parties and a dealer among
them, each rank in its own process on its node, all traffic on the MPCRelay gRPC mailboxes.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from decentralized.v1 import mpc_pb2
from secure_infer import Client, InvalidRequest, MPCOptions, NoRoute, UnknownModel
from secure_infer.localmesh import LocalMesh, NodeSpec
from tests.conftest import MINILM, mpc_stub, start_mesh

pytestmark = [pytest.mark.grpc, pytest.mark.multiparty]

SENTENCES = [
    "The cat sat quietly on the warm windowsill.",
    "Secure multiparty computation keeps inputs private.",
]
MIN_COSINE = 0.999
NAMES = ("mpc-a", "mpc-b", "mpc-c", "mpc-d")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    specs = [NodeSpec(name=name, mpc_models=(MINILM,)) for name in NAMES]
    mesh = start_mesh(tmp_path_factory.mktemp("mpc-mesh"), specs)
    yield mesh
    mesh.stop()


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    from decentralized.models._files import minilm_dir

    model = SentenceTransformer(str(minilm_dir()), device="cpu")
    return model.encode(SENTENCES, normalize_embeddings=True)


def _client(mesh: LocalMesh) -> Client:
    return Client(mesh.seeds, tls=mesh.client_tls())


@pytest.mark.parametrize("threat_model", ["input_private", "weights_private"])
def test_mpc_embeddings_match_plaintext(
    mesh: LocalMesh, reference: np.ndarray, threat_model: str
) -> None:
    with _client(mesh) as client:
        result = client.embed(
            MINILM, SENTENCES, privacy="mpc", mpc=MPCOptions(threat_model=threat_model)
        )
    cosines = (result.embeddings * reference).sum(1)
    assert cosines.min() >= MIN_COSINE, cosines
    report = result.mpc
    assert report is not None and report.threat_model == threat_model
    assert [p.role for p in report.parties] == ["party 0", "party 1", "dealer"]
    assert len({p.name for p in report.parties}) == 3
    assert {p.name for p in report.parties} <= set(NAMES)
    assert report.trusted_dealer and not report.failed_attempts
    assert report.bytes_total > 0 and report.rounds > 0
    for party in report.parties:
        assert party.bytes_sent > 0 and party.bytes_received > 0
    assert result.privacy.mode == "mpc" and "TRUSTED" in " ".join(result.privacy.caveats)
    assert result.route == ()


def test_party_0_preprocesses_the_dealer_for_shapes_its_node_has_run(mesh: LocalMesh) -> None:
    """A second session of the same public shapes with the same party 0 gets its node's dealer
    plan: the correlated values arrive in a few chunked round trips ahead of use, none online,
    party 0 makes about half the rounds, and the output is as right as the first one."""
    from sentence_transformers import SentenceTransformer

    from decentralized.models._files import minilm_dir

    texts = ["Dealer plans depend on the public shapes, never on the input."]
    reference = SentenceTransformer(str(minilm_dir()), device="cpu").encode(
        texts, normalize_embeddings=True
    )
    options = MPCOptions(parties=("mpc-b", "mpc-c", "mpc-a"))
    with _client(mesh) as client:
        first, second = (client.embed(MINILM, texts, privacy="mpc", mpc=options) for _ in range(2))
    assert first.mpc is not None and second.mpc is not None
    online, planned = first.mpc.parties[0], second.mpc.parties[0]
    assert (online.name, planned.name) == ("mpc-b", "mpc-b")
    assert not online.dealer_preprocessed and online.dealer_round_trips == 0
    assert online.dealer_online_requests > 100  # one blocking round trip each
    assert planned.dealer_preprocessed and planned.dealer_online_requests == 0
    assert 1 <= planned.dealer_round_trips <= 4  # 64 MiB chunks
    # every online dealer request was a round of party 0's; a prefetched chunk is one or two
    assert planned.rounds <= online.rounds - online.dealer_online_requests + 2 * 4
    for result in (first, second):
        assert float((result.embeddings * reference).sum()) >= MIN_COSINE


def test_a_dead_party_is_replaced_and_the_session_retried(
    mesh: LocalMesh, reference: np.ndarray
) -> None:
    """mpc-d is killed. A session pinned on it fails and is NOT moved to other nodes (the
    client chose those parties: its shares must not go elsewhere); unpinned, the client
    retries on the live nodes and names every attempt's parties."""
    mesh.kill("mpc-d", signal.SIGKILL)
    with _client(mesh) as client:
        pinned = MPCOptions(parties=("mpc-a", "mpc-d", "mpc-b"), peer_timeout_s=20.0)
        with pytest.raises(NoRoute, match="mpc-d") as refused:
            client.embed(MINILM, SENTENCES[:1], privacy="mpc", mpc=pinned)
        if "earlier attempts" in str(refused.value):  # mpc-d was still listed: it failed
            assert "may hold shares of the input: mpc-a, mpc-d" in str(refused.value)
        result = client.embed(
            MINILM, SENTENCES[:1], privacy="mpc", mpc=MPCOptions(peer_timeout_s=20.0)
        )
    assert result.mpc is not None
    assert "mpc-d" not in {p.name for p in result.mpc.parties}
    assert len({p.name for p in result.mpc.parties}) == 3  # three distinct names
    for attempt in result.mpc.failed_attempts:  # a stale record of mpc-d drawn first
        assert "may hold shares of the input" in attempt
    cosine = float((result.embeddings[0] * reference[0]).sum())
    assert cosine >= MIN_COSINE


def _open(**fields: object) -> mpc_pb2.OpenSession:
    from decentralized import _wire

    base: dict[str, object] = {
        "session_id": "bad-input-session-0001",
        "rank": 0,
        "model": MINILM,
        "threat_model": "input_private",
        "attention_mask": _wire.tensor_to_proto(torch.ones(1, 4, dtype=torch.int64)),
        "rank_names": ["mpc-a", "mpc-b", "mpc-c"],
        "peer_timeout_s": 10.0,
    }
    base.update(fields)
    return mpc_pb2.OpenSession(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"model": "no-such-model"}, grpc.StatusCode.NOT_FOUND),
        ({"threat_model": "trust-me"}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"rank": 7}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"rank_names": ["mpc-a", "mpc-a", "mpc-c"]}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"rank": 1}, grpc.StatusCode.PERMISSION_DENIED),  # rank 1 is mpc-b, not mpc-a
        ({"session_id": "short"}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"peer_timeout_s": 1e6}, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_bad_open_requests_get_clear_errors(
    mesh: LocalMesh, fields: dict[str, object], code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        mpc_stub(mesh, "mpc-a").Open(_open(**fields), timeout=30)
    assert info.value.code() == code, info.value.details()


def test_wrong_share_size_and_unknown_session_are_refused(mesh: LocalMesh) -> None:
    stub = mpc_stub(mesh, "mpc-a")
    with pytest.raises(grpc.RpcError) as info:
        stub.Run(iter([mpc_pb2.RunChunk(session_id="never-opened-session-01")]), timeout=30)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    session = "wrong-share-session-0001"
    relay = stub.Open(_open(session_id=session), timeout=150).relay_address
    assert relay.startswith("127.0.0.1:")
    chunks = [
        mpc_pb2.RunChunk(session_id=session, relay_addresses=[relay, relay, relay], share=b"x" * 5)
    ]
    with pytest.raises(grpc.RpcError) as info:
        stub.Run(iter(chunks), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "16" in info.value.details()
    # the node is still serving MPC sessions: a fresh Open works
    fresh = stub.Open(_open(session_id="after-bad-share-0001"), timeout=150)
    assert fresh.relay_address


def test_sdk_refuses_bad_mpc_requests(mesh: LocalMesh) -> None:
    with _client(mesh) as client:
        with pytest.raises(InvalidRequest, match="threat_model"):
            client.embed(MINILM, SENTENCES, privacy="mpc", mpc=MPCOptions(threat_model="x"))
        with pytest.raises(InvalidRequest, match="privacy"):
            client.embed(MINILM, SENTENCES, privacy="homomorphic-ish")
        with pytest.raises(UnknownModel):
            client.embed("no-such-model", SENTENCES, privacy="mpc")
        with pytest.raises(NoRoute, match="not live"):
            client.embed(
                MINILM, SENTENCES, privacy="mpc", mpc=MPCOptions(parties=("mpc-a", "x", "y"))
            )


def test_no_plaintext_reaches_the_nodes_logs(mesh: LocalMesh, tmp_path: Path) -> None:
    """The nodes' logs never carry the input text or token ids."""
    time.sleep(0.5)
    for node in mesh.nodes.values():
        text = node.log.read_text(errors="replace") if node.log.exists() else ""
        for sentence in SENTENCES:
            assert sentence not in text
