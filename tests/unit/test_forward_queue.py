"""The compute-queue ticket of `decentralized.service`: what a job abandoned in the queue
holds, and what the compute thread does when it reaches one (see also
tests/integration/test_forward_limits.py for the same over real gRPC)."""

from __future__ import annotations

import gc
import time
import weakref

import grpc
import pytest
import torch

from decentralized.service import _Skipped, _Ticket
from decentralized.shards import ForwardJob
from decentralized.v1 import common_pb2


def _job() -> ForwardJob:
    return ForwardJob(
        model="all-MiniLM-L6-v2",
        start=0,
        end=6,
        hidden=torch.randn(2, 4, 384),
        attention_mask=None,
        session_id="",
        past_length=0,
    )


def test_an_abandoned_ticket_releases_its_tensor_and_is_skipped() -> None:
    job = _job()
    tensor = weakref.ref(job.hidden)
    ticket = _Ticket(job, None, time.monotonic() + 60)  # type: ignore[arg-type]
    del job
    gc.collect()
    assert tensor() is not None  # queued: the ticket holds the job
    ticket.abandon()
    gc.collect()
    assert tensor() is None  # the queue entry no longer pins the caller's tensor
    with pytest.raises(_Skipped, match="gave up") as info:
        ticket.run(None)  # type: ignore[arg-type]  # never reaches the host
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_ticket_past_its_deadline_is_skipped_on_the_compute_thread() -> None:
    ticket = _Ticket(_job(), None, time.monotonic() - 0.001)  # type: ignore[arg-type]
    with pytest.raises(_Skipped, match="deadline passed"):
        ticket.run(None)  # type: ignore[arg-type]  # never reaches the host


def test_load_counts_a_job_until_the_executor_is_done_with_it() -> None:
    """The HE, classification and forward services count their jobs this way: a caller that
    leaves must not make a busy node advertise load 0; a job still queued is dropped."""
    import asyncio
    import threading
    import types
    from concurrent.futures import ThreadPoolExecutor

    from decentralized.service import run_counted

    node = types.SimpleNamespace(load=0)
    release = threading.Event()
    ran: list[str] = []

    def job(name: str) -> str:
        ran.append(name)
        release.wait(10)
        return name

    async def scenario() -> None:
        with ThreadPoolExecutor(max_workers=1) as pool:
            cancelled: list[str] = []
            first = asyncio.create_task(run_counted(node, pool, job, "running"))
            second = asyncio.create_task(
                run_counted(node, pool, job, "queued", on_cancel=lambda: cancelled.append("q"))
            )
            while not ran:
                await asyncio.sleep(0.01)
            assert node.load == 2
            first.cancel()
            second.cancel()
            await asyncio.sleep(0.1)
            assert node.load == 1  # the running job still counts; the queued one is gone
            assert cancelled == ["q"]
            release.set()
            for _ in range(100):
                if node.load == 0:
                    break
                await asyncio.sleep(0.02)
            assert node.load == 0 and ran == ["running"]  # the queued job never ran

    asyncio.run(scenario())


def test_a_started_stateless_job_stops_between_layers_once_its_caller_is_gone() -> None:
    """A job the compute thread already runs stops at the next layer boundary when its
    ticket is abandoned or past its deadline (a big request takes a minute on a CPU); a
    session's step never does (its KV cache would be left half extended)."""
    from decentralized.errors import Abandoned
    from decentralized.models import load_span

    span = load_span("all-MiniLM-L6-v2", 0, 6, torch.device("cpu"))
    hidden = torch.randn(1, 4, 384)
    asked: list[int] = []

    def after_two_layers() -> bool:
        asked.append(1)
        return len(asked) > 2

    with pytest.raises(Abandoned, match="between layers"):
        span.forward(hidden, None, None, after_two_layers)
    assert len(asked) == 3  # two layers ran, the third was not started
    whole = span.forward(hidden, None, None, lambda: False)
    assert torch.equal(whole, span.forward(hidden, None))
    ticket = _Ticket(_job(), span, time.monotonic() + 60)
    assert not ticket._stopped()
    ticket.abandoned = True
    assert ticket._stopped()


# -- admission: the total and each caller's share ---------------------------------------------


