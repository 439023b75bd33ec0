"""Faults, refusals and majorities of `ConsensusChain` and `Chain`, against scripted nodes.

The mesh tests (test_consensus_mesh.py) run real node processes; these drive the same client
code through a stand-in for `MeshClient` whose nodes answer as scripted (honestly, with zeros,
with a gRPC status, or refusing prompts over a token limit), so that the draws are fixed and
every branch is reached on purpose. Receipts are real Ed25519 receipts over the bytes sent and
returned, as `MeshClient.forward` builds them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
import pytest
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from decentralized import _wire, consensus
from decentralized.client import Chain
from decentralized.consensus import ConsensusChain, ConsensusOptions
from decentralized.errors import ERRORS_BY_CODE, InvalidRequest, MeshError, NoRoute
from decentralized.identity import node_id_of
from decentralized.models import get_spec
from decentralized.routing import Hop, plan_route
from decentralized.v1 import common_pb2
from verification.consensus import (
    InvalidVerdict,
    NoConsensus,
    Receipt,
    Reputation,
    Tolerance,
    receipt_message,
    verify_verdict,
)
from verification.consensus.manifest import build

MODEL = "all-MiniLM-L6-v2"
LAYERS = get_spec(MODEL).num_layers
HIDDEN = get_spec(MODEL).hidden_size
MANIFEST = build(
    MODEL,
    [f"{i:064x}" for i in range(LAYERS)],
    {(0, LAYERS): Tolerance(1e-5, 1e-6, 4.0, 1, "test")},
    {},
)


def _status_error(code: grpc.StatusCode, details: str) -> MeshError:
    err = ERRORS_BY_CODE.get(code, MeshError)(f"node: {code.name}: {details}")
    err.code = code
    return err


@dataclass
class Node:
    """A scripted node: `behaviour` is "honest", "zeros", or a gRPC status it answers with;
    an honest node refuses prompts over `max_tokens` with INVALID_ARGUMENT, as ShardHost does."""

    name: str
    behaviour: str | grpc.StatusCode = "honest"
    max_tokens: int = 512
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    calls: int = 0

    @property
    def public_key(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def node_id(self) -> str:
        return node_id_of(self.public_key)

    def record(self, i: int) -> common_pb2.NodeRecord:
        span = common_pb2.Span(
            model=MODEL, start=0, end=LAYERS, weight_digest=MANIFEST.span_digest(0, LAYERS)
        )
        return common_pb2.NodeRecord(
            node_id=self.node_id,
            public_key=self.public_key,
            address=f"fake:{i}",
            name=self.name,
            spans=[span],
        )


class FakeMesh:
    """What ConsensusChain and Chain use of MeshClient, over scripted nodes."""

    hop_timeout_s = 5.0

    def __init__(self, nodes: Sequence[Node], *, max_failovers: int = 6) -> None:
        self.nodes = {n.node_id: n for n in nodes}
        self.records = [n.record(i) for i, n in enumerate(nodes)]
        self.max_failovers = max_failovers
        self.called: list[str] = []  # node ids, in call order
        self._banned: set[str] = set()
        self.ban_seconds: dict[str, float | None] = {}  # None: the client's ban_s

    def refresh(self, force: bool = False) -> list[common_pb2.NodeRecord]:
        return list(self.records)

    def banned(self) -> set[str]:
        return set(self._banned)

    def ban(self, node_id: str, seconds: float | None = None) -> None:
        self._banned.add(node_id)
        self.ban_seconds[node_id] = seconds

    def unban(self, node_id: str) -> None:
        self._banned.discard(node_id)

    def rtt(self, node_id: str) -> float | None:
        return None

    def end_session(self, hop: Hop, session_id: str) -> None:
        pass

    def plan(self, model: str, start: int = 0, tokens: int = 0) -> list[Hop]:
        return plan_route(
            model, LAYERS, self.records, exclude=self._banned, start=start, tokens=tokens
        )

    def forward(
        self,
        hop: Hop,
        model: str,
        hidden: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        session_id: str = "",
        past_length: int = 0,
        timeout_s: float | None = None,
    ) -> tuple[torch.Tensor, float, Receipt]:
        node = self.nodes[hop.node_id]
        node.calls += 1
        self.called.append(hop.node_id)
        if isinstance(node.behaviour, grpc.StatusCode):
            raise _status_error(node.behaviour, f"{node.name} says no")
        if hidden.shape[1] > node.max_tokens:
            raise _status_error(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"hidden: {hidden.shape[1]} tokens exceeds this node's limit {node.max_tokens}",
            )
        out = torch.zeros_like(hidden) if node.behaviour == "zeros" else hidden * 2
        sent, reply = _wire.tensor_to_proto(hidden), _wire.tensor_to_proto(out)
        mask = _wire.tensor_to_proto(attention_mask) if attention_mask is not None else None
        args = {
            "model": model,
            "start": hop.start,
            "end": hop.end,
            "session_id": session_id,
            "past_length": past_length,
            "input_digest": _wire.forward_input_digest(sent, mask),
            "output_digest": _wire.proto_digest(reply),
            "node_id": node.node_id,
        }
        signature = node.key.sign(receipt_message(**args))
        return out, 0.0, Receipt(**args, public_key=node.public_key, signature=signature)


class FirstDraws:
    """Replaces the CSPRNG: every draw takes the first candidates, in record order."""

    def __init__(self, checked: bool = True) -> None:
        self.checked = checked

    def random(self) -> float:
        return 0.0 if self.checked else 0.999999

    def choice(self, seq: Sequence[Hop]) -> Hop:
        return seq[0]

    def sample(self, seq: Sequence[Hop], k: int) -> list[Hop]:
        return list(seq)[:k]


@pytest.fixture(autouse=True)
def first_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consensus, "_RNG", FirstDraws())


def _chain(
    mesh: FakeMesh, reputation: Reputation | None = None, **options: object
) -> ConsensusChain:
    return ConsensusChain(
        mesh,  # type: ignore[arg-type]
        MODEL,
        stateful=False,
        manifest=MANIFEST,
        reputation=reputation or Reputation(),
        options=ConsensusOptions(**options),  # type: ignore[arg-type]
        signing_key=Ed25519PrivateKey.generate(),
    )


def _hidden(tokens: int = 3) -> torch.Tensor:
    return torch.randn(1, tokens, HIDDEN, generator=torch.Generator().manual_seed(tokens))


def test_two_colluders_cannot_decide_a_span_once_the_other_replicas_fail() -> None:
    # k = 5: three replicas refuse (each its own way), the two colluders agree on zeros.
    nodes = [
        Node("r1", grpc.StatusCode.OUT_OF_RANGE),
        Node("r2", grpc.StatusCode.PERMISSION_DENIED),
        Node("r3", grpc.StatusCode.UNAVAILABLE),
        Node("z1", "zeros"),
        Node("z2", "zeros"),
    ]
    chain = _chain(FakeMesh(nodes), k=5, max_replicas=5)
    with pytest.raises(NoRoute, match=r"2 replica\(s\) answered.*needs 3 agreeing of the 5"):
        chain.step(_hidden())
    # k = 4 with one honest replica: the two colluders are a majority of the three that
    # answered, not of the four planned; the honest node must not be convicted.
    honest = [
        Node("z1", "zeros"),
        Node("z2", "zeros"),
        Node("h1"),
        Node("r1", grpc.StatusCode.OUT_OF_RANGE),
    ]
    reputation = Reputation()
    chain = _chain(FakeMesh(honest), reputation, k=4, max_replicas=4)
    with pytest.raises(NoConsensus, match="only 2 of 3 answering replicas agree.*needs 3"):
        chain.step(_hidden())
    assert chain.verdicts == [] and reputation.standing("h1")["convictions"] == 0
    # With one more honest name to escalate to, the span is decided and the liars convicted.
    more = [*honest[:3], Node("r1", grpc.StatusCode.OUT_OF_RANGE), Node("h2"), Node("h3")]
    chain = _chain(FakeMesh(more), k=4, max_replicas=5)
    out = chain.step(x := _hidden())
    assert torch.equal(out, x * 2)
    (report,) = chain.reports()
    assert report.escalations == 1 and sorted(report.convicted) == ["z1", "z2"]


def test_a_faulted_record_is_replaced_by_another_record_of_its_name() -> None:
    # A record claiming h3 that never answers (gossiped, or a dead process of h3's), then h3.
    fake_h3 = Node("h3", grpc.StatusCode.UNAVAILABLE)
    real_h3 = Node("h3")
    mesh = FakeMesh([Node("h1"), Node("h2"), fake_h3, real_h3])
    reputation = Reputation()
    chain = _chain(mesh, reputation, k=3)
    chain.step(_hidden())
    (report,) = chain.reports()
    assert [f.split(":")[0] for f in report.faults] == ["h3"]
    assert sorted(report.replicas) == ["h1", "h2", "h3"] and real_h3.calls == 1
    # The fault is the record's: h3's name, and its real record, stay eligible.
    assert reputation.standing("h3", node_id=fake_h3.node_id)["recent_faults"] == 1
    assert reputation.excluded("h3", node_id=real_h3.node_id) is None


def test_replacements_of_failed_replicas_are_capped_per_step() -> None:
    flood = [Node(f"f{i}", grpc.StatusCode.UNAVAILABLE) for i in range(20)]
    mesh = FakeMesh([Node("h1"), *flood], max_failovers=3)
    with pytest.raises(NoRoute, match=r"replacements capped at 3.*no decision is possible"):
        _chain(mesh, k=2).step(_hidden())
    assert sum(n.calls for n in flood) == 4  # the replica drawn, then three replacements


def test_a_status_every_replica_gives_is_the_request_s_error_not_a_fault() -> None:
    # The client does not know the nodes' token limit: a prompt over it is refused by all.
    nodes = [Node(f"h{i}", max_tokens=4) for i in (1, 2, 3)]
    mesh = FakeMesh(nodes)
    reputation = Reputation(max_faults=1)
    with pytest.raises(InvalidRequest, match="8 tokens exceeds this node's limit 4") as info:
        _chain(mesh, reputation, k=3).step(_hidden(8))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "refused with the same status by 3 nodes" in str(info.value)
    assert mesh.banned() == set() and reputation.tracked_faults() == 0
    # Nobody was blamed, so a prompt within the limit runs on the same three right away.
    chain = _chain(mesh, reputation, k=3)
    assert torch.equal(chain.step(x := _hidden(3)), x * 2)
    assert sorted(chain.reports()[0].replicas) == ["h1", "h2", "h3"]
    # A dead replica among them is still a fault; the refusing ones are not.
    dead = Node("d", grpc.StatusCode.UNAVAILABLE)
    mesh = FakeMesh([Node("h1", max_tokens=4), Node("h2", max_tokens=4), dead])
    with pytest.raises(InvalidRequest, match="refused with the same status by 2 nodes"):
        _chain(mesh, k=3).step(_hidden(8))
    assert mesh.banned() == {dead.node_id}
    # Refusals with different statuses are the nodes' faults, as is one refusal among answers.
    mixed = [
        Node("a", grpc.StatusCode.OUT_OF_RANGE),
        Node("b", grpc.StatusCode.PERMISSION_DENIED),
        Node("h1"),
    ]
    mesh = FakeMesh(mixed)
    with pytest.raises(NoRoute, match="no decision is possible"):
        _chain(mesh, k=3).step(_hidden())
    assert mesh.banned() == {mixed[0].node_id, mixed[1].node_id}


def test_an_unchecked_request_over_the_limit_fails_without_blaming_the_replacement(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(consensus, "_RNG", FirstDraws(checked=False))
    nodes = [Node(f"h{i}", max_tokens=4) for i in (1, 2)]
    mesh = FakeMesh(nodes)
    chain = _chain(mesh, k=2, check_rate=0.5)
    assert not chain.checked
    with pytest.raises(InvalidRequest, match="refused with the same status by 2 nodes"):
        chain.step(_hidden(8))
    assert mesh.banned() == set() and [n.calls for n in nodes] == [1, 1]


def test_evidence_over_the_cap_leaves_an_unverifiable_verdict() -> None:
    nodes = [Node("h1"), Node("h2"), Node("z", "zeros")]
    chain = _chain(FakeMesh(nodes), k=3)
    chain.step(_hidden())
    (verdict,) = chain.verdicts
    assert set(verdict.evidence) == {0, 1, 2}
    verify_verdict(verdict.to_json())
    capped = _chain(FakeMesh(nodes), k=3, evidence_max_bytes=1024)
    capped.step(_hidden())  # 3 x 384 float32 = 4.5 KiB per tensor
    (verdict,) = capped.verdicts
    assert verdict.evidence == {} and verdict.convicted  # the client still acts on it
    with pytest.raises(InvalidVerdict, match="unverifiable"):
        verify_verdict(verdict.to_json())
    with pytest.raises(ValueError, match="evidence_max_bytes"):
        ConsensusOptions(evidence_max_bytes=0)


# -- plain split inference (no consensus) ---------------------------------------------------


def test_a_plain_chain_stops_when_the_replacement_refuses_the_same_way() -> None:
    nodes = [Node(f"n{i}", max_tokens=4) for i in (1, 2, 3)]
    mesh = FakeMesh(nodes)
    chain = Chain(mesh, MODEL, stateful=False)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="8 tokens exceeds this node's limit 4") as info:
        chain.step(_hidden(8))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(mesh.called) == 2 and mesh.banned() == set()  # the first one unbanned again
    assert torch.equal(Chain(mesh, MODEL, stateful=False).step(x := _hidden(3)), x * 2)  # type: ignore[arg-type]


def test_a_plain_chain_fails_over_a_single_refusing_node_and_gives_up_with_its_status() -> None:
    liar, honest = Node("liar", grpc.StatusCode.OUT_OF_RANGE), Node("honest")
    mesh = FakeMesh([liar, honest])
    chain = Chain(mesh, MODEL, stateful=False)  # type: ignore[arg-type]
    if chain.states[0].hop.node_id != liar.node_id:  # start on the liar
        chain.states[0] = chain._state(Hop.of(liar.record(0), liar.record(0).spans[0]))
    assert torch.equal(chain.step(x := _hidden()), x * 2)
    assert mesh.banned() == {liar.node_id} and len(chain.failovers) == 1
    # Refusals that differ are failed over until max_failovers; the error keeps the status.
    a, b = Node("a", grpc.StatusCode.OUT_OF_RANGE), Node("b", grpc.StatusCode.PERMISSION_DENIED)
    mesh = FakeMesh([a, b], max_failovers=1)
    with pytest.raises(MeshError, match="gave up after 1 fail-overs") as info:
        Chain(mesh, MODEL, stateful=False).step(_hidden())  # type: ignore[arg-type]
    last = mesh.nodes[mesh.called[-1]]
    assert info.value.code == last.behaviour != grpc.StatusCode.UNAVAILABLE


def test_a_plain_chain_leaves_a_busy_node_out_briefly_not_banned() -> None:
    """RESOURCE_EXHAUSTED (a full queue or session table) says the node is busy, not that it
    misbehaved: the chain fails over and leaves it out for a few seconds, not `ban_s`."""
    from decentralized.client import BUSY_BACKOFF_S

    busy, other = Node("busy", grpc.StatusCode.RESOURCE_EXHAUSTED), Node("other")
    mesh = FakeMesh([busy, other])
    chain = Chain(mesh, MODEL, stateful=False)  # type: ignore[arg-type]
    if chain.states[0].hop.node_id != busy.node_id:  # start on the busy node
        chain.states[0] = chain._state(Hop.of(busy.record(0), busy.record(0).spans[0]))
    assert torch.equal(chain.step(x := _hidden()), x * 2)
    assert mesh.ban_seconds == {busy.node_id: BUSY_BACKOFF_S}
    liar = Node("liar", grpc.StatusCode.OUT_OF_RANGE)
    mesh = FakeMesh([liar, Node("honest")])
    chain = Chain(mesh, MODEL, stateful=False)  # type: ignore[arg-type]
    if chain.states[0].hop.node_id != liar.node_id:
        chain.states[0] = chain._state(Hop.of(liar.record(0), liar.record(0).spans[0]))
    chain.step(_hidden())
    assert mesh.ban_seconds == {liar.node_id: None}  # any other refusal: the full ban


def test_the_mesh_client_s_bans_expire_after_their_own_time() -> None:
    from decentralized.client import MeshClient
    from decentralized.transport import Credentials

    mesh = MeshClient(["127.0.0.1:1"], Credentials(insecure_dev=True), ban_s=60.0)
    mesh.ban("busy", 0.05)
    mesh.ban("liar")
    mesh.ban("liar", 0.01)  # a shorter ban never shortens a longer one
    assert mesh.banned() == {"busy", "liar"}
    time.sleep(0.1)
    assert mesh.banned() == {"liar"}
