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
def test_a_stalled_forward_stream_is_refused_after_its_time(
    monkeypatch: pytest.MonkeyPatch, sends_header: bool
) -> None:
    """A ForwardStream holds its place in the queue while it arrives: one that stops sending
    (before or after its header) is refused with DEADLINE_EXCEEDED instead of holding it until
    the caller's own deadline."""
    import asyncio

    from decentralized import service
    from decentralized.errors import UploadStalled

    monkeypatch.setattr(service, "UPLOAD_GRACE_S", 0.3)
    header = _header_chunk()

    async def stalled() -> object:
        if sends_header:
            yield header
        await asyncio.sleep(3600)

    t0 = time.monotonic()
    with pytest.raises(UploadStalled, match="ForwardStream did not arrive within") as info:
        asyncio.run(service._receive_stream(stalled(), ()))  # type: ignore[arg-type]
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 5


def test_an_upload_gets_time_for_the_size_its_header_announces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    from decentralized import service

    monkeypatch.setattr(service, "UPLOAD_GRACE_S", 0.3)
    monkeypatch.setattr(service, "UPLOAD_MIN_BYTES_PER_S", 1)  # 6,144 bytes: 6,144 s
    header = _header_chunk()

    async def slow() -> object:
        yield header
        await asyncio.sleep(0.6)  # past the grace, within the time its size allows
        yield header.__class__(hidden=header.hidden.__class__(data=b""))

    job = asyncio.run(service._receive_stream(slow(), ()))  # type: ignore[arg-type]
    assert tuple(job.hidden.shape) == (1, 4, 384)
