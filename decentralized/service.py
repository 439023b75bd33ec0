"""gRPC servicers: thin wire <-> domain adapters. No model math, no policy, no pickle.

Every handler goes through `_serving`, which counts the RPC, times it, and maps domain errors
to status codes through the single table in `decentralized.errors`. Unexpected exceptions
become INTERNAL with a generic message: tracebacks never go to peers.

Work for a node's compute threads goes through a `ComputeQueue`: at most `limit` jobs are
admitted at once (received, waiting or running), at most `per_caller` of them from one
certificate name; more get RESOURCE_EXHAUSTED "node busy" before the node buffers or computes
anything of them. The forward queue takes `MAX_QUEUED_FORWARDS` (half of it per caller); the
classification, enclave and HE services keep queues of their own. A forward job whose caller
cancelled or whose deadline passed while it waited is skipped instead of computed, and drops
its tensor at once; the node's `load` counts a job until the compute thread is done with it,
even when its caller is gone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
import torch
from cryptography import x509

from decentralized import _wire
from decentralized.errors import (
    Draining,
    InvalidRequest,
    MeshError,
    NotANode,
    Overloaded,
    UploadStalled,
)
from decentralized.membership import verify_announced
from decentralized.models import SpanRuntime
from decentralized.shards import ForwardJob, ShardHost
from decentralized.transport import admission_key, caller_names, node_names
from decentralized.v1 import common_pb2, mesh_pb2, mesh_pb2_grpc, shard_pb2, shard_pb2_grpc
from verification.consensus.receipts import receipt_message

if TYPE_CHECKING:
    from decentralized.metrics import NodeMetrics
    from decentralized.node import Node

logger = logging.getLogger(__name__)

# Forward jobs being received, waiting for or running on the compute thread; more are refused
# as "node busy". Each holds its input tensor (up to `_wire.MAX_TENSOR_BYTES`) while it waits.
MAX_QUEUED_FORWARDS = 8
# A client-streamed request (ForwardStream, HE uploads) holds its place in a queue while it
# arrives: it must send a message at least every UPLOAD_IDLE_S (its header first), keep up
# with UPLOAD_MIN_BYTES_PER_S from UPLOAD_GRACE_S after its header (with UPLOAD_IDLE_S of
# slack), and so be whole within the grace plus its announced size at that rate.
UPLOAD_IDLE_S = 10.0
UPLOAD_GRACE_S = 10.0
UPLOAD_MIN_BYTES_PER_S = 1024 * 1024


class _Skipped(MeshError):
    """A queued job whose deadline passed before the compute thread reached it."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class _Ticket:
    """One forward job on its way to the compute thread.

    The compute thread calls `run`; the event loop calls `abandon` when the caller is gone
    (cancelled, or past its deadline). `run` checks both before computing anything.
    """

    __slots__ = ("_job", "_span", "deadline", "abandoned")

    def __init__(self, job: ForwardJob, span: SpanRuntime, deadline: float) -> None:
        self._job: ForwardJob | None = job
        self._span: SpanRuntime | None = span
        self.deadline = deadline  # time.monotonic() value; math.inf without a deadline
        self.abandoned = False

    def abandon(self) -> None:
        self.abandoned = True
        self._job = self._span = None  # the queue entry no longer holds the tensor

    def run(self, host: ShardHost) -> torch.Tensor:
        job, span = self._job, self._span
        self._job = self._span = None
        if self.abandoned or job is None:
            raise _Skipped("the caller gave up on this request before it was computed")
        if time.monotonic() >= self.deadline:
            raise _Skipped("the request's deadline passed while it waited for compute")
        return host.forward(job, span, self._stopped)

    def _stopped(self) -> bool:
        """Whether a job that has started should stop (between layers)."""
        return self.abandoned or time.monotonic() >= self.deadline


