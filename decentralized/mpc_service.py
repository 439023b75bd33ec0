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
import collections
import dataclasses
import logging
import math
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
from decentralized.mpc_classifiers import THREAT_MODELS, HostedClassifier
from decentralized.service import _serving
from decentralized.transport import caller_names
from decentralized.v1 import common_pb2, mpc_pb2, mpc_pb2_grpc

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from decentralized.metrics import NodeMetrics
    from decentralized.transport import Credentials

logger = logging.getLogger(__name__)

MAX_BATCH = 16
MAX_TOKENS = 512
MAX_NEW_TOKENS = 64  # greedy steps of one generation session
OPEN_TTL_S = 60.0  # an opened rank must be run within this
MAX_RUN_S = 1800.0  # longest any rank may compute
START_TIMEOUT_S = 120.0  # for a worker process to import and bind its mailbox
SEED_BYTES = 16
EXIT_GRACE_S = 5.0  # a rank that answered may take this long to exit before it is killed
MAX_DEALER_PLANS = 16  # party 0's dealer plans kept, by public shapes (least recently used out)


@dataclass(slots=True)
class _Rank:
    job: mpc_worker.Job
    process: Any  # multiprocessing.Process (spawn context)
    conn: Connection
    opener: tuple[str, ...] = ()  # the certificate names of the client that opened it
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
        advertise_host: str = "",
        max_sessions: int = 2,
        classifiers: tuple[HostedClassifier, ...] = (),
        warm_spare: bool = True,
    ) -> None:
        self.name = name
        self.models = models
        self.classifiers = {c.name: c for c in classifiers}
        self.creds = creds
        self.listen_host = listen_host
        # The host peers dial for this node's mailboxes (the node's --advertise host); a
        # mailbox listens on `listen_host` at a free port.
        self.advertise_host = advertise_host or listen_host
        self.max_sessions = max_sessions
        self._ranks: dict[str, _Rank] = {}
        self._ctx = mp.get_context("spawn")
        # Party 0's dealer plans (`mpc_worker`'s docstring): which correlated values a
        # computation of these public shapes asks the dealer for, in order. Shapes only.
        self._plans: collections.OrderedDict[tuple[Any, ...], Any] = collections.OrderedDict()
        # One warm worker process (`mpc_worker.serve_spare`: its imports done) for the next
        # session. A taken spare is replaced when its session ends, not while it runs: the
        # imports (~4 s of CPU) would slow the session down.
        self._warm_spare = warm_spare and bool(models or classifiers)
        self._spare: tuple[Any, Connection] | None = None
        self._spawned = 0
        if self._warm_spare:
            self._start_spare()

    def _spawn(self, target: Any, args: tuple[Any, ...], name: str) -> tuple[Any, Connection]:
        """A worker process running `target(their_end, *args)`, and the node's end of its pipe."""
        mine, theirs = self._ctx.Pipe()
        process = self._ctx.Process(target=target, args=(theirs, *args), name=name, daemon=True)
        process.start()
        theirs.close()
        return process, mine

    def _start_spare(self) -> None:
        self._spawned += 1
        self._spare = self._spawn(mpc_worker.serve_spare, (), f"mpc-spare-{self._spawned}")

    def _worker(self, job: mpc_worker.Job) -> tuple[Any, Connection]:
        """A process running `job`: the warm spare if it is alive, else a fresh one."""
        spare, self._spare = self._spare, None
        if spare is not None:
            process, conn = spare
            if process.is_alive():
                try:
                    conn.send({"job": job, "creds": self.creds})
                except OSError:
                    pass
                else:
                    return process, conn
            _Rank(job, process, conn).kill()
        return self._spawn(
            mpc_worker.run, (job, self.creds), f"mpc-{job.session_id[:8]}-r{job.rank}"
        )

    def _reap(self) -> None:
        now = time.monotonic()
        for sid, rank in list(self._ranks.items()):
            stale = not rank.running and now - rank.opened_at > OPEN_TTL_S
            if stale or (not rank.process.is_alive() and not rank.running):
                rank.kill()
                del self._ranks[sid]
        if self._warm_spare and self._spare is None and not self._ranks:
            self._start_spare()  # a rank that ended without `_end` (never run, failed open)

    def _job(self, request: mpc_pb2.OpenSession) -> mpc_worker.Job:
        if not _wire.SESSION_ID_RE.match(request.session_id):
            raise InvalidRequest("session_id must be 16-64 characters of [A-Za-z0-9_-]")
        if request.model not in self.models and request.model not in self.classifiers:
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
        timeout = request.peer_timeout_s or 60.0
        if not 1.0 <= timeout <= 600.0:
            raise InvalidRequest("peer_timeout_s must be within [1, 600]")
        hosted = self.classifiers.get(request.model)
        if hosted is not None:
            return self._classifier_job(request, names, timeout, hosted)
        mask = _wire.tensor_from_proto(request.attention_mask, "attention_mask")
        if mask.dim() != 2 or not 1 <= mask.shape[0] <= MAX_BATCH:
            raise InvalidRequest(f"attention_mask must be (batch <= {MAX_BATCH}, tokens)")
        if not 1 <= mask.shape[1] <= MAX_TOKENS:
            raise InvalidRequest(f"sequences must have 1..{MAX_TOKENS} tokens")
        _wire.check_mask(mask, mask[:, :, None])
        if request.model in mpc_worker.DECODERS:
            if not 1 <= request.max_new_tokens <= MAX_NEW_TOKENS:
                raise InvalidRequest(
                    f"{request.model} generates: max_new_tokens must be in [1, {MAX_NEW_TOKENS}]"
                )
            if mask.shape[0] != 1 or not bool(mask.all()):
                raise InvalidRequest("generation takes one prompt: an all-ones (1, T) mask")
        elif request.max_new_tokens:
            raise InvalidRequest(f"{request.model} is an encoder: max_new_tokens must be 0")
        return mpc_worker.Job(
            session_id=request.session_id,
            rank=request.rank,
            model=request.model,
            threat_model=request.threat_model,
            attention_mask=mask.to(torch.int64).numpy().copy(),
            rank_names=names,
            peer_timeout_s=timeout,
            listen_host=self.listen_host,
            advertise_host=self.advertise_host,
            hidden_size=get_spec(request.model).hidden_size,
            vocab_size=get_spec(request.model).vocab_size,
            max_new_tokens=request.max_new_tokens,
        )

    def _classifier_job(
        self,
        request: mpc_pb2.OpenSession,
        names: tuple[str, ...],
        timeout: float,
        hosted: HostedClassifier,
    ) -> mpc_worker.Job:
        if request.threat_model not in THREAT_MODELS:
            raise InvalidRequest(f"{hosted.name} runs under {', '.join(THREAT_MODELS)} only")
        if request.max_new_tokens or request.HasField("attention_mask"):
            raise InvalidRequest(f"{hosted.name} is a classifier: no max_new_tokens or mask")
        shape = hosted.check_input_shape(list(request.input_shape), MAX_BATCH)
        return mpc_worker.Job(
            session_id=request.session_id,
            rank=request.rank,
            model=request.model,
            threat_model=request.threat_model,
            attention_mask=None,
            rank_names=names,
            peer_timeout_s=timeout,
            listen_host=self.listen_host,
            advertise_host=self.advertise_host,
            hidden_size=shape[2],
            vocab_size=0,
            checkpoint=str(hosted.path),
            input_shape=shape,
        )

    def describe(self, model: str) -> mpc_pb2.ModelDescription:
        hosted = self.classifiers.get(model)
        if hosted is None:
            raise UnknownModel(
                f"{self.name} hosts no MPC classifier {model!r}"
                + (f"; it hosts {', '.join(self.classifiers)}" if self.classifiers else "")
            )
        return hosted.describe()

    def _learn(self, job: mpc_worker.Job, reply: dict[str, Any]) -> None:
        """Party 0's final reply: keep the dealer plan it recorded; forget the one it was
        given if the session failed with it (a plan that no longer fits is not offered again)."""
        if job.rank != 0:
            return
        key = job.plan_key()
        plan = reply.pop("dealer_plan", None)
        if "error" in reply:
            if job.dealer_plan is not None:
                self._plans.pop(key, None)
            return
        if plan is not None:
            self._plans[key] = plan
            while len(self._plans) > MAX_DEALER_PLANS:
                self._plans.popitem(last=False)
        if key in self._plans:
            self._plans.move_to_end(key)
        dealer = reply.get("dealer") or {}
        logger.info(
            "mpc session %s...: dealer %s: %d online requests, %d prefetch round trips",
            job.session_id[:8],
            "preprocessed" if job.dealer_plan is not None else "online (plan recorded)",
            dealer.get("online_requests", 0),
            dealer.get("round_trips", 0),
        )

    async def open(self, request: mpc_pb2.OpenSession, caller: tuple[str, ...] = ()) -> str:
        """Open a rank for the client whose certificate names are `caller`: only it may run it."""
        self._reap()
        job = self._job(request)
        if job.rank == 0 and (plan := self._plans.get(job.plan_key())) is not None:
            job = dataclasses.replace(job, dealer_plan=plan)
        if request.session_id in self._ranks:
            raise SessionMismatch(f"session {request.session_id[:8]}... is already open here")
        if len(self._ranks) >= self.max_sessions:
            raise Overloaded(f"{self.name} runs {self.max_sessions} MPC ranks already")
        process, mine = self._worker(job)
        rank = _Rank(job, process, mine, caller)
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

    async def _start(
        self,
        chunks: AsyncIterator[mpc_pb2.RunChunk],
        caller: tuple[str, ...],
        *,
        generate: bool,
    ) -> tuple[mpc_pb2.RunChunk, _Rank]:
        """Claim the session rank named by the first chunk and hand the process its peers and
        step 0's input share. Only the certificate that opened the rank may claim it (another
        caller that learnt the id, e.g. a peer party, gets the answer an unknown id gets)."""
        first = await anext(chunks, None)
        if first is None:
            raise InvalidRequest("empty request stream")
        rank = self._ranks.get(first.session_id)
        if rank is None or rank.opener != caller:
            raise SessionMismatch("unknown or expired session: Open it first")
        if rank.running:
            raise SessionMismatch("this session rank is already running")
        job = rank.job
        rank.running = True
        try:
            decoder = bool(job.max_new_tokens) and job.rank != mpc_worker.DEALER_RANK
            if generate != decoder:
                raise InvalidRequest(
                    "the computing parties of a generation session use Generate; "
                    "encoder sessions and the dealer use Run"
                )
            peers = list(first.relay_addresses)
            if len(peers) != mpc_worker.WORLD_SIZE:
                raise InvalidRequest("the first chunk must carry 3 relay addresses")
            expected = _expected_share_bytes(job, 0)
            share = await _collect_share(first, chunks, expected)
            if not generate and await anext(chunks, None) is not None:
                raise InvalidRequest(f"input share exceeds the {expected} bytes this rank takes")
            rank.conn.send({"peers": peers, "input": share})
        except BaseException:
            self._end(first.session_id, rank, "its start failed")
            raise
        return first, rank

    def _end(self, session_id: str, rank: _Rank, why: str) -> None:
        if why:
            logger.info(
                "mpc session %s...: rank %d ends: %s (process exit code %s)",
                session_id[:8],
                rank.job.rank,
                why,
                rank.process.exitcode,
            )
        rank.kill(grace_s=EXIT_GRACE_S)
        self._ranks.pop(session_id, None)
        if self._warm_spare and self._spare is None:
            self._start_spare()

    async def run(
        self,
        chunks: AsyncIterator[mpc_pb2.RunChunk],
        deadline_s: float,
        caller: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        first, rank = await self._start(chunks, caller, generate=False)
        why = ""
        try:
            reply = await _receive(rank.conn, min(deadline_s, MAX_RUN_S))
        except BaseException as exc:
            why = type(exc).__name__
            self._learn(rank.job, {"error": why})
            raise
        finally:
            self._end(first.session_id, rank, why)
        self._learn(rank.job, reply)
        if "error" in reply:
            raise SessionAborted(f"rank {rank.job.rank} on {self.name}: {reply['error']}")
        return reply

    async def generate(
        self,
        chunks: AsyncIterator[mpc_pb2.RunChunk],
        deadline_s: float,
        caller: tuple[str, ...] = (),
    ) -> AsyncIterator[dict[str, Any]]:
        """A computing party of a generation session: yields each step's message from the
        process, then its final one; party 1's later input shares are read from `chunks`."""
        first, rank = await self._start(chunks, caller, generate=True)
        job = rank.job
        ends_at = time.monotonic() + min(deadline_s, MAX_RUN_S)
        why = ""
        try:
            while True:
                reply = await _receive(rank.conn, max(ends_at - time.monotonic(), 0.1))
                if "step" not in reply:
                    self._learn(job, reply)
                if "error" in reply:
                    raise SessionAborted(f"rank {job.rank} on {self.name}: {reply['error']}")
                yield reply
                if "step" not in reply:
                    return
                step = int(reply["step"]) + 1
                if job.rank == 1 and step < job.max_new_tokens:
                    share = await _collect_share(None, chunks, _expected_share_bytes(job, step))
                    rank.conn.send({"input": share})
        except BaseException as exc:
            why = type(exc).__name__
            if not isinstance(exc, SessionAborted):  # an error reply was learned from above
                self._learn(job, {"error": why})
            raise
        finally:
            self._end(first.session_id, rank, why)

    def close(self) -> None:
        for rank in self._ranks.values():
            rank.kill()
        self._ranks.clear()
        self._warm_spare = False
        spare, self._spare = self._spare, None
        if spare is not None:
            spare[1].close()  # the spare sees EOF and exits
            spare[0].join(2)
            if spare[0].is_alive():
                spare[0].kill()
            spare[0].join(5)


def _expected_share_bytes(job: mpc_worker.Job, step: int) -> int:
    """Bytes of this rank's input share at `step`: party 0 sends a seed once, the dealer none."""
    if job.rank == 1:
        return math.prod(job.step_shape(step)) * 8
    return SEED_BYTES if job.rank == 0 and step == 0 else 0


async def _collect_share(
    first: mpc_pb2.RunChunk | None, chunks: AsyncIterator[mpc_pb2.RunChunk], expected: int
) -> bytes:
    """Exactly `expected` bytes of share from `first` and the chunks after it. A step's share
    ends at its size (a generation stream stays open for the next step); Run's stream must end
    there too (checked by the caller's next read)."""
    parts = [first.share] if first is not None else []
    size = sum(len(p) for p in parts)
    while size < expected:
        chunk = await anext(chunks, None)
        if chunk is None:
            raise InvalidRequest(f"input share has {size} bytes, this rank takes {expected}")
        if chunk.relay_addresses:
            raise InvalidRequest("only the first chunk carries relay addresses")
        size += len(chunk.share)
        parts.append(chunk.share)
    if size > expected:
        raise InvalidRequest(f"input share exceeds the {expected} bytes this rank takes")
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


def _dealer_fields(reply: dict[str, Any]) -> dict[str, Any]:
    """Party 0's dealer figures for RunResult / StepResult (empty for the other ranks)."""
    dealer = reply.get("dealer")
    if not dealer:
        return {}
    return {
        "dealer_online_requests": int(dealer["online_requests"]),
        "dealer_round_trips": int(dealer["round_trips"]),
        "dealer_preprocessed": int(dealer["planned"]) > 0,
    }


class MPCSessionServicer(mpc_pb2_grpc.MPCSessionServicer):
    def __init__(self, host: MPCHost, metrics: NodeMetrics) -> None:
        self._host = host
        self._metrics = metrics

    async def Open(  # noqa: N802 - the proto's RPC name
        self, request: mpc_pb2.OpenSession, context: grpc.aio.ServicerContext
    ) -> mpc_pb2.SessionOpened:
        async with _serving("MPCSession.Open", context, self._metrics):
            address = await self._host.open(request, caller_names(context))
            return mpc_pb2.SessionOpened(relay_address=address)
        raise AssertionError("unreachable")  # pragma: no cover - _serving aborts

    async def Run(  # noqa: N802 - the proto's RPC name
        self, request_iterator: AsyncIterator[mpc_pb2.RunChunk], context: grpc.aio.ServicerContext
    ) -> mpc_pb2.RunResult:
        async with _serving("MPCSession.Run", context, self._metrics):
            remaining = context.time_remaining()
            deadline = MAX_RUN_S if remaining is None else max(remaining - 1.0, 1.0)
            reply = await self._host.run(request_iterator, deadline, caller_names(context))
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
                **_dealer_fields(reply),
            )
        raise AssertionError("unreachable")  # pragma: no cover - _serving aborts

    async def Describe(  # noqa: N802 - the proto's RPC name
        self, request: mpc_pb2.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> mpc_pb2.ModelDescription:
        async with _serving("MPCSession.Describe", context, self._metrics):
            return self._host.describe(request.model)
        raise AssertionError("unreachable")  # pragma: no cover - _serving aborts

    async def Generate(  # noqa: N802 - the proto's RPC name
        self, request_iterator: AsyncIterator[mpc_pb2.RunChunk], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[mpc_pb2.StepResult]:
        async with _serving("MPCSession.Generate", context, self._metrics):
            remaining = context.time_remaining()
            deadline = MAX_RUN_S if remaining is None else max(remaining - 1.0, 1.0)
            caller = caller_names(context)
            async for reply in self._host.generate(request_iterator, deadline, caller):
                if "step" in reply:
                    yield mpc_pb2.StepResult(
                        step=int(reply["step"]),
                        token_share=common_pb2.Tensor(
                            data=reply["token_share"], dtype="int64", shape=reply["token_shape"]
                        ),
                        logit_bound=float(reply["logit_bound"]),
                    )
                else:
                    yield mpc_pb2.StepResult(
                        done=True,
                        bytes_sent=int(reply["bytes_sent"]),
                        bytes_received=int(reply["bytes_received"]),
                        rounds=int(reply["rounds"]),
                        seconds=float(reply["seconds"]),
                        **_dealer_fields(reply),
                    )
