"""The `MPCSession` service: a node hosts ranks of MPC sessions that clients start.

A client that wants `privacy="mpc"` picks two party nodes and a dealer node among those whose
record lists the model in `mpc_models`, then per node: `Open` (the node validates the request
and spawns a fresh process for that rank, `decentralized.mpc_worker`, which binds its relay
mailbox) and `Run` (the client streams the relay addresses and this rank's input share; the node
hands them to the process and answers with the rank's output share when it ends).

Limits a node enforces: `max_sessions` ranks at once (RESOURCE_EXHAUSTED beyond), a batch of at
most `MAX_BATCH` sequences of at most `MAX_TOKENS` tokens, an opened rank that is not run within
`OPEN_TTL_S` is killed, and a rank that runs past its deadline (the RPC's, at most
`MAX_RUN_S`) is killed and answered DEADLINE_EXCEEDED. A rank that fails never takes the node
down: it is a separate process.

Threat: the node sees its rank's share (uniformly random), the public attention mask, and the
session's metadata (model, threat model, batch size, sequence length, the other ranks' names).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import torch

from decentralized import _wire, mpc_worker
from decentralized.errors import (
    InvalidRequest,
    NotANode,
    Overloaded,
    SessionAborted,
    SessionMismatch,
    UnknownModel,
)
from decentralized.models import get_spec
from decentralized.service import _serving
from decentralized.v1 import common_pb2, mpc_pb2, mpc_pb2_grpc

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from decentralized.metrics import NodeMetrics
    from decentralized.transport import Credentials

logger = logging.getLogger(__name__)

MAX_BATCH = 16
MAX_TOKENS = 512
OPEN_TTL_S = 60.0  # an opened rank must be run within this
MAX_RUN_S = 1800.0  # longest any rank may compute
START_TIMEOUT_S = 120.0  # for a worker process to import and bind its mailbox
SEED_BYTES = 16
EXIT_GRACE_S = 5.0  # a rank that answered may take this long to exit before it is killed


@dataclass(slots=True)
class _Rank:
    job: mpc_worker.Job
    process: Any  # multiprocessing.Process (spawn context)
    conn: Connection
    opened_at: float = field(default_factory=time.monotonic)
    running: bool = False

    def kill(self, grace_s: float = 0.0) -> None:
        """Reap the process: let it exit on its own for `grace_s`, then SIGKILL it."""
        if grace_s > 0:
            self.process.join(grace_s)
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()


class MPCHost:
    """The ranks of MPC sessions this node runs, one process each."""

    def __init__(
        self,
        name: str,
        models: tuple[str, ...],
        creds: Credentials,
        listen_host: str,
        *,
        max_sessions: int = 2,
    ) -> None:
        self.name = name
        self.models = models
        self.creds = creds
        self.listen_host = listen_host
        self.max_sessions = max_sessions
        self._ranks: dict[str, _Rank] = {}
        self._ctx = mp.get_context("spawn")

    def _reap(self) -> None:
        now = time.monotonic()
        for sid, rank in list(self._ranks.items()):
            stale = not rank.running and now - rank.opened_at > OPEN_TTL_S
            if stale or (not rank.process.is_alive() and not rank.running):
                rank.kill()
                del self._ranks[sid]

    def _job(self, request: mpc_pb2.OpenSession) -> mpc_worker.Job:
        if not _wire.SESSION_ID_RE.match(request.session_id):
            raise InvalidRequest("session_id must be 16-64 characters of [A-Za-z0-9_-]")
        if request.model not in self.models:
            get_spec(request.model)  # UnknownModel for a model nobody knows
            raise UnknownModel(f"{request.model} is not served under MPC on {self.name}")
        if request.threat_model not in mpc_worker.THREAT_MODELS:
            raise InvalidRequest(
                f"threat_model must be one of {mpc_worker.THREAT_MODELS}, "
                f"got {request.threat_model!r}"
            )
        if request.rank >= mpc_worker.WORLD_SIZE:
            raise InvalidRequest(f"rank must be 0, 1 or 2 (the dealer), got {request.rank}")
        names = tuple(request.rank_names)
        if len(names) != mpc_worker.WORLD_SIZE or len(set(names)) != len(names):
            raise InvalidRequest("rank_names must name 3 distinct nodes")
        if names[request.rank] != self.name:
            raise NotANode(f"rank {request.rank} is {names[request.rank]!r}, this is {self.name}")
        mask = _wire.tensor_from_proto(request.attention_mask, "attention_mask")
        if mask.dim() != 2 or not 1 <= mask.shape[0] <= MAX_BATCH:
            raise InvalidRequest(f"attention_mask must be (batch <= {MAX_BATCH}, tokens)")
        if not 1 <= mask.shape[1] <= MAX_TOKENS:
            raise InvalidRequest(f"sequences must have 1..{MAX_TOKENS} tokens")
        _wire.check_mask(mask, mask[:, :, None])
        timeout = request.peer_timeout_s or 60.0
        if not 1.0 <= timeout <= 600.0:
            raise InvalidRequest("peer_timeout_s must be within [1, 600]")
        return mpc_worker.Job(
            session_id=request.session_id,
            rank=request.rank,
            model=request.model,
            threat_model=request.threat_model,
            attention_mask=mask.to(torch.int64).numpy().copy(),
            rank_names=names,
            peer_timeout_s=timeout,
            listen_host=self.listen_host,
            hidden_size=get_spec(request.model).hidden_size,
        )

    async def open(self, request: mpc_pb2.OpenSession) -> str:
        self._reap()
        job = self._job(request)
        if request.session_id in self._ranks:
            raise SessionMismatch(f"session {request.session_id[:8]}... is already open here")
        if len(self._ranks) >= self.max_sessions:
            raise Overloaded(f"{self.name} runs {self.max_sessions} MPC ranks already")
        mine, theirs = self._ctx.Pipe()
        process = self._ctx.Process(
            target=mpc_worker.run,
            args=(theirs, job, self.creds),
            name=f"mpc-{job.session_id[:8]}-r{job.rank}",
            daemon=True,
        )
        process.start()
        theirs.close()
        rank = _Rank(job, process, mine)
        self._ranks[job.session_id] = rank
        try:
            reply = await _receive(mine, START_TIMEOUT_S)
        except BaseException:
            rank.kill()
            del self._ranks[job.session_id]
            raise
        if "relay_address" not in reply:
            rank.kill()
            del self._ranks[job.session_id]
            raise SessionAborted(f"rank {job.rank} could not start: {reply.get('error')}")
        logger.info(
            "mpc session %s...: rank %d of %s (%s) open at %s",
            job.session_id[:8],
            job.rank,
            job.model,
            job.threat_model,
            reply["relay_address"],
        )
        return str(reply["relay_address"])

    async def run(
        self, chunks: AsyncIterator[mpc_pb2.RunChunk], deadline_s: float
    ) -> dict[str, Any]:
        first = await anext(chunks, None)
        if first is None:
            raise InvalidRequest("empty Run stream")
        rank = self._ranks.get(first.session_id)
        if rank is None:
            raise SessionMismatch("unknown or expired session: Open it first")
        if rank.running:
            raise SessionMismatch("this session rank is already running")
        rank.running = True
        try:
            job = rank.job
            peers = list(first.relay_addresses)
            if len(peers) != mpc_worker.WORLD_SIZE:
                raise InvalidRequest("the first chunk must carry 3 relay addresses")
            share = await _collect_share(first, chunks, _expected_share_bytes(job))
            rank.conn.send({"peers": peers, "input": share})
            reply = await _receive(rank.conn, min(deadline_s, MAX_RUN_S))
        except BaseException as exc:
            logger.info(
                "mpc session %s...: rank %d ends with %s (process exit code %s)",
                first.session_id[:8],
                rank.job.rank,
                type(exc).__name__,
                rank.process.exitcode,
            )
            raise
        finally:
            rank.kill(grace_s=EXIT_GRACE_S)
            self._ranks.pop(first.session_id, None)
        if "error" in reply:
            raise SessionAborted(f"rank {job.rank} on {self.name}: {reply['error']}")
        return reply

    def close(self) -> None:
        for rank in self._ranks.values():
            rank.kill()
        self._ranks.clear()


def _expected_share_bytes(job: mpc_worker.Job) -> int:
    if job.rank == 0:
        return SEED_BYTES
    if job.rank == 1:
        batch, tokens = job.attention_mask.shape
        return batch * tokens * job.hidden_size * 8
    return 0


async def _collect_share(
    first: mpc_pb2.RunChunk, chunks: AsyncIterator[mpc_pb2.RunChunk], expected: int
) -> bytes:
    parts = [first.share]
    size = len(first.share)
    async for chunk in chunks:
        if chunk.session_id and chunk.session_id != first.session_id:
            raise InvalidRequest("a Run stream carries one session")
        size += len(chunk.share)
        if size > expected:
            raise InvalidRequest(f"input share exceeds the {expected} bytes this rank takes")
        parts.append(chunk.share)
    if size != expected:
        raise InvalidRequest(f"input share has {size} bytes, this rank takes {expected}")
    return b"".join(parts)


async def _receive(conn: Connection, timeout_s: float) -> dict[str, Any]:
    """The worker's next message, waiting without blocking the event loop."""
    loop = asyncio.get_running_loop()
    ready = await loop.run_in_executor(None, conn.poll, timeout_s)
    if not ready:
        raise SessionAborted(f"the session rank did not answer within {timeout_s:.0f} s")
    try:
        message: dict[str, Any] = conn.recv()
    except EOFError:
        raise SessionAborted("the session rank's process died") from None
    return message


