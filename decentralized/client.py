"""The client side of the mesh: peer discovery, route planning, and forwarding with fail-over.

`MeshClient.chain(model)` returns a `Chain`: hops covering all layers of the model. `Chain.step`
sends hidden states through the hops in order (the client relays between nodes). When a node
dies, stalls past its deadline, refuses, or answers with invalid data, the client bans it,
plans a new route for the remaining layers over other live nodes, and for generation sessions
rebuilds the replacement nodes' KV caches by replaying the inputs it kept for that layer.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from decentralized import _wire
from decentralized.errors import (
    ERRORS_BY_CODE,
    InvalidRequest,
    MeshError,
    NoRoute,
    PeerMisbehaved,
    PeerUnavailable,
)
from decentralized.identity import MeshCA, verify_record
from decentralized.membership import MAX_RECORDS_PER_REPLY
from decentralized.models import get_spec
from decentralized.routing import Hop, plan_route
from decentralized.transport import STREAM_CHUNK_BYTES, Credentials, sync_channel
from decentralized.v1 import common_pb2, mesh_pb2, mesh_pb2_grpc, shard_pb2, shard_pb2_grpc
from verification.consensus import BadReceipt, Receipt

logger = logging.getLogger(__name__)

# Statuses of a call that did not reach a working node (or not in time): not a node's answer.
TRANSPORT_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)

BUSY_BACKOFF_S = 5.0  # how long a node that answered RESOURCE_EXHAUSTED is left out
PROBE_TIMEOUT_S = 2.0  # one health probe of a newly listed node
PROBE_BUDGET_S = 2.0  # what a refresh waits for all its probes together


def refusal_status(exc: MeshError) -> grpc.StatusCode | None:
    """The status a node refused a call with; None for a transport failure (unreachable, late,
    gone) and for a reply that failed the client's checks (PeerMisbehaved)."""
    if isinstance(exc, PeerMisbehaved) or exc.code in TRANSPORT_CODES:
        return None
    return exc.code


def same_refusal(errors: list[MeshError]) -> MeshError | None:
    """When at least two nodes refused with one and the same status (transport failures and
    invalid replies aside), an error of that type and status for the caller, else None.

    The client checks what it sends, but not everything: it does not know a node's token limit,
    for one. A status every node gives is an answer about the request, not a node's fault."""
    refusals = [e for e in errors if refusal_status(e) is not None]
    if len(refusals) < 2 or len({e.code for e in refusals}) != 1:
        return None
    first = refusals[0]
    err = type(first)(
        f"{first} (refused with the same status by {len(refusals)} nodes and accepted by none: "
        "the request is refused, no node is blamed)"
    )
    err.code = first.code
    return err


def error_from_rpc(exc: grpc.RpcError, where: str) -> MeshError:
    """Map a gRPC error to the domain error of the same status (one table, both ways)."""
    code = exc.code()  # type: ignore[attr-defined]
    details = exc.details()  # type: ignore[attr-defined]
    cls = ERRORS_BY_CODE.get(code, MeshError)
    err = cls(f"{where}: {code.name}: {details}")
    err.code = code
    return err


@dataclass(slots=True)
class HopState:
    """A hop of a chain plus what the client keeps to rebuild it."""

    hop: Hop
    session_id: str  # "" for stateless (encoder) chains
    past: int = 0  # tokens this hop's cache holds
    inputs: list[torch.Tensor] = field(default_factory=list)  # inputs sent, for rebuilds
    compute_s: float = 0.0
    calls: int = 0


@dataclass(frozen=True, slots=True)
class FailoverEvent:
    hop: Hop
    reason: str
    rebuilt_tokens: int


