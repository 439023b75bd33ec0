"""Generation with KV-cache sessions over real nodes, and the faults a mesh must survive:
a node that stalls past its deadline, a node killed mid-request, every replica gone.

The tests in this module share one mesh and run in file order; the destructive ones come last.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch

from decentralized import _wire
from decentralized.transport import Credentials, sync_channel
from decentralized.v1 import shard_pb2, shard_pb2_grpc
from secure_infer import Client, NoRoute
from secure_infer.localmesh import LocalMesh, NodeSpec
from tests.conftest import MINILM, SMOL, smol_greedy, start_mesh

pytestmark = [pytest.mark.grpc, pytest.mark.slow]
PROMPT = "Write two sentences about mountains."
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    m = start_mesh(
        tmp_path_factory.mktemp("gen-mesh"),
        [
            NodeSpec(name="node-a", spans=((SMOL, 0, 15), (MINILM, 0, 3))),
            NodeSpec(name="node-b", spans=((SMOL, 15, 30), (MINILM, 3, 6))),
            NodeSpec(name="node-c", spans=((SMOL, 15, 30), (MINILM, 3, 6))),
        ],
    )
    yield m
    m.stop()


@pytest.fixture(scope="module")
def local_tokens() -> list[int]:
    """Greedy tokens of the whole model run locally by transformers: the reference."""
    from transformers import AutoTokenizer

    from decentralized.models._files import smollm2_dir

    tok = AutoTokenizer.from_pretrained(str(smollm2_dir()))
    ids = tok.apply_chat_template(
        [{"role": "user", "content": PROMPT}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    return smol_greedy(ids, NEW_TOKENS)


def _client(mesh: LocalMesh, **kw: float) -> Client:
    return Client(mesh.seeds, tls=mesh.client_tls(), **kw)  # type: ignore[arg-type]


def test_generation_matches_local_greedy_and_streams(
    mesh: LocalMesh, local_tokens: list[int]
) -> None:
    with _client(mesh) as client:
        events = list(client.generate_stream(SMOL, PROMPT, max_new_tokens=NEW_TOKENS))
    result = events[-1].result
    assert result is not None
    assert list(result.token_ids) == local_tokens
    assert [e.token_id for e in events] == local_tokens
    assert "".join(e.text for e in events) == result.text
    assert [(h.start, h.end) for h in result.route] == [(0, 15), (15, 30)]
    assert result.privacy.node_views[0].endswith("layers 0..14")
    assert result.timings["tokens_per_s"] > 0


def _session_stub(mesh: LocalMesh) -> tuple[grpc.Channel, shard_pb2_grpc.ShardStub]:
    tls = mesh.client_tls()
    assert tls is not None
    ca, key, cert = tls.read()
    channel = sync_channel(
        mesh.nodes["node-a"].address, Credentials(root_ca=ca, private_key=key, certificate=cert)
    )
    return channel, shard_pb2_grpc.ShardStub(channel)


def test_sessions_refuse_steps_out_of_order(mesh: LocalMesh) -> None:
    channel, stub = _session_stub(mesh)
    with channel:
        req = shard_pb2.ForwardRequest(
            model=SMOL,
            start=0,
            end=15,
            session_id="s" * 20,
            hidden=_wire.tensor_to_proto(torch.randn(1, 3, 576)),
        )
        stub.Forward(req, timeout=30)
        req.past_length = 0  # the node holds 3 tokens now: a replayed step
        with pytest.raises(grpc.RpcError) as info:
            stub.Forward(req, timeout=30)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "client expects 0 cached tokens, node holds 3" in info.value.details()
        req.session_id, req.past_length = "t" * 20, 7  # a session the node never saw
        with pytest.raises(grpc.RpcError) as info:
            stub.Forward(req, timeout=30)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        req.session_id, req.past_length = "u" * 20, 0
        req.hidden.CopyFrom(_wire.tensor_to_proto(torch.randn(2, 3, 576)))
        with pytest.raises(grpc.RpcError) as info:
            stub.Forward(req, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        ended = stub.EndSession(shard_pb2.EndSessionRequest(session_id="s" * 20), timeout=5)
        assert ended.existed


def test_a_request_longer_than_every_node_takes_is_the_request_s_error(
    mesh: LocalMesh,
) -> None:
    """Nodes state their token limit (2048 here); a prompt plus new tokens beyond it is
    InvalidRequest before anything is sent, and no node is banned for it."""
    from secure_infer import InvalidRequest

    with _client(mesh) as client:
        assert {r.max_tokens for r in client._mesh.refresh(force=True)} == {2048}
        long_prompt = "mountain " * 2100
        with pytest.raises(InvalidRequest, match="tokens exceed the token limit"):
            list(client.generate_stream(SMOL, long_prompt, max_new_tokens=2))
        assert client._mesh.banned() == set()
        events = list(client.generate_stream(SMOL, PROMPT, max_new_tokens=2))
        assert events[-1].result is not None


def test_a_session_answers_the_certificate_that_started_it_only(
    mesh: LocalMesh, tmp_path: Path
) -> None:
    """Session ids travel in receipts and verdicts: another member that learnt one must not
    read, extend or end the owner's cache (it is answered as for an unknown id)."""
    from secure_infer import certs

    other = certs.issue(mesh.certs_dir, "mallory", role="client")
    ca, key, cert = other.read()
    theirs = Credentials(root_ca=ca, private_key=key, certificate=cert)
    sid = "owned-session-000001"
    channel, stub = _session_stub(mesh)
    with channel, sync_channel(mesh.nodes["node-a"].address, theirs) as their_channel:
        mallory = shard_pb2_grpc.ShardStub(their_channel)
        req = shard_pb2.ForwardRequest(
            model=SMOL,
            start=0,
            end=15,
            session_id=sid,
            hidden=_wire.tensor_to_proto(torch.randn(1, 3, 576)),
        )
        stub.Forward(req, timeout=30)
        step = shard_pb2.ForwardRequest(
            model=SMOL,
            start=0,
            end=15,
            session_id=sid,
            past_length=3,
            hidden=_wire.tensor_to_proto(torch.randn(1, 1, 576)),
        )
        with pytest.raises(grpc.RpcError) as info:
            mallory.Forward(step, timeout=30)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "unknown here" in info.value.details()
        ended = mallory.EndSession(shard_pb2.EndSessionRequest(session_id=sid), timeout=5)
        assert not ended.existed
        stub.Forward(step, timeout=30)  # the owner's cache is intact: 3 tokens, then 4
        assert stub.EndSession(shard_pb2.EndSessionRequest(session_id=sid), timeout=5).existed


