"""MPC session transport over the mesh's mTLS gRPC channels (the `MPCRelay` service).

Each party of an MPC session (and its dealer) runs a mailbox: a gRPC server that accepts
`MPCMessage`s addressed to its rank. Sending is a `Deliver` call to the receiver's mailbox; a
receive waits on the local mailbox with a deadline. This replaces plaintext gloo: every byte
between parties travels over TLS with client certificates of the mesh CA, and with
`expect_names` the mailbox accepts a rank's messages only from the certificate with that rank's
node name.

Ordering and integrity of the stream: messages from one sender on one tag carry consecutive
sequence numbers; a gap or a repeat is refused with FAILED_PRECONDITION, so a lost or replayed
message aborts the session instead of corrupting it. A receive that waits past its deadline
raises `RelayTimeout` naming the silent rank: a dead or stalled party aborts the session.

Cost: one RPC per message fragment (<= 4 MiB); bytes and messages are counted per direction.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterator

import grpc
from cryptography import x509

from decentralized import _wire
from decentralized.errors import (
    InvalidRequest,
    MeshError,
    NotANode,
    Overloaded,
    SessionMismatch,
)
from decentralized.transport import (
    Credentials,
    add_sync_port,
    new_sync_server,
    node_names,
    sync_channel,
)
from decentralized.v1 import mpc_pb2, mpc_pb2_grpc
from mpc.comm import PeerDisconnected, PeerTimeout, Transport

logger = logging.getLogger(__name__)

FRAGMENT_BYTES = 4 * 1024 * 1024
_STOP_GRACE_S = 2.0
# One protocol message, reassembled from fragments in the receiver's memory. A secret weight's
# mask is opened once per session (`mpc.backends.crypten_weights`): SmolLM2's tied 49152 x 576
# embedding / LM head is 226 MB at 8 bytes an element. A peer can make a rank buffer this much
# per message; a node bounds it by its number of MPC sessions (`mpc_max_sessions`).
MAX_PAYLOAD_BYTES = 512 * 1024 * 1024
# What a rank's mailbox holds at once, from all its peers and tags together (received, not
# yet read): the protocols read what they are sent, so only a deviating peer gets near it.
MAX_BUFFERED_BYTES = 2 * MAX_PAYLOAD_BYTES
MAX_BUFFERED_MESSAGES = 65536  # messages (or fragments) received and not yet read


class _Mailbox:
    """Messages received, per (src, tag), in order; thread-safe."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queues: dict[tuple[int, str], collections.deque[bytes]] = collections.defaultdict(
            collections.deque
        )
        self._next_seq: dict[tuple[int, str], int] = collections.defaultdict(int)
        self._partial: dict[tuple[int, str], list[bytes]] = collections.defaultdict(list)
        self._buffered_bytes = 0  # queued and partial, not yet read
        self._buffered_messages = 0

    def put(self, msg: mpc_pb2.MPCMessage) -> None:
        key = (msg.src, msg.tag)
        with self._cond:
            want = self._next_seq[key]
            if msg.seq != want:
                raise SessionMismatch(
                    f"message {msg.seq} from rank {msg.src} on {msg.tag!r}: expected {want} "
                    "(lost or replayed message)"
                )
            size = len(msg.payload)
            if (
                self._buffered_bytes + size > MAX_BUFFERED_BYTES
                or self._buffered_messages >= MAX_BUFFERED_MESSAGES
            ):
                raise Overloaded(
                    f"rank {msg.src} sent more than this rank's mailbox holds unread "
                    f"({MAX_BUFFERED_BYTES} bytes, {MAX_BUFFERED_MESSAGES} messages)"
                )
            self._next_seq[key] = want + 1
            parts = self._partial[key]
            parts.append(msg.payload)
            self._buffered_bytes += size
            self._buffered_messages += 1
            if sum(len(p) for p in parts) > MAX_PAYLOAD_BYTES:
                raise InvalidRequest(f"payload from rank {msg.src} exceeds {MAX_PAYLOAD_BYTES}")
            if msg.more:
                return
            self._queues[key].append(b"".join(parts))
            self._buffered_messages -= len(parts) - 1  # the fragments are one message now
            parts.clear()
            self._cond.notify_all()

    def get(self, src: int, tag: str, timeout_s: float) -> bytes:
        key = (src, tag)
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self._queues[key]:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PeerTimeout(
                        f"rank {src} sent nothing on {tag!r} within {timeout_s:g} s "
                        "(party dead or stalled): session aborted",
                        rank=src,
                        tag=tag,
                        timeout_s=timeout_s,
                    )
                self._cond.wait(left)
            payload = self._queues[key].popleft()
            self._buffered_bytes -= len(payload)
            self._buffered_messages -= 1
            return payload


class _RelayServicer(mpc_pb2_grpc.MPCRelayServicer):
    def __init__(self, relay: RelayTransport) -> None:
        self._relay = relay

    def Deliver(  # noqa: N802 - the proto's RPC name
        self, request_iterator: Iterator[mpc_pb2.MPCMessage], context: grpc.ServicerContext
    ) -> mpc_pb2.DeliverReply:
        accepted = 0
        try:
            for msg in request_iterator:
                self._relay._check_incoming(msg, context)
                self._relay._mailbox.put(msg)
                accepted += 1
        except MeshError as exc:
            context.abort(exc.code, str(exc))
        return mpc_pb2.DeliverReply(accepted=accepted)