class MeshClient:
    """Discovers nodes from seeds and opens forward chains over them."""

    def __init__(
        self,
        seeds: list[str],
        creds: Credentials,
        *,
        hop_timeout_s: float = 30.0,
        refresh_s: float = 5.0,
        ban_s: float = 60.0,
        max_failovers: int = 6,
    ) -> None:
        if not seeds:
            raise ValueError("at least one seed address is needed")
        self.seeds = list(seeds)
        self.creds = creds
        self._ca = MeshCA.of(creds)  # records must carry a certificate of it naming the node
        self.hop_timeout_s = hop_timeout_s
        self.refresh_s = refresh_s
        self.ban_s = ban_s
        self.max_failovers = max_failovers
        self._channels: dict[tuple[str, str], grpc.Channel] = {}
        self._records: dict[str, common_pb2.NodeRecord] = {}
        self._rtt: dict[str, float] = {}
        # Health probes: node ids being probed; node ids and addresses that failed one -> expiry.
        self._probing: set[str] = set()
        self._unreachable: dict[str, float] = {}
        self._dead_channels: list[tuple[str, str]] = []
        self._probe_lock = threading.Lock()
        self._banned: dict[str, float] = {}
        self._disputes: dict[frozenset[str], float] = {}  # pair of names -> expiry
        self._refreshed = 0.0

    # -- channels and discovery ------------------------------------------------------------
    def channel(self, address: str, name: str = "") -> grpc.Channel:
        """A cached channel; with a node name, TLS requires the server to be that node."""
        key = (address, name)
        channel = self._channels.get(key)
        if channel is None:
            channel = self._channels[key] = sync_channel(address, self.creds, expect_name=name)
        return channel

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def ban(self, node_id: str, seconds: float | None = None) -> None:
        """Leave a node out of planning for `seconds` (default `ban_s`)."""
        until = time.monotonic() + (self.ban_s if seconds is None else seconds)
        self._banned[node_id] = max(until, self._banned.get(node_id, 0.0))

    def unban(self, node_id: str) -> None:
        """Lift a ban (a refusal turned out to be about the request, not the node)."""
        self._banned.pop(node_id, None)

    def dispute(self, a: str, b: str, *, distinct: int = 2) -> set[str]:
        """Record that nodes `a` and `b` (certificate names) blamed each other in a way the
        client cannot settle (one of them lies, or a link between them failed); returns the
        names now in disputes with at least `distinct` different nodes within `ban_s`. An
        honest node disputes with the deviating nodes it meets; a node that disputes with
        everyone it is paired with is the likely liar."""
        now = time.monotonic()
        self._disputes = {pair: t for pair, t in self._disputes.items() if t > now}
        if a != b:
            self._disputes[frozenset((a, b))] = now + self.ban_s
        partners: dict[str, set[str]] = {}
        for pair in self._disputes:
            x, y = tuple(pair)
            partners.setdefault(x, set()).add(y)
            partners.setdefault(y, set()).add(x)
        return {name for name, others in partners.items() if len(others) >= distinct}

    def rtt(self, node_id: str) -> float | None:
        """Measured round trip to a node (health check), None when not measured."""
        return self._rtt.get(node_id)

    def banned(self) -> set[str]:
        now = time.monotonic()
        return {n for n, until in self._banned.items() if until > now}

    def refresh(self, force: bool = False) -> list[common_pb2.NodeRecord]:
        """Live node records, from the first seed or known node that answers ListPeers.

        At most `MAX_RECORDS_PER_REPLY` records of a reply are read (a node's peer list never
        holds more), so a seed that answers with thousands of made-up records costs one bounded
        batch of signature checks."""
        if not force and self._records and time.monotonic() - self._refreshed < self.refresh_s:
            return list(self._records.values())
        candidates = self.seeds + [r.address for r in self._records.values()]
        last_error: Exception | None = None
        for address in dict.fromkeys(candidates):
            try:
                reply = mesh_pb2_grpc.MeshStub(self.channel(address)).ListPeers(
                    mesh_pb2.ListPeersRequest(), timeout=5.0
                )
            except grpc.RpcError as exc:
                last_error = error_from_rpc(exc, f"ListPeers at {address}")
                continue
            if len(reply.records) > MAX_RECORDS_PER_REPLY:
                logger.warning(
                    "%s listed %d records; only the first %d are read",
                    address,
                    len(reply.records),
                    MAX_RECORDS_PER_REPLY,
                )
            records: dict[str, common_pb2.NodeRecord] = {}
            for signed in reply.records[:MAX_RECORDS_PER_REPLY]:
                try:
                    rec = verify_record(signed, ca=self._ca)
                except PeerMisbehaved as exc:
                    logger.warning("ignoring invalid record from %s: %s", address, exc)
                    continue
                records[rec.node_id] = rec
            self._records = records
            self._refreshed = time.monotonic()
            self._measure_rtt()
            return list(records.values())
        raise PeerUnavailable(f"no seed answered ({', '.join(self.seeds)}): {last_error}")

    def _measure_rtt(self) -> None:
        """Health-check the routable nodes not measured yet, all at once, waiting at most
        `PROBE_BUDGET_S` in all. A probe that fails (or outlasts `PROBE_TIMEOUT_S`) is
        remembered for `ban_s`, by node id and by address, and not retried before (its channel
        leaves the cache); one still running when the budget is spent goes on in the background
        and counts when it ends. Records without spans are not probed: round trips serve only
        route planning."""
        now = time.monotonic()
        with self._probe_lock:
            self._unreachable = {k: t for k, t in self._unreachable.items() if t > now}
            todo = [
                rec
                for rec in self._records.values()
                if rec.spans
                and rec.node_id not in self._rtt
                and rec.node_id not in self._probing
                and rec.node_id not in self._unreachable
                and rec.address not in self._unreachable
            ]
            self._probing.update(rec.node_id for rec in todo)
            dead, self._dead_channels = self._dead_channels, []
        for key in dead:  # failed probes' channels: closed once nobody holds them
            self._channels.pop(key, None)
        done = threading.Semaphore(0)
        for rec in todo:
            key = (rec.address, rec.name)
            t0 = time.perf_counter()
            future = health_pb2_grpc.HealthStub(self.channel(*key)).Check.future(
                health_pb2.HealthCheckRequest(service="decentralized.v1.Shard"),
                timeout=PROBE_TIMEOUT_S,
            )
            future.add_done_callback(
                lambda f, rec=rec, key=key, t0=t0: self._probed(f, rec, key, t0, done)
            )
        deadline = time.monotonic() + PROBE_BUDGET_S
        for _ in todo:
            if not done.acquire(timeout=max(0.0, deadline - time.monotonic())):
                break

    def _probed(
        self,
        future: grpc.Future,
        rec: common_pb2.NodeRecord,
        key: tuple[str, str],
        t0: float,
        done: threading.Semaphore,
    ) -> None:
        """A health probe ended (gRPC's callback thread): keep its round trip, or remember
        that the node did not answer and drop the channel to it from the cache."""
        rtt = time.perf_counter() - t0
        try:
            ok = future.exception() is None
        except grpc.FutureCancelledError:  # the client was closed meanwhile
            ok = False
        with self._probe_lock:
            self._probing.discard(rec.node_id)
            if ok:
                self._rtt[rec.node_id] = rtt
            else:
                until = time.monotonic() + self.ban_s
                self._unreachable[rec.node_id] = until
                self._unreachable[rec.address] = until
                self._dead_channels.append(key)
        done.release()

    def plan(self, model: str, start: int = 0, tokens: int = 0) -> list[Hop]:
        """The cheapest route over live, unbanned nodes whose token limit takes `tokens`."""
        spec = get_spec(model)
        for force in (False, True):
            records = self.refresh(force=force)
            try:
                return plan_route(
                    model,
                    spec.num_layers,
                    records,
                    exclude=self.banned(),
                    rtt_s=self._rtt,
                    start=start,
                    tokens=tokens,
                )
            except NoRoute:
                if force:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def chain(self, model: str, *, stateful: bool, tokens: int = 0) -> Chain:
        """A route for a request of up to `tokens` tokens (prompt and generated ones)."""
        return Chain(self, model, stateful=stateful, tokens=tokens)

    # -- one forward call ------------------------------------------------------------------
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
        """Run one hop; returns (output, node compute seconds, the node's signed receipt).

        Validates the reply: shape, dtype, finiteness, the answering node's id, and the receipt
        (its digests must match what was sent and received, its signature the node's key)."""
        tensor = _wire.tensor_to_proto(hidden)
        request = shard_pb2.ForwardRequest(
            model=model,
            start=hop.start,
            end=hop.end,
            session_id=session_id,
            past_length=past_length,
            total_bytes=len(tensor.data),
        )
        if attention_mask is not None:
            request.attention_mask.CopyFrom(_wire.tensor_to_proto(attention_mask))
        stub = shard_pb2_grpc.ShardStub(self.channel(hop.address, hop.name))
        timeout = timeout_s or self.hop_timeout_s
        try:
            if len(tensor.data) <= STREAM_CHUNK_BYTES:
                request.hidden.CopyFrom(tensor)
                reply = stub.Forward(request, timeout=timeout)
            else:
                reply = stub.ForwardStream(_chunks(request, tensor), timeout=timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc(
                exc, f"{hop.name} ({hop.address}) layers [{hop.start}, {hop.end})"
            ) from None
        try:
            out = _wire.tensor_from_proto(reply.hidden, "reply hidden")
        except InvalidRequest as exc:
            raise PeerMisbehaved(f"{hop.name}: {exc}") from None
        if out.shape != hidden.shape or out.dtype != hidden.dtype:
            raise PeerMisbehaved(
                f"{hop.name} answered shape {list(out.shape)} {out.dtype}, expected "
                f"{list(hidden.shape)} {hidden.dtype}"
            )
        if not _wire.all_finite(out):  # numpy: this runs on consensus' replica threads too
            raise PeerMisbehaved(f"{hop.name} answered NaN or infinite values")
        if reply.node_id != hop.node_id:
            raise PeerMisbehaved(
                f"{hop.address} answered as node {reply.node_id[:8]}, expected {hop.node_id[:8]}"
            )
        receipt = Receipt(
            model=model,
            start=hop.start,
            end=hop.end,
            session_id=session_id,
            past_length=past_length,
            input_digest=_wire.forward_input_digest(
                tensor, request.attention_mask if attention_mask is not None else None
            ),
            output_digest=_wire.proto_digest(reply.hidden),
            node_id=hop.node_id,
            public_key=hop.public_key,
            signature=reply.signature,
        )
        if (reply.input_digest, reply.output_digest) != (
            receipt.input_digest,
            receipt.output_digest,
        ):
            raise PeerMisbehaved(f"{hop.name}: receipt digests do not match the data")
        try:
            receipt.verify()
        except BadReceipt as exc:
            raise PeerMisbehaved(f"{hop.name}: {exc}") from None
        return out, reply.compute_s, receipt

    def end_session(self, hop: Hop, session_id: str) -> None:
        # Best effort: the node drops idle sessions on its own.
        with contextlib.suppress(grpc.RpcError):
            shard_pb2_grpc.ShardStub(self.channel(hop.address, hop.name)).EndSession(
                shard_pb2.EndSessionRequest(session_id=session_id), timeout=2.0
            )


def _chunks(
    header: shard_pb2.ForwardRequest, tensor: common_pb2.Tensor
) -> Iterator[shard_pb2.ForwardRequest]:
    data = tensor.data
    first = shard_pb2.ForwardRequest()
    first.CopyFrom(header)
    first.hidden.CopyFrom(
        common_pb2.Tensor(dtype=tensor.dtype, shape=tensor.shape, data=data[:STREAM_CHUNK_BYTES])
    )
    yield first
    for offset in range(STREAM_CHUNK_BYTES, len(data), STREAM_CHUNK_BYTES):
        yield shard_pb2.ForwardRequest(
            hidden=common_pb2.Tensor(data=data[offset : offset + STREAM_CHUNK_BYTES])
        )


class Chain:
    """A route through all layers of a model, kept across the steps of one request."""

    def __init__(self, client: MeshClient, model: str, *, stateful: bool, tokens: int = 0) -> None:
        self.client = client
        self.model = model
        self.stateful = stateful
        self.tokens = tokens  # the request's most tokens: nodes with a smaller limit are skipped
        self.num_layers = get_spec(model).num_layers
        self.states = [self._state(h) for h in client.plan(model, tokens=tokens)]
        self.failovers: list[FailoverEvent] = []
        self.retired: list[HopState] = []  # hops replaced by fail-over, kept for the report

    def _state(self, hop: Hop) -> HopState:
        return HopState(hop=hop, session_id=secrets.token_urlsafe(18) if self.stateful else "")

    def step(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Send (B, T, H) hidden states through every hop; returns the last hop's output."""
        spec = get_spec(self.model)
        _wire.check_hidden(hidden, spec.hidden_size)  # our own input: fail here, not remotely
        if attention_mask is not None:
            _wire.check_mask(attention_mask, hidden)
        x = hidden
        step_tokens = hidden.shape[1]
        refused: dict[int, tuple[MeshError, str]] = {}  # first layer -> a refusal, its node id
        i = 0
        while i < len(self.states):
            st = self.states[i]
            try:
                y, compute_s, _ = self.client.forward(
                    st.hop,
                    self.model,
                    x,
                    attention_mask=attention_mask,
                    session_id=st.session_id,
                    past_length=st.past,
                    timeout_s=self.client.hop_timeout_s * max(1.0, x.shape[1] / 256),
                )
            except MeshError as exc:
                # Whatever the status, a node that refuses what the client validated
                # (INVALID_ARGUMENT, PERMISSION_DENIED, OUT_OF_RANGE, ...) is banned and the
                # request fails over (bounded by max_failovers) instead of one node aborting
                # requests. But the client does not know everything (a node's token limit):
                # when the replacement for the same layers refuses with the same status, that
                # status is about the request. It is raised as is and the first node unbanned.
                first = refused.get(st.hop.start)
                same = same_refusal([first[0], exc]) if first is not None else None
                if same is not None and first is not None:
                    self.client.unban(first[1])
                    raise same from None
                if refusal_status(exc) is not None and first is None:
                    refused[st.hop.start] = (exc, st.hop.node_id)
                x = self._fail_over(i, x, exc)
                continue
            st.compute_s += compute_s
            st.calls += 1
            if self.stateful:
                st.inputs.append(x)
                st.past += x.shape[1]
            x = y
            i += 1
        # After a rebuild the chain ran the whole history; the caller wants this step only.
        return x[:, -step_tokens:]

    def _fail_over(self, i: int, x: torch.Tensor, exc: MeshError) -> torch.Tensor:
        failed = self.states[i]
        logger.warning(
            "fail-over: %s layers [%d, %d): %s",
            failed.hop.name,
            failed.hop.start,
            failed.hop.end,
            exc,
        )
        if len(self.failovers) >= self.client.max_failovers:
            # The last error's status where it is a node's answer; UNAVAILABLE otherwise.
            cls = type(exc) if refusal_status(exc) is not None else PeerUnavailable
            gave_up = cls(f"gave up after {len(self.failovers)} fail-overs; last: {exc}")
            gave_up.code = exc.code if refusal_status(exc) is not None else PeerUnavailable.code
            raise gave_up from None
        busy = refusal_status(exc) == grpc.StatusCode.RESOURCE_EXHAUSTED
        # A busy node (its queue or session table full) is left out briefly, not banned.
        self.client.ban(failed.hop.node_id, BUSY_BACKOFF_S if busy else None)
        # Everything that entered layer `start` so far, plus this step: the replay input.
        history = torch.cat([*failed.inputs, x], dim=1) if failed.inputs else x
        self.failovers.append(FailoverEvent(failed.hop, str(exc), failed.past))
        for st in self.states[i:]:
            if st.session_id and st is not failed:
                self.client.end_session(st.hop, st.session_id)
        self.retired.extend(self.states[i:])
        try:
            new_hops = self.client.plan(self.model, start=failed.hop.start, tokens=self.tokens)
        except NoRoute as no_route:
            raise NoRoute(f"{no_route} (after {failed.hop.name} failed: {exc})") from None
        self.states[i:] = [self._state(h) for h in new_hops]
        return history

    def close(self) -> None:
        for st in self.states:
            if st.session_id:
                self.client.end_session(st.hop, st.session_id)

    def hop_states(self) -> list[HopState]:
        return self.retired + self.states