def test_a_compute_queue_caps_the_total_and_each_callers_share() -> None:
    from decentralized.errors import Overloaded
    from decentralized.service import ComputeQueue

    queue = ComputeQueue("jobs", 4, per_caller=2)
    alice, bob, carol = ("alice",), ("bob",), ("carol",)
    first = queue.admit(alice)
    queue.admit(alice)
    with pytest.raises(Overloaded, match=r"busy for this client: 2 of its jobs .*limit 2 per"):
        queue.admit(alice)  # alice's share is full; others still get in
    queue.admit(bob)
    queue.admit(bob)
    with pytest.raises(Overloaded, match=r"node busy: 4 jobs already queued \(limit 4\)") as info:
        queue.admit(carol)
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    with first:  # a job refused before it reached an executor frees its place on leaving
        pass
    with first:  # and only once
        pass
    assert len(queue) == 3
    queue.admit(carol)
    with pytest.raises(ValueError, match="per_caller <= limit"):
        ComputeQueue("jobs", 2, per_caller=3)


def test_a_place_is_held_until_the_executor_is_done_even_when_its_caller_leaves() -> None:
    """A caller that gives up must not free its place while its job still runs (it would let
    one client keep more jobs on the compute thread than its share)."""
    import asyncio
    import threading
    import types
    from concurrent.futures import ThreadPoolExecutor

    from decentralized.errors import Overloaded
    from decentralized.service import ComputeQueue

    node = types.SimpleNamespace(load=0)
    queue = ComputeQueue("jobs", 2, per_caller=1)
    release, started = threading.Event(), threading.Event()

    def job() -> str:
        started.set()
        release.wait(10)
        return "done"

    async def run(caller: tuple[str, ...]) -> str:
        with queue.admit(caller) as place:
            result: str = await place.run(node, pool, job)
            return result

    async def scenario() -> None:
        task = asyncio.create_task(run(("alice",)))
        while not started.is_set():
            await asyncio.sleep(0.01)
        task.cancel()  # the caller leaves; the compute thread is still on its job
        await asyncio.sleep(0.1)
        assert len(queue) == 1 and node.load == 1
        with pytest.raises(Overloaded, match="busy for this client"):
            queue.admit(("alice",))
        release.set()
        for _ in range(100):
            if not len(queue):
                break
            await asyncio.sleep(0.02)
        assert len(queue) == 0 and node.load == 0
        assert await run(("alice",)) == "done"  # its place is back

    with ThreadPoolExecutor(max_workers=1) as pool:
        asyncio.run(scenario())


# -- uploads that stall -------------------------------------------------------------------


def _header_chunk() -> object:
    from decentralized import _wire
    from decentralized.v1 import shard_pb2

    hidden = _wire.tensor_to_proto(torch.randn(1, 4, 384))
    return shard_pb2.ForwardRequest(
        model="all-MiniLM-L6-v2", start=0, end=6, hidden=hidden, total_bytes=len(hidden.data)
    )


@pytest.mark.parametrize("sends_header", [False, True])
def test_a_stalled_forward_stream_is_refused_after_its_idle_time(
    monkeypatch: pytest.MonkeyPatch, sends_header: bool
) -> None:
    """A ForwardStream holds its place in the queue while it arrives: one that stops sending
    (before or after its header) is refused with DEADLINE_EXCEEDED instead of holding it until
    the caller's own deadline."""
    import asyncio

    from decentralized import service
    from decentralized.errors import UploadStalled

    monkeypatch.setattr(service, "UPLOAD_IDLE_S", 0.3)
    header = _header_chunk()

    async def stalled() -> object:
        if sends_header:
            yield header
        await asyncio.sleep(3600)

    t0 = time.monotonic()
    with pytest.raises(UploadStalled, match="ForwardStream stalled: it sent nothing for") as info:
        asyncio.run(service._receive_stream(stalled(), ()))  # type: ignore[arg-type]
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("bytes_per_s", [1, 10**12])
def test_a_trickling_upload_gets_the_time_its_size_needs_and_no_more(
    monkeypatch: pytest.MonkeyPatch, bytes_per_s: int
) -> None:
    """Messages every 0.1 s keep an upload within its idle time, but it must be whole within
    the grace after its header plus its size at the minimum rate: at 1 byte/s its 6,144 bytes
    may take 6,144 s; at 10^12 bytes/s it has the 0.3 s grace only."""
    import asyncio

    from decentralized import service
    from decentralized.errors import UploadStalled

    monkeypatch.setattr(service, "UPLOAD_IDLE_S", 0.3)
    monkeypatch.setattr(service, "UPLOAD_GRACE_S", 0.3)
    monkeypatch.setattr(service, "UPLOAD_MIN_BYTES_PER_S", bytes_per_s)
    header = _header_chunk()
    data = header.hidden.data  # type: ignore[attr-defined]
    first = header.__class__()
    first.CopyFrom(header)
    first.hidden.data = data[:1024]

    async def trickle() -> object:
        yield first
        for start in range(1024, len(data), 1024):
            await asyncio.sleep(0.1)
            yield header.__class__(hidden=header.hidden.__class__(data=data[start : start + 1024]))

    coro = service._receive_stream(trickle(), ())  # type: ignore[arg-type]
    if bytes_per_s == 1:
        job = asyncio.run(coro)
        assert tuple(job.hidden.shape) == (1, 4, 384)
    else:
        with pytest.raises(UploadStalled, match="was not complete 0 s after its header"):
            asyncio.run(coro)