class RelayTransport(Transport):
    """An `mpc.comm.Transport` over mTLS gRPC: ordered, tagged byte messages between the
    ranks of one MPC session. `send` returns once the receiver's mailbox holds the message
    (it never waits for the receiver's `recv`)."""

    def __init__(
        self,
        session_id: str,
        rank: int,
        world_size: int,
        creds: Credentials,
        *,
        listen: str = "127.0.0.1:0",
        advertise_host: str = "",
        expect_names: dict[int, str] | None = None,
        send_timeout_s: float = 30.0,
    ) -> None:
        if not _wire.SESSION_ID_RE.match(session_id):
            raise InvalidRequest("session_id must be 16-64 characters of [A-Za-z0-9_-]")
        if not 0 <= rank < world_size:
            raise InvalidRequest(f"rank {rank} outside [0, {world_size})")
        super().__init__(rank, world_size)
        self.session_id = session_id
        self.creds = creds
        self.expect_names = expect_names or {}
        self.send_timeout_s = send_timeout_s
        self._mailbox = _Mailbox()
        self._send_seq: dict[tuple[int, str], int] = collections.defaultdict(int)
        self._send_lock = threading.Lock()
        self._peers: dict[int, str] = {}
        self._channels: dict[int, grpc.Channel] = {}
        self._server = new_sync_server()
        mpc_pb2_grpc.add_MPCRelayServicer_to_server(_RelayServicer(self), self._server)
        port = add_sync_port(self._server, listen, creds)
        # What peers dial: the node's advertised host (a node bound to 0.0.0.0 or behind a
        # NAT is not reachable at its listen host), with the port this mailbox bound.
        self.address = f"{advertise_host or listen.rsplit(':', 1)[0]}:{port}"
        self._server.start()

    # -- wiring ----------------------------------------------------------------------------
    def connect(self, peers: dict[int, str]) -> None:
        """Addresses of the other ranks' mailboxes."""
        for rank, address in peers.items():
            if rank != self.rank:
                self._peers[rank] = address

    def _stub(self, dst: int) -> mpc_pb2_grpc.MPCRelayStub:
        channel = self._channels.get(dst)
        if channel is None:
            if dst not in self._peers:
                raise InvalidRequest(f"no address for rank {dst}")
            name = self.expect_names.get(dst, "")
            channel = self._channels[dst] = sync_channel(self._peers[dst], self.creds, name)
        return mpc_pb2_grpc.MPCRelayStub(channel)

    def _check_incoming(self, msg: mpc_pb2.MPCMessage, context: grpc.ServicerContext) -> None:
        if msg.session_id != self.session_id:
            raise SessionMismatch(f"message for session {msg.session_id[:8]}..., not this one")
        if msg.dst != self.rank or not 0 <= msg.src < self.world_size or msg.src == self.rank:
            raise InvalidRequest(f"message {msg.src} -> {msg.dst} does not belong here")
        want = self.expect_names.get(msg.src)
        if want and not self.creds.insecure_dev:
            pems = context.auth_context().get("x509_pem_cert") or []
            names = node_names(x509.load_pem_x509_certificate(pems[0])) if pems else []
            if want not in names:
                raise NotANode(f"rank {msg.src} must be node {want!r}, caller is {names}")

    # -- the transport hooks -------------------------------------------------------------------
    def _deliver(self, dst: int, tag: str, payload: bytes) -> None:
        """Deliver `payload` to rank `dst` on `tag`; returns when the receiver's mailbox has it."""
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise InvalidRequest(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
        with self._send_lock:
            key = (dst, tag)
            fragments = [
                payload[i : i + FRAGMENT_BYTES]
                for i in range(0, max(len(payload), 1), FRAGMENT_BYTES)
            ] or [b""]
            first = self._send_seq[key]
            self._send_seq[key] = first + len(fragments)
            messages = [
                mpc_pb2.MPCMessage(
                    session_id=self.session_id,
                    src=self.rank,
                    dst=dst,
                    tag=tag,
                    payload=frag,
                    seq=first + i,
                    more=i < len(fragments) - 1,
                )
                for i, frag in enumerate(fragments)
            ]
            try:
                self._stub(dst).Deliver(iter(messages), timeout=self.send_timeout_s)
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details()  # type: ignore[attr-defined]
                raise PeerDisconnected(
                    f"rank {dst} ({self._peers.get(dst)}): {code.name}: {details}", rank=dst
                ) from None

    def _receive(self, src: int, tag: str, timeout_s: float) -> bytes:
        return self._mailbox.get(src, tag, timeout_s)

    def _shutdown(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        # Let in-flight Deliver calls (e.g. the message that ended the session) be answered
        # before the process can exit; without the wait their senders see a reset.
        self._server.stop(grace=_STOP_GRACE_S).wait(_STOP_GRACE_S + 1.0)