class MPCSessionServicer(mpc_pb2_grpc.MPCSessionServicer):
    def __init__(self, host: MPCHost, metrics: NodeMetrics) -> None:
        self._host = host
        self._metrics = metrics

    async def Open(  # noqa: N802 - the proto's RPC name
        self, request: mpc_pb2.OpenSession, context: grpc.aio.ServicerContext
    ) -> mpc_pb2.SessionOpened:
        async with _serving("MPCSession.Open", context, self._metrics):
            return mpc_pb2.SessionOpened(relay_address=await self._host.open(request))
        raise AssertionError("unreachable")  # pragma: no cover - _serving aborts

    async def Run(  # noqa: N802 - the proto's RPC name
        self, request_iterator: AsyncIterator[mpc_pb2.RunChunk], context: grpc.aio.ServicerContext
    ) -> mpc_pb2.RunResult:
        async with _serving("MPCSession.Run", context, self._metrics):
            remaining = context.time_remaining()
            deadline = MAX_RUN_S if remaining is None else max(remaining - 1.0, 1.0)
            reply = await self._host.run(request_iterator, deadline)
            shape = reply.get("output_shape")
            share = (
                common_pb2.Tensor(data=reply["output_share"], dtype="int64", shape=shape)
                if shape
                else None
            )
            return mpc_pb2.RunResult(
                output_share=share,
                output_bound=float(reply.get("output_bound", 0.0)),
                bytes_sent=int(reply["bytes_sent"]),
                bytes_received=int(reply["bytes_received"]),
                rounds=int(reply["rounds"]),
                seconds=float(reply["seconds"]),
            )
        raise AssertionError("unreachable")  # pragma: no cover - _serving aborts
