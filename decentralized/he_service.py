"""gRPC servicer of the single-server HE mode: CKKS heads evaluated on a client's ciphertexts.

Threat model (also in proto/decentralized/v1/he.proto and docs/he.md): the node is semi-honest
and sees only ciphertexts and the client's public keys; it never receives the secret key
(`mpc.he.params.load_public_context` refuses a context that carries one). The heads' weights
are the node's, in plaintext here. The client learns the logits, which leak about the head.
No integrity: a malicious node could return a wrong ciphertext and the client would not notice.

Sessions hold one client's deserialized public context (tens of MB): bounded in number, dropped
after `idle_s` without use, refused above `max_context_bytes`. Evaluation runs on one thread
of its own (see `add_he_servicer`). Errors map through `decentralized.errors`.

Two layouts: `Evaluate` takes one ciphertext per example; `EvaluatePacked` (client streaming)
takes one ciphertext per input feature holding up to `params.slots` examples (feature-major,
`mpc.he.engine.evaluate_packed`). A packed batch is buffered whole before evaluation (~300 MB
for MNIST, plus ~400 MB deserialized), bounded by `max_batch_bytes`.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc.aio

from decentralized.errors import (
    Draining,
    InvalidRequest,
    Overloaded,
    SessionMismatch,
    UnknownModel,
)
from decentralized.service import ComputeQueue, Place, _serving, upload_time
from decentralized.transport import admission_key, caller_names
from decentralized.v1 import he_pb2, he_pb2_grpc
from mpc.he.engine import PACKED_LAYOUT, evaluate, evaluate_packed
from mpc.he.errors import DepthExceeded, InvalidCiphertext, InvalidContext, InvalidHead
from mpc.he.head import Head, list_heads, load_head, packed_min_batch, plan
from mpc.he.params import DEFAULT_PARAMS, CKKSParams, load_public_context
from mpc.he.paths import heads_dir

if TYPE_CHECKING:
    from decentralized.node import Node

logger = logging.getLogger(__name__)
HEALTH_NAME = "decentralized.v1.HE"


@dataclass(frozen=True, slots=True, kw_only=True)
class HELimits:
    max_sessions: int = 4  # contexts held at once (each tens of MB in memory), half per client
    idle_s: float = 300.0  # a session unused this long is dropped
    # a public context, both as received and once its SEAL objects are decompressed
    max_context_bytes: int = 128 * 1024 * 1024
    max_inputs_per_call: int = 32  # ciphertexts per Evaluate (~0.4 MB each in, <= 1.3 MB out)
    max_batch_bytes: int = 1024 * 1024 * 1024  # ciphertext bytes per EvaluatePacked stream
    # Evaluate / EvaluatePacked calls and context loads admitted at once (being received,
    # waiting or running), half of them per client: bounds what the node buffers (a packed
    # batch up to max_batch_bytes, ~400 MB more once deserialized)
    max_queued_calls: int = 4


@dataclass(slots=True)
class _Session:
    context: Any  # tenseal.Context, public only
    last_used: float
    caller: tuple[str, ...] = ()  # the CNs of the certificate that opened it (mTLS)
    key: tuple[str, ...] = ()  # whose share of the sessions it takes (`admission_key`)


class HESessions:
    """Open sessions: id -> public context, bounded in count, expired when idle."""

    def __init__(self, limits: HELimits) -> None:
        self._limits = limits
        self._sessions: dict[str, _Session] = {}
        self._pending: Counter[tuple[str, ...]] = Counter()  # uploads in progress, by caller

    def __len__(self) -> int:
        return len(self._sessions)

    def expire(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        idle = self._limits.idle_s
        for sid in [s for s, v in self._sessions.items() if now - v.last_used > idle]:
            del self._sessions[sid]
            logger.info("HE session %s… expired after %.0f s idle", sid[:6], idle)

    @contextlib.contextmanager
    def reserve(self, key: tuple[str, ...]) -> Iterator[None]:
        """Hold a place for a session being uploaded (tens of MB in memory) by the caller
        `key` (`transport.admission_key`), or refuse one: at most `max_sessions` in all, half
        of them (at least one) per caller, sessions held and uploads in progress alike."""
        self.expire()
        held = len(self._sessions) + self._pending.total()
        if held >= self._limits.max_sessions:
            raise Overloaded(
                f"node holds or is receiving {held} HE sessions "
                f"(limit {self._limits.max_sessions}); close one or retry later"
            )
        mine = self._pending[key] + sum(s.key == key for s in self._sessions.values())
        share = max(1, self._limits.max_sessions // 2)
        if mine >= share:
            raise Overloaded(
                f"this client holds or is uploading {mine} HE sessions on this node (limit "
                f"{share} per client, {self._limits.max_sessions} in all); close one first"
            )
        self._pending[key] += 1
        try:
            yield
        finally:
            self._pending[key] -= 1
            if not self._pending[key]:
                del self._pending[key]

    def add(self, context: Any, caller: tuple[str, ...], key: tuple[str, ...]) -> str:
        """Register a session for the certificate names `caller` (whose admission key is
        `key`); call inside `reserve(key)`."""
        sid = secrets.token_urlsafe(24)
        self._sessions[sid] = _Session(context, time.monotonic(), caller, key)
        return sid

    def get(self, sid: str, caller: tuple[str, ...] = ()) -> Any:
        """The session's context, for the certificate that opened it only (another caller
        that learnt the id gets the same answer as for an unknown one)."""
        self.expire()
        session = self._sessions.get(sid)
        if session is None or session.caller != caller:
            raise SessionMismatch(
                "unknown or expired HE session; open a new one (upload the context again)"
            )
        session.last_used = time.monotonic()
        return session.context

    def close(self, sid: str, caller: tuple[str, ...] = ()) -> bool:
        session = self._sessions.get(sid)
        if session is None or session.caller != caller:
            return False
        del self._sessions[sid]
        return True


@dataclass(frozen=True, slots=True)
class _Served:
    head: Head
    strategies: tuple[str, ...]  # per linear layer, for the vector layout
    packed_min_batch: int  # from which batch size the packed layout is estimated cheaper


class HEHeads:
    """The heads found in a directory, loaded on first use and checked against the params."""

    def __init__(self, directory: Path, params: CKKSParams) -> None:
        self.directory = directory
        self.params = params
        self._loaded: dict[str, _Served] = {}

    def get(self, name: str) -> _Served:
        """The head and how it is evaluated; UnknownModel if absent or unusable here."""
        if name not in self._loaded:
            try:
                head = load_head(self.directory, name)
                strategies = tuple(p.strategy for p in plan(head, self.params))
            except FileNotFoundError:
                raise UnknownModel(f"unknown HE head {name!r}; see ListHeads") from None
            except (InvalidHead, DepthExceeded) as exc:
                logger.warning("HE head %r is not served: %s", name, exc)
                raise UnknownModel(f"HE head {name!r} is not usable on this node") from None
            self._loaded[name] = _Served(head, strategies, packed_min_batch(head, self.params))
        return self._loaded[name]

    def infos(self) -> list[he_pb2.HeadInfo]:
        infos = []
        for name in list_heads(self.directory):
            try:
                served = self.get(name)
            except UnknownModel:
                continue
            head, strategies = served.head, served.strategies
            infos.append(
                he_pb2.HeadInfo(
                    name=head.name,
                    input_kind=head.input_kind,
                    input_dim=head.input_dim,
                    labels=list(head.labels),
                    layers=head.describe_layers(),
                    depth=head.depth,
                    strategies=list(strategies),
                    digest=head.digest(),
                    packed_min_batch=served.packed_min_batch,
                )
            )
        return infos


class HEServicer(he_pb2_grpc.HEServicer):
    """ListHeads, OpenSession, Evaluate, CloseSession over the node's heads directory."""

    def __init__(
        self,
        node: Node,
        executor: Executor,
        heads_dir: Path,
        *,
        params: CKKSParams = DEFAULT_PARAMS,
        limits: HELimits | None = None,
    ) -> None:
        self._node = node
        self._executor = executor
        self._params = params
        self._limits = limits or HELimits()
        self._heads = HEHeads(heads_dir, params)
        self._sessions = HESessions(self._limits)
        queued = self._limits.max_queued_calls
        self._queue = ComputeQueue("HE evaluations", queued, max(1, queued // 2))

    async def _compute(self, fn: Any, *args: Any, place: Place) -> Any:
        """`fn(*args)` on the HE thread, holding `place` in the queue until it is done."""
        if self._node.draining:
            raise Draining("node is shutting down; retry on another node")
        return await place.run(self._node, self._executor, fn, *args)

    async def ListHeads(  # noqa: N802 - gRPC method name
        self, request: he_pb2.ListHeadsRequest, context: grpc.aio.ServicerContext
    ) -> he_pb2.ListHeadsReply:
        async with _serving("HE.ListHeads", context, self._node.metrics):
            return he_pb2.ListHeadsReply(
                heads=self._heads.infos(),
                params_name=self._params.name,
                params_description=self._params.describe(),
                max_context_bytes=self._limits.max_context_bytes,
                max_inputs_per_call=self._limits.max_inputs_per_call,
                session_idle_s=self._limits.idle_s,
                layouts=[PACKED_LAYOUT],
                max_batch_examples=self._params.slots,
                max_batch_bytes=self._limits.max_batch_bytes,
            )
        raise AssertionError("unreachable")  # pragma: no cover - abort raises

    async def _receive_context(self, chunks: AsyncIterator[he_pb2.ContextChunk]) -> bytes:
        total, parts, received = -1, [], 0
        async with upload_time("the HE context upload") as clock:
            async for chunk in chunks:
                if total < 0:
                    if chunk.params_name != self._params.name:
                        raise InvalidRequest(
                            f"context made for {chunk.params_name!r}; this node evaluates "
                            f"{self._params.name!r} ({self._params.describe()})"
                        )
                    total = chunk.total_bytes
                    if total > self._limits.max_context_bytes:
                        raise Overloaded(
                            f"context of {total} bytes exceeds the node's "
                            f"{self._limits.max_context_bytes}-byte limit"
                        )
                    clock.announce(total)
                received += len(chunk.data)
                clock.arrived(received)
                if received > total:
                    raise InvalidRequest(
                        f"context stream carries more than the announced {total} B"
                    )
                parts.append(chunk.data)
        if total < 0:
            raise InvalidRequest("empty OpenSession stream: no header chunk")
        if received != total:
            raise InvalidRequest(f"context stream ended after {received} of {total} bytes")
        return b"".join(parts)

    async def OpenSession(  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterator[he_pb2.ContextChunk],
        context: grpc.aio.ServicerContext,
    ) -> he_pb2.OpenSessionReply:
        async with _serving("HE.OpenSession", context, self._node.metrics):
            key = admission_key(context)
            # both places before the upload is read: refused at once, not after ~50 MB
            with self._sessions.reserve(key), self._queue.admit(key) as place:
                data = await self._receive_context(request_iterator)
                self._node.metrics.bytes_in.inc(len(data))
                try:
                    ctx = await self._compute(
                        load_public_context,
                        data,
                        self._params,
                        self._limits.max_context_bytes,
                        place=place,
                    )
                except InvalidContext as exc:
                    raise InvalidRequest(str(exc)) from None
                sid = self._sessions.add(ctx, caller_names(context), key)
            logger.info("HE session %s… opened (%d context bytes)", sid[:6], len(data))
            return he_pb2.OpenSessionReply(
                session_id=sid, idle_expiry_s=self._limits.idle_s, context_bytes=len(data)
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def Evaluate(  # noqa: N802 - gRPC method name
        self, request: he_pb2.EvaluateRequest, context: grpc.aio.ServicerContext
    ) -> he_pb2.EvaluateReply:
        async with _serving("HE.Evaluate", context, self._node.metrics):
            caller = caller_names(context)
            ctx = self._sessions.get(request.session_id, caller)
            head = self._heads.get(request.head).head
            n = len(request.inputs)
            if n == 0:
                raise InvalidRequest("no inputs")
            if n > self._limits.max_inputs_per_call:
                raise Overloaded(
                    f"{n} inputs in one call; the limit is {self._limits.max_inputs_per_call}"
                )
            t0 = time.perf_counter()
            try:
                with self._queue.admit(admission_key(context)) as place:
                    outputs = await self._compute(
                        evaluate, head, self._params, ctx, list(request.inputs), place=place
                    )
            except InvalidCiphertext as exc:
                raise InvalidRequest(str(exc)) from None
            reply = he_pb2.EvaluateReply(
                outputs=[he_pb2.EncryptedOutput(ciphertexts=o) for o in outputs],
                compute_s=time.perf_counter() - t0,
                node_id=self._node.identity.node_id,
                head_digest=head.digest(),
            )
            self._node.metrics.bytes_in.inc(sum(len(x) for x in request.inputs))
            self._node.metrics.bytes_out.inc(sum(len(c) for o in outputs for c in o))
            return reply
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_header(
        self, header: he_pb2.PackedHeader, caller: tuple[str, ...]
    ) -> tuple[Any, Head]:
        """Everything a packed batch's header can refuse before its bytes are read."""
        ctx = self._sessions.get(header.session_id, caller)
        head = self._heads.get(header.head).head
        if header.layout != PACKED_LAYOUT:
            raise InvalidRequest(
                f"layout {header.layout!r} is not served; this node takes {PACKED_LAYOUT!r}"
            )
        slots = self._params.slots
        if header.batch_size > slots:
            raise Overloaded(
                f"{header.batch_size} examples in one packed batch; the limit is {slots} "
                f"(the slots of one ciphertext)"
            )
        if header.batch_size == 0:
            raise InvalidRequest("a packed batch of 0 examples")
        if header.n_ciphertexts != head.input_dim:
            raise InvalidRequest(
                f"head {head.name!r} takes {head.input_dim} features, the packed batch "
                f"announces {header.n_ciphertexts} ciphertexts (one per feature)"
            )
        if header.total_bytes > self._limits.max_batch_bytes:
            raise Overloaded(
                f"packed batch of {header.total_bytes} bytes exceeds the node's "
                f"{self._limits.max_batch_bytes}-byte limit"
            )
        return ctx, head

    async def _receive_packed(
        self, chunks: AsyncIterator[he_pb2.PackedChunk], caller: tuple[str, ...]
    ) -> tuple[he_pb2.PackedHeader, Any, Head, list[bytes]]:
        header: he_pb2.PackedHeader | None = None
        ctx: Any = None
        head: Head | None = None
        inputs: list[bytes] = []
        received = 0
        async with upload_time("EvaluatePacked") as clock:
            async for chunk in chunks:
                if header is None:
                    if not chunk.HasField("header"):
                        raise InvalidRequest("the first EvaluatePacked chunk carries no header")
                    header = chunk.header
                    ctx, head = self._check_header(header, caller)
                    clock.announce(header.total_bytes)
                elif chunk.HasField("header"):
                    raise InvalidRequest("a second header in one EvaluatePacked stream")
                received += sum(len(c) for c in chunk.ciphertexts)
                clock.arrived(received)
                inputs.extend(chunk.ciphertexts)
                if received > header.total_bytes or len(inputs) > header.n_ciphertexts:
                    raise InvalidRequest(
                        f"packed stream carries more than the announced {header.n_ciphertexts} "
                        f"ciphertexts / {header.total_bytes} bytes"
                    )
        if header is None or head is None:
            raise InvalidRequest("empty EvaluatePacked stream: no header chunk")
        if len(inputs) != header.n_ciphertexts or received != header.total_bytes:
            raise InvalidRequest(
                f"packed stream ended after {len(inputs)} of {header.n_ciphertexts} "
                f"ciphertexts ({received} of {header.total_bytes} bytes)"
            )
        return header, ctx, head, inputs

    async def EvaluatePacked(  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterator[he_pb2.PackedChunk],
        context: grpc.aio.ServicerContext,
    ) -> he_pb2.PackedReply:
        async with _serving("HE.EvaluatePacked", context, self._node.metrics):
            caller = caller_names(context)
            with self._queue.admit(admission_key(context)) as place:  # before buffering
                header, ctx, head, inputs = await self._receive_packed(request_iterator, caller)
                self._node.metrics.bytes_in.inc(header.total_bytes)
                t0 = time.perf_counter()
                try:
                    outputs = await self._compute(
                        evaluate_packed,
                        head,
                        self._params,
                        ctx,
                        header.batch_size,
                        inputs,
                        place=place,
                    )
                except InvalidCiphertext as exc:
                    raise InvalidRequest(str(exc)) from None
                del inputs
            self._node.metrics.bytes_out.inc(sum(len(o) for o in outputs))
            return he_pb2.PackedReply(
                layout=header.layout,
                batch_size=header.batch_size,
                outputs=outputs,
                compute_s=time.perf_counter() - t0,
                node_id=self._node.identity.node_id,
                head_digest=head.digest(),
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def CloseSession(  # noqa: N802 - gRPC method name
        self, request: he_pb2.CloseSessionRequest, context: grpc.aio.ServicerContext
    ) -> he_pb2.CloseSessionReply:
        async with _serving("HE.CloseSession", context, self._node.metrics):
            closed = self._sessions.close(request.session_id, caller_names(context))
            return he_pb2.CloseSessionReply(existed=closed)
        raise AssertionError("unreachable")  # pragma: no cover


def add_he_servicer(server: grpc.aio.Server, node: Node) -> str:
    """Serve the heads under `mpc.he.paths.heads_dir()` (trained by `python -m mpc.he.train`);
    returns the service's health-check name.

    HE evaluation gets its own single worker thread: one MNIST example (or one packed batch)
    takes seconds, and sharing the node's compute thread would stall split-mode forwards."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="he")
    he_pb2_grpc.add_HEServicer_to_server(HEServicer(node, executor, heads_dir()), server)
    return HEALTH_NAME
