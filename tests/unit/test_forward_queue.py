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
