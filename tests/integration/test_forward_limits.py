"""Forward limits on a real mTLS mesh: shapes that overflow torch, a node that replies with
one, abandoned and excess work on a node's compute thread.

Nodes (all serve all-MiniLM-L6-v2 [0, 6)): `honest`; `liar` replies with a zero-element tensor
of shape [2**62, 2**62, 0] and advertises a huge throughput, so the client tries it first;
`slow` holds its compute thread for SLOW_S on batch-3 jobs and logs every job it computes
(see tests/integration/faulty_node.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import torch

from decentralized import _wire
from decentralized.identity import verify_record
from decentralized.transport import Credentials, sync_channel
from decentralized.v1 import common_pb2, mesh_pb2, mesh_pb2_grpc, shard_pb2, shard_pb2_grpc
from secure_infer import Client
from secure_infer.localmesh import LocalMesh, NodeSpec
from tests.conftest import client_creds

pytestmark = pytest.mark.grpc
ROOT = Path(__file__).resolve().parents[2]
MINILM = "all-MiniLM-L6-v2"
FAULTY = "tests.integration.faulty_node"
SLOW_S = 6.0  # long enough to fill the queue behind one such job on a busy machine
HUGE_EMPTY = [2**62, 2**62, 0]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    workdir = tmp_path_factory.mktemp("forward-limits")
    span = ((MINILM, 0, 6),)
    specs = [
        NodeSpec(name="honest", spans=span),
        NodeSpec(name="liar", spans=span, entry=FAULTY, extra_args=("--fault", "zero_shape")),
        NodeSpec(
            name="slow",
            spans=span,
            entry=FAULTY,
            extra_args=(
                "--fault",
                f"slow:{SLOW_S}",
                "--computed-log",
                str(workdir / "slow-computed.log"),
            ),
        ),
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", str(ROOT))  # the faulty node module lives in tests/
        with LocalMesh(workdir, specs, threads=1) as running:
            yield running


@pytest.fixture
def channel_to(mesh: LocalMesh) -> Iterator[Callable[[str], grpc.Channel]]:
    channels: list[grpc.Channel] = []

    def open_channel(name: str) -> grpc.Channel:
        channel = sync_channel(mesh.nodes[name].address, client_creds(mesh), expect_name=name)
        channels.append(channel)
        return channel

    yield open_channel
    for channel in channels:
        channel.close()


def _request(batch: int, **kw: object) -> shard_pb2.ForwardRequest:
    hidden = _wire.tensor_to_proto(torch.randn(batch, 4, 384))
    return shard_pb2.ForwardRequest(model=MINILM, start=0, end=6, hidden=hidden, **kw)


def _load(channel: grpc.Channel) -> int:
    info = mesh_pb2_grpc.MeshStub(channel).GetInfo(mesh_pb2.GetInfoRequest(), timeout=5)
    return verify_record(info.record, ca=None).load  # its load only


def _wait_load(channel: grpc.Channel, want: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (load := _load(channel)) != want:
        assert time.monotonic() < deadline, f"load stayed {load}, expected {want}"
        time.sleep(0.05)


# -- finding: zero-element shapes with huge dimensions ---------------------------------------


@pytest.mark.parametrize(
    ("field", "tensor"),
    [
        ("hidden", common_pb2.Tensor(dtype="float32", shape=HUGE_EMPTY)),
        ("hidden", common_pb2.Tensor(dtype="float32", shape=[0, 2**40, 2**40, 2**40])),
        ("attention_mask", common_pb2.Tensor(dtype="int64", shape=HUGE_EMPTY)),
    ],
)
def test_zero_element_shape_with_huge_dims_is_invalid_argument(
    channel_to: Callable[[str], grpc.Channel], field: str, tensor: common_pb2.Tensor
) -> None:
    stub = shard_pb2_grpc.ShardStub(channel_to("honest"))
    request = _request(1)
    getattr(request, field).CopyFrom(tensor)
    request.total_bytes = len(request.hidden.data)  # ForwardStream's header announces it
    for call in (stub.Forward, lambda r, timeout: stub.ForwardStream(iter([r]), timeout=timeout)):
        with pytest.raises(grpc.RpcError) as info:
            call(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
        assert "exceeds" in (info.value.details() or "")
    reply = stub.Forward(_request(1), timeout=30)  # the node keeps serving
    assert list(reply.hidden.shape) == [1, 4, 384]


def test_client_fails_over_from_a_node_replying_a_huge_zero_element_shape(
    mesh: LocalMesh,
) -> None:
    with Client(mesh.seeds, tls=mesh.client_tls()) as client:
        result = client.embed(MINILM, ["hello world"])
    assert result.embeddings.shape == (1, 384)
    assert result.route[-1].name == "honest"  # the replacement that answered
    assert [f.name for f in result.failovers] == ["liar"]
    assert "exceeds" in result.failovers[0].reason


# -- finding: abandoned and excess work on the compute thread --------------------------------


def test_abandoned_jobs_are_skipped_and_the_running_one_counts_as_load(
    mesh: LocalMesh, channel_to: Callable[[str], grpc.Channel]
) -> None:
    channel = channel_to("slow")
    stub = shard_pb2_grpc.ShardStub(channel)
    _wait_load(channel, 0)
    log = mesh.workdir / "slow-computed.log"
    seen = len(log.read_text().split()) if log.exists() else 0

    with pytest.raises(grpc.RpcError) as info:  # holds the compute thread for SLOW_S
        stub.Forward(_request(3), timeout=1.0)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert _load(channel) == 1  # the caller left, but the compute thread is still busy
    for _ in range(3):  # queued behind it, abandoned while they wait
        with pytest.raises(grpc.RpcError) as info:
            stub.Forward(_request(2), timeout=0.5)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    t0 = time.monotonic()
    reply = stub.Forward(_request(1), timeout=60)
    assert list(reply.hidden.shape) == [1, 4, 384]
    assert time.monotonic() - t0 < SLOW_S + 10
    _wait_load(channel, 0)
    # Only the job that had started, and the honest one, reached the compute thread.
    assert log.read_text().split()[seen:] == ["3", "1"]


def test_full_compute_queue_answers_node_busy_and_keeps_a_share_for_other_clients(
    mesh: LocalMesh, channel_to: Callable[[str], grpc.Channel]
) -> None:
    """One client may hold half of a node's forward queue: past it, its requests get
    RESOURCE_EXHAUSTED while another client's are still admitted, up to the whole queue."""
    from decentralized.service import MAX_QUEUED_FORWARDS
    from secure_infer import certs

    share = MAX_QUEUED_FORWARDS // 2
    channel = channel_to("slow")
    stub = shard_pb2_grpc.ShardStub(channel)
    other = certs.issue(mesh.certs_dir, "second-client", role="client")
    ca, key, cert = other.read()
    theirs = sync_channel(
        mesh.nodes["slow"].address,
        Credentials(root_ca=ca, private_key=key, certificate=cert),
        expect_name="slow",
    )
    their_stub = shard_pb2_grpc.ShardStub(theirs)
    _wait_load(channel, 0)
    calls = [stub.Forward.future(_request(3), timeout=120)]  # holds the compute thread
    _wait_load(channel, 1)
    calls += [stub.Forward.future(_request(1), timeout=120) for _ in range(share - 1)]
    _wait_load(channel, share)  # this client's share: one running, the rest queued

    with pytest.raises(grpc.RpcError) as info:
        stub.Forward(_request(1), timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "node busy for this client" in (info.value.details() or "")
    calls += [their_stub.Forward.future(_request(1), timeout=120) for _ in range(share)]
    _wait_load(channel, MAX_QUEUED_FORWARDS)  # the other client got in
    for client_stub in (stub, their_stub):
        with pytest.raises(grpc.RpcError) as info:
            client_stub.Forward(_request(1), timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"{MAX_QUEUED_FORWARDS} forward requests already queued" in (
            info.value.details() or ""
        )

    for call in calls:  # the queued work still completes
        assert list(call.result().hidden.shape)[1:] == [4, 384]
    _wait_load(channel, 0)
    assert list(their_stub.Forward(_request(1), timeout=60).hidden.shape) == [1, 4, 384]
    theirs.close()