def test_without_certificates_each_connection_has_its_own_share() -> None:
    """On an insecure-dev mesh no caller has a certificate name: shares go by connection
    (over real gRPC on loopback), not one share for every caller together."""
    import asyncio

    from decentralized.transport import Credentials, add_port, admission_key
    from decentralized.v1 import mesh_pb2, mesh_pb2_grpc

    creds = Credentials(insecure_dev=True)

    class Echo(mesh_pb2_grpc.MeshServicer):
        async def ListPeers(self, request: object, context: object) -> mesh_pb2.PeerList:  # noqa: N802
            key = admission_key(context)  # type: ignore[arg-type]
            return mesh_pb2.PeerList(records=[common_pb2.SignedNodeRecord(record=key[0].encode())])

    async def scenario() -> list[str]:
        server = grpc.aio.server()
        mesh_pb2_grpc.add_MeshServicer_to_server(Echo(), server)
        port = add_port(server, "127.0.0.1:0", creds)
        await server.start()
        keys = []
        # Two connections, as two client processes would have (channels of one process with
        # the same target share one connection unless they ask for their own).
        own = [("grpc.use_local_subchannel_pool", 1)]
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=own) for _ in "ab"]
        try:
            for channel in channels:
                stub = mesh_pb2_grpc.MeshStub(channel)
                for _ in range(2):
                    reply = await stub.ListPeers(mesh_pb2.ListPeersRequest(), timeout=10)
                    keys.append(reply.records[0].record.decode())
        finally:
            for channel in channels:
                await channel.close()
            await server.stop(0)
        return keys

    a1, a2, b1, b2 = asyncio.run(scenario())
    assert a1 == a2 and b1 == b2 and a1 != b1  # one key per connection
    assert a1.startswith("peer ipv4:127.0.0.1:")


def test_a_trickle_behind_the_minimum_rate_is_cut_long_before_its_size_allows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One byte per message, well within the idle time: the upload falls behind the minimum
    rate right after the grace and is refused then, not when its whole size budget ends."""
    import asyncio

    from decentralized import service
    from decentralized.errors import UploadStalled

    monkeypatch.setattr(service, "UPLOAD_IDLE_S", 0.3)
    monkeypatch.setattr(service, "UPLOAD_GRACE_S", 0.3)
    monkeypatch.setattr(service, "UPLOAD_MIN_BYTES_PER_S", 1000)  # 6,144 bytes: 6.4 s in all
    header = _header_chunk()
    data = header.hidden.data  # type: ignore[attr-defined]
    first = header.__class__()
    first.CopyFrom(header)
    first.hidden.data = b""

    async def trickle() -> object:
        yield first
        for i in range(len(data)):
            await asyncio.sleep(0.1)
            yield header.__class__(hidden=header.hidden.__class__(data=data[i : i + 1]))

    t0 = time.monotonic()
    with pytest.raises(UploadStalled, match="fell behind 1000 bytes/s"):
        asyncio.run(service._receive_stream(trickle(), ()))  # type: ignore[arg-type]
    assert time.monotonic() - t0 < 2.0  # the grace and the idle slack, not 6.4 s