async def run_counted(
    node: Node,
    executor: Executor,
    fn: Callable[..., Any],
    *args: Any,
    on_cancel: Callable[[], None] | None = None,
    on_done: Callable[[], None] | None = None,
) -> Any:
    """`fn(*args)` on `executor`, counted in the node's advertised `load` until the executor
    is done with it: a caller that leaves (cancelled, past its deadline) does not make a busy
    node look idle. A call that leaves before its job started removes it from the queue;
    `on_cancel` runs then (e.g. to drop the job's tensors), `on_done` when the executor is
    done with the job or dropped it (on the event loop).
    """
    loop = asyncio.get_running_loop()

    def finished() -> None:
        node.load -= 1
        if on_done is not None:
            on_done()

    def done(_: concurrent.futures.Future[Any]) -> None:
        # On the executor's thread when the job ran; on the loop's thread when `cancel`
        # removed it from the queue first.
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to count
            loop.call_soon_threadsafe(finished)

    node.load += 1
    try:
        future = executor.submit(fn, *args)
    except BaseException:
        finished()
        raise
    future.add_done_callback(done)
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        if on_cancel is not None:
            on_cancel()
        future.cancel()
        raise


class UploadClock:
    """How long a client-streamed request may take to arrive (see `upload_time`)."""

    def __init__(self, timeout: asyncio.Timeout, loop: asyncio.AbstractEventLoop) -> None:
        self._timeout = timeout
        self._loop = loop
        self._header_at = math.inf
        self.end = math.inf  # the whole upload's deadline, once the header announced its size

    def announce(self, total_bytes: int) -> None:
        """The header arrived, announcing `total_bytes`: the rest has until the grace plus
        that size at the minimum rate."""
        self._header_at = self._loop.time()
        self.end = self._header_at + UPLOAD_GRACE_S + max(0, total_bytes) / UPLOAD_MIN_BYTES_PER_S

    def arrived(self, received: int) -> None:
        """A message arrived, `received` bytes in all: the next one is due within
        `UPLOAD_IDLE_S`, and before the bytes so far fall behind the minimum rate."""
        now = self._loop.time()
        pace = self._header_at + UPLOAD_GRACE_S + UPLOAD_IDLE_S + received / UPLOAD_MIN_BYTES_PER_S
        self._timeout.reschedule(min(self.end, now + UPLOAD_IDLE_S, pace))