def _replica_on_route(events_route: tuple[str, ...]) -> str:
    on_route = [n for n in events_route if n in ("node-b", "node-c")]
    assert on_route, events_route
    return on_route[0]


def test_stalled_node_is_failed_over_within_the_deadline(
    mesh: LocalMesh, local_tokens: list[int]
) -> None:
    stalled = ""
    t_stall = 0.0
    with _client(mesh, hop_timeout_s=3.0) as client:
        for event in client.generate_stream(SMOL, PROMPT, max_new_tokens=NEW_TOKENS):
            if event.index == 2:
                stalled = _replica_on_route(event.route)
                mesh.kill(stalled, signal.SIGSTOP)  # alive but frozen: a stall, not a crash
                t_stall = time.monotonic()
            if event.result is not None:
                result = event.result
    try:
        assert time.monotonic() - t_stall < 30
        assert list(result.token_ids) == local_tokens
        assert [f.name for f in result.failovers] == [stalled]
        assert "DEADLINE_EXCEEDED" in result.failovers[0].reason
        assert result.failovers[0].rebuilt_tokens > 0
    finally:
        mesh.kill(stalled, signal.SIGCONT)
    time.sleep(1.0)
    mesh.wait_converged(timeout_s=20)  # the stalled node resumes serving


def test_node_killed_mid_request_fails_over_and_leaves_the_mesh(
    mesh: LocalMesh, local_tokens: list[int]
) -> None:
    killed = ""
    with _client(mesh) as client:
        for event in client.generate_stream(SMOL, PROMPT, max_new_tokens=NEW_TOKENS):
            if event.index == 5:
                killed = _replica_on_route(event.route)
                mesh.kill(killed)
            if event.result is not None:
                result = event.result
        assert list(result.token_ids) == local_tokens
        assert [f.name for f in result.failovers] == [killed]
        assert "UNAVAILABLE" in result.failovers[0].reason
        # Membership: the survivors stop advertising the dead node within dead_after_s.
        deadline = time.monotonic() + 20
        while killed in {n["name"] for n in client.nodes()}:
            assert time.monotonic() < deadline, f"{killed} still listed as live"
            time.sleep(0.5)
        # Embeddings fail over to the surviving replica as well.
        emb = client.embed(MINILM, ["still serving?"])
        assert killed not in {h.name for h in emb.route}


def test_no_replica_left_is_a_clear_error(mesh: LocalMesh) -> None:
    for name in ("node-b", "node-c"):
        mesh.kill(name)
    with _client(mesh, hop_timeout_s=3.0) as client, pytest.raises(NoRoute, match=r"\[15, 30\)"):
        client.generate(SMOL, PROMPT, max_new_tokens=4)


def test_sigterm_drains_and_exits_cleanly(mesh: LocalMesh, tmp_path: Path) -> None:
    node = mesh.nodes["node-a"]
    mesh.kill("node-a", signal.SIGTERM)
    assert node.process.returncode == 0
    log = node.log.read_text()
    assert "draining" in log and '"stopped"' in log