@contextlib.asynccontextmanager
async def upload_time(what: str) -> AsyncIterator[UploadClock]:
    """Bound the time a client-streamed request takes to arrive: the body calls `announce`
    on its header and `arrived` after every message (the header's too); a stream that sends
    nothing for `UPLOAD_IDLE_S`, falls behind the minimum rate, or is not complete by its
    deadline gets `UploadStalled` (DEADLINE_EXCEEDED) and gives up its place."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout_at(loop.time() + UPLOAD_IDLE_S) as timeout:
            clock = UploadClock(timeout, loop)
            yield clock
    except TimeoutError:
        if loop.time() >= clock.end:
            why = (
                f"was not complete {UPLOAD_GRACE_S:.0f} s after its header plus its size at "
                f"{UPLOAD_MIN_BYTES_PER_S} bytes/s"
            )
        else:
            why = (
                f"sent nothing for {UPLOAD_IDLE_S:.0f} s, or fell behind "
                f"{UPLOAD_MIN_BYTES_PER_S} bytes/s after a {UPLOAD_GRACE_S:.0f} s grace"
            )
        raise UploadStalled(f"{what} stalled: it {why}") from None


class ComputeQueue:
    """Admission to one kind of compute work on a node: at most `limit` jobs at once, at most
    `per_caller` of them from one caller (`transport.admission_key`: the CNs of its mesh
    certificate, or its connection on an insecure-dev mesh). Over either limit `admit` raises
    `Overloaded` (RESOURCE_EXHAUSTED), so one client cannot take every place, and what
    waiting jobs hold in memory is bounded by `limit`. Used on the event loop only.
    """

    def __init__(self, what: str, limit: int, per_caller: int) -> None:
        if not 0 < per_caller <= limit:
            raise ValueError(f"need 0 < per_caller <= limit, got {per_caller}, {limit}")
        self.what = what
        self.limit = limit
        self.per_caller = per_caller
        self._held: Counter[tuple[str, ...]] = Counter()

    def __len__(self) -> int:
        return self._held.total()

    def admit(self, caller: tuple[str, ...]) -> Place:
        """A place for one job of `caller`; use it as a context manager around receiving the
        job and `Place.run`."""
        if len(self) >= self.limit:
            raise Overloaded(
                f"node busy: {len(self)} {self.what} already queued "
                f"(limit {self.limit}); retry on another node"
            )
        if self._held[caller] >= self.per_caller:
            raise Overloaded(
                f"node busy for this client: {self._held[caller]} of its {self.what} are "
                f"queued here (limit {self.per_caller} per client, {self.limit} in all); "
                "retry when one has finished, or on another node"
            )
        self._held[caller] += 1
        return Place(self, caller)

    def _release(self, caller: tuple[str, ...]) -> None:
        self._held[caller] -= 1
        if not self._held[caller]:
            del self._held[caller]


class Place:
    """One admitted job's place in its `ComputeQueue`. Once `run` hands the job to an executor,
    the place is freed when the executor is done with it (or dropped it unstarted), not when
    the caller stops waiting; a job that never got that far frees it on leaving the `with`."""

    __slots__ = ("_queue", "_caller", "_handed", "_released")

    def __init__(self, queue: ComputeQueue, caller: tuple[str, ...]) -> None:
        self._queue = queue
        self._caller = caller
        self._handed = self._released = False

    def __enter__(self) -> Place:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._handed:
            self._release()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._queue._release(self._caller)

    async def run(
        self,
        node: Node,
        executor: Executor,
        fn: Callable[..., Any],
        *args: Any,
        on_cancel: Callable[[], None] | None = None,
    ) -> Any:
        """`run_counted(node, executor, fn, *args)`, holding this place until it is done."""
        if self._handed:
            raise RuntimeError("a place admits one job")
        self._handed = True
        return await run_counted(
            node, executor, fn, *args, on_cancel=on_cancel, on_done=self._release
        )


@contextlib.asynccontextmanager
async def _serving(
    method: str, context: grpc.aio.ServicerContext, metrics: NodeMetrics
) -> AsyncIterator[None]:
    t0 = time.perf_counter()
    code = grpc.StatusCode.OK
    metrics.in_flight.inc()
    try:
        yield
    except MeshError as exc:
        code = exc.code
        logger.info("%s -> %s: %s", method, code.name, exc)
        await context.abort(code, str(exc))
    except asyncio.CancelledError:
        code = grpc.StatusCode.CANCELLED
        raise
    except grpc.aio.AbortError:
        code = context.code() or grpc.StatusCode.UNKNOWN  # type: ignore[assignment]
        raise
    except Exception:
        code = grpc.StatusCode.INTERNAL
        logger.exception("%s failed", method)
        await context.abort(code, f"internal error in {method}")
    finally:
        metrics.in_flight.dec()
        metrics.requests.labels(method, code.name).inc()
        metrics.latency.labels(method).observe(time.perf_counter() - t0)
        if code != grpc.StatusCode.OK:
            metrics.errors.labels(method).inc()


def _job_from_header(
    request: shard_pb2.ForwardRequest,
    hidden: common_pb2.Tensor,
    caller: tuple[str, ...] = (),
) -> ForwardJob:
    if not request.HasField("hidden") and not hidden.dtype:
        raise InvalidRequest("hidden: missing")
    hidden_t = _wire.tensor_from_proto(hidden, "hidden")
    mask_t = (
        _wire.tensor_from_proto(request.attention_mask, "attention_mask")
        if request.HasField("attention_mask")
        else None
    )
    return ForwardJob(
        model=request.model,
        start=request.start,
        end=request.end,
        hidden=hidden_t,
        attention_mask=mask_t,
        session_id=request.session_id,
        past_length=request.past_length,
        input_digest=_wire.forward_input_digest(
            hidden, request.attention_mask if request.HasField("attention_mask") else None
        ),
        caller=caller,
    )


async def _receive_stream(
    request_iterator: AsyncIterator[shard_pb2.ForwardRequest], caller: tuple[str, ...]
) -> ForwardJob:
    """A ForwardStream's job: its chunks joined, checked against the header's size."""
    header: shard_pb2.ForwardRequest | None = None
    chunks: list[bytes] = []
    received = 0
    limit = _wire.MAX_TENSOR_BYTES
    async with upload_time("ForwardStream") as clock:
        async for chunk in request_iterator:
            if header is None:
                header = chunk
                limit = _wire.tensor_header_nbytes(chunk.hidden, "hidden")
                if chunk.total_bytes != limit:
                    raise InvalidRequest(
                        f"hidden: header announces {chunk.total_bytes} bytes but dtype and "
                        f"shape need {limit}"
                    )
                clock.announce(limit)
            received += len(chunk.hidden.data)
            clock.arrived(received)
            if received > limit:
                raise InvalidRequest(f"hidden: stream carries more than {limit} bytes")
            chunks.append(chunk.hidden.data)
    if header is None:
        raise InvalidRequest("empty ForwardStream: no header chunk")
    if received != limit:
        raise InvalidRequest(f"hidden: stream ended after {received} of {limit} bytes (truncated)")
    hidden = common_pb2.Tensor(
        data=b"".join(chunks), dtype=header.hidden.dtype, shape=header.hidden.shape
    )
    return _job_from_header(header, hidden, caller)


class ShardServicer(shard_pb2_grpc.ShardServicer):
    """Forward, ForwardStream and EndSession over a `ShardHost`."""

    def __init__(self, node: Node, host: ShardHost, executor: Executor) -> None:
        self._node = node
        self._host = host
        self._executor = executor
        self._queue = ComputeQueue(
            "forward requests", MAX_QUEUED_FORWARDS, per_caller=MAX_QUEUED_FORWARDS // 2
        )

    async def _compute(
        self,
        job: ForwardJob,
        span: SpanRuntime,
        place: Place,
        context: grpc.aio.ServicerContext,
    ) -> torch.Tensor:
        """Run the job on the compute thread unless the caller leaves before it starts
        (`_Ticket`); `load` and the job's place in the queue are freed when the compute thread
        is done with the job (or skipped it), not when the caller stops waiting."""
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else math.inf
        ticket = _Ticket(job, span, deadline)
        result: torch.Tensor = await place.run(
            self._node, self._executor, ticket.run, self._host, on_cancel=ticket.abandon
        )
        return result

    async def _run(
        self, job: ForwardJob, place: Place, context: grpc.aio.ServicerContext
    ) -> shard_pb2.ForwardReply:
        if self._node.draining:
            raise Draining("node is shutting down; retry on another node")
        span = self._host.validate(job)  # cheap checks before queueing for compute
        t0 = time.perf_counter()
        out = await self._compute(job, span, place, context)
        hidden = _wire.tensor_to_proto(out)
        output_digest = _wire.proto_digest(hidden)
        node_id = self._node.identity.node_id
        signature = self._node.identity.sign_bytes(
            receipt_message(
                model=job.model,
                start=job.start,
                end=job.end,
                session_id=job.session_id,
                past_length=job.past_length,
                input_digest=job.input_digest,
                output_digest=output_digest,
                node_id=node_id,
            )
        )
        reply = shard_pb2.ForwardReply(
            hidden=hidden,
            compute_s=time.perf_counter() - t0,
            node_id=node_id,
            device=str(self._host.device),
            input_digest=job.input_digest,
            output_digest=output_digest,
            signature=signature,
        )
        metrics = self._node.metrics
        metrics.bytes_in.inc(job.hidden.numel() * job.hidden.element_size())
        metrics.bytes_out.inc(len(reply.hidden.data))
        metrics.sessions.set(self._host.session_count)
        return reply

    async def Forward(
        self, request: shard_pb2.ForwardRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb2.ForwardReply:
        async with _serving("Forward", context, self._node.metrics):
            caller = caller_names(context)
            with self._queue.admit(admission_key(context)) as place:
                job = _job_from_header(request, request.hidden, caller)
                return await self._run(job, place, context)
        raise AssertionError("unreachable")  # pragma: no cover - abort raises

    async def ForwardStream(
        self,
        request_iterator: AsyncIterator[shard_pb2.ForwardRequest],
        context: grpc.aio.ServicerContext,
    ) -> shard_pb2.ForwardReply:
        async with _serving("ForwardStream", context, self._node.metrics):
            caller = caller_names(context)
            with self._queue.admit(admission_key(context)) as place:  # before buffering
                job = await _receive_stream(request_iterator, caller)
                return await self._run(job, place, context)
        raise AssertionError("unreachable")  # pragma: no cover

    async def EndSession(
        self, request: shard_pb2.EndSessionRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb2.EndSessionReply:
        async with _serving("EndSession", context, self._node.metrics):
            existed = self._host.end_session(request.session_id, caller_names(context))
            self._node.metrics.sessions.set(self._host.session_count)
            return shard_pb2.EndSessionReply(existed=existed)
        raise AssertionError("unreachable")  # pragma: no cover


def _check_caller_is_node(context: grpc.aio.ServicerContext, name: str) -> None:
    """Only a node certificate (serverAuth) may announce a record, and only under its own CN.

    Client certificates of the mesh CA can call every read RPC, but cannot inject records; a
    node cannot announce a record under another node's name.
    """
    auth = context.auth_context()
    pems = auth.get("x509_pem_cert") or []
    if not pems:
        raise NotANode("announcing a record needs a node certificate of the mesh CA")
    cns = node_names(x509.load_pem_x509_certificate(pems[0]))
    if not cns:
        raise NotANode("a client certificate cannot announce a node record")
    if name not in cns:
        raise NotANode(f"record names node {name!r} but the caller's certificate is {cns}")


class MeshServicer(mesh_pb2_grpc.MeshServicer):
    """GetInfo, Join, Heartbeat, ListPeers over the node's peer table."""

    def __init__(self, node: Node, peer_list: Callable[[], mesh_pb2.PeerList]) -> None:
        self._node = node
        self._peer_list = peer_list

    async def GetInfo(
        self, request: mesh_pb2.GetInfoRequest, context: grpc.aio.ServicerContext
    ) -> mesh_pb2.NodeInfo:
        async with _serving("GetInfo", context, self._node.metrics):
            return self._node.info()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _accept(
        self, request: mesh_pb2.JoinRequest, context: grpc.aio.ServicerContext
    ) -> mesh_pb2.PeerList:
        record = verify_announced(request.record, self._node.peers.ca)  # InvalidRequest
        if not self._node.creds.insecure_dev:
            _check_caller_is_node(context, record.name)
        self._node.peers.update(request.record)
        return self._peer_list()

    async def Join(
        self, request: mesh_pb2.JoinRequest, context: grpc.aio.ServicerContext
    ) -> mesh_pb2.PeerList:
        async with _serving("Join", context, self._node.metrics):
            return await self._accept(request, context)
        raise AssertionError("unreachable")  # pragma: no cover

    async def Heartbeat(
        self, request: mesh_pb2.JoinRequest, context: grpc.aio.ServicerContext
    ) -> mesh_pb2.PeerList:
        async with _serving("Heartbeat", context, self._node.metrics):
            return await self._accept(request, context)
        raise AssertionError("unreachable")  # pragma: no cover

    async def ListPeers(
        self, request: mesh_pb2.ListPeersRequest, context: grpc.aio.ServicerContext
    ) -> mesh_pb2.PeerList:
        async with _serving("ListPeers", context, self._node.metrics):
            return self._peer_list()
        raise AssertionError("unreachable")  # pragma: no cover
