"""Point-to-point byte transport between the ranks of one MPC session, and its wire encodings.

What:   `Transport` is the abstract base every channel between the parties and the dealer
        (CrypTen's TTP) implements: `send(dst, tag, payload)` / `recv(src, tag, timeout_s)` of
        opaque bytes, matched by (peer, tag), with per-session counters of bytes, messages and
        rounds. `encode_tensors` / `decode_tensors` and `encode_object` / `decode_object` are
        the only things that turn tensors and control objects into bytes: a fixed binary header
        plus raw little-endian data, and JSON over a closed set of types. Nothing is pickled.
        Implementations here: `LocalTransport` (thread-safe in-memory mailboxes, for tests and
        single-process use) and `PipeTransport` (one OS pipe per pair of ranks, for party
        processes on one host, e.g. spawned by a test). The mTLS gRPC transport between nodes
        lives in `decentralized/` (this package must not import grpc).
Why:    CrypTen's own communicator pickles control objects and sends shares over plaintext,
        unauthenticated gloo. `mpc.backends.crypten_comm` runs CrypTen over a `Transport`
        instead, so the channel (and its TLS) is the mesh's choice.
Assume: the channel authenticates peers and keeps messages confidential and in order per
        (peer, tag) -- `LocalTransport` and `PipeTransport` are in-host and do neither beyond
        what the OS gives. Decoders treat every payload as hostile: lengths, dtypes, shapes and
        object types are checked, and a mismatch raises `MalformedMessage`.
Leaks:  message sizes, tags and timing, to whoever sees the channel.
Cost:   encoding is one copy of the tensor data; a tensor header is 16 + 8 * ndim bytes, a
        message of k tensors adds 8 bytes. Counters count payload bytes only (no tag, framing,
        gRPC or TLS overhead).

Errors (all `mpc.errors.MPCError`):

    MPCError
    +-- CommFailure                 a transport or wire-format failure
        +-- PeerTimeout             no message from a peer before the deadline (a TimeoutError)
        +-- PeerDisconnected        the peer closed its end or its process died
        +-- TransportClosed         this end was closed
        +-- MalformedMessage        bytes that do not decode, or an out-of-order message
        +-- UnencodableObject       a control object outside the allowed types (a TypeError)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import socket
import struct
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import torch

from mpc.errors import MPCError

__all__ = [
    "CommFailure",
    "LocalTransport",
    "MalformedMessage",
    "PeerDisconnected",
    "PeerTimeout",
    "PipeTransport",
    "Transport",
    "TransportClosed",
    "TransportStats",
    "UnencodableObject",
    "decode_object",
    "decode_tensors",
    "encode_object",
    "encode_tensors",
    "local_transports",
    "pipe_mesh",
]

MAX_TAG_BYTES = 255  # UTF-8 bytes in a tag
MAX_NDIM = 32  # dimensions in an encoded tensor
MAX_DIM = 2**48  # elements along one dimension of an encoded tensor
MAX_OBJECT_DEPTH = 32  # nesting of lists, tuples and dicts in a control object
MAX_OBJECT_BYTES = 1 << 20  # an encoded control object, in bytes


class CommFailure(MPCError):
    """A message could not be sent, received or decoded."""


class PeerTimeout(CommFailure, TimeoutError):
    """No message with the expected tag arrived from a peer before the deadline.

    Attributes:
        rank: The peer's rank.
        tag: The tag that was awaited.
        timeout_s: The deadline that passed, in seconds.
    """

    def __init__(self, message: str, *, rank: int, tag: str, timeout_s: float) -> None:
        super().__init__(message)
        self.rank = rank
        self.tag = tag
        self.timeout_s = timeout_s


class PeerDisconnected(CommFailure, ConnectionError):
    """The peer closed its end (or its process died) and the awaited message never came.

    Attributes:
        rank: The peer's rank.
    """

    def __init__(self, message: str, *, rank: int) -> None:
        super().__init__(message)
        self.rank = rank


class TransportClosed(CommFailure):
    """This end of the transport was closed."""


class MalformedMessage(CommFailure, ValueError):
    """A payload does not decode, or does not match what the protocol expects next."""


class UnencodableObject(CommFailure, TypeError):
    """A control object holds a type outside the allowed set (see `encode_object`)."""


# --------------------------------------------------------------------------------------------
# Transport


@dataclass(frozen=True, slots=True)
class TransportStats:
    """A snapshot of one transport end's counters since it was created.

    Attributes:
        bytes_sent: Payload bytes handed to `send`.
        bytes_received: Payload bytes returned by `recv`.
        messages_sent: Calls to `send`.
        messages_received: Calls to `recv` that returned.
        rounds: Flights: maximal runs of sends not interrupted by a `recv`. A party in a
            protocol of k dependent exchanges counts k; it is a per-party latency proxy, not
            a global round count.
    """

    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    rounds: int = 0


class Transport(ABC):
    """Ordered, tagged byte messages between the ranks 0..world_size-1 of one session.

    Contract for implementations (`_deliver`, `_receive`, `_shutdown`):

    - `send` is eager: it returns without the peer having called `recv` (implementations
      buffer), so two ranks may send to each other before either receives.
    - Messages from one peer with one tag are received in the order they were sent; messages
      with other tags are buffered until asked for.
    - `recv` raises `PeerTimeout` at the deadline and `PeerDisconnected` as soon as the peer
      is known to be gone with nothing left to deliver; it never blocks past `timeout_s`.
    - `close` delivers what was already sent (best effort, bounded by `flush_timeout_s`),
      then releases resources; it is idempotent.

    The public methods validate arguments and keep the counters; they are thread-safe if the
    implementation's hooks are.

    Args:
        rank: This end's rank.
        world_size: Number of ranks in the session (parties and dealer together).
    """

    def __init__(self, rank: int, world_size: int) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, {world_size=}")
        self._rank = rank
        self._world_size = world_size
        self._closed = False
        self._stats_lock = threading.Lock()
        self._stats = TransportStats()
        self._last_was_send = False

    @property
    def rank(self) -> int:
        """This end's rank."""
        return self._rank

    @property
    def world_size(self) -> int:
        """Number of ranks in the session."""
        return self._world_size

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self._closed

    @property
    def stats(self) -> TransportStats:
        """The counters so far (a snapshot)."""
        with self._stats_lock:
            return self._stats

    def send(self, dst: int, tag: str, payload: bytes) -> None:
        """Send `payload` to rank `dst` under `tag`, without waiting for the peer.

        Raises:
            ValueError: `dst` is this rank or out of range, or `tag` is empty or too long.
            TypeError: `payload` is not bytes-like.
            TransportClosed: `close` was called.
            PeerDisconnected: the peer is known to be gone.
        """
        self._check_peer(dst)
        _check_tag(tag)
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
        if self._closed:
            raise TransportClosed(f"rank {self._rank}: send to {dst} after close")
        data = bytes(payload)
        self._deliver(dst, tag, data)
        with self._stats_lock:
            s = self._stats
            self._stats = TransportStats(
                s.bytes_sent + len(data),
                s.bytes_received,
                s.messages_sent + 1,
                s.messages_received,
                s.rounds + (0 if self._last_was_send else 1),
            )
            self._last_was_send = True

    def recv(self, src: int, tag: str, timeout_s: float) -> bytes:
        """Wait at most `timeout_s` seconds for the next message from rank `src` under `tag`.

        Raises:
            ValueError: `src` is this rank or out of range, `tag` is invalid, or
                `timeout_s` is not a positive finite number.
            PeerTimeout: nothing arrived in time.
            PeerDisconnected: the peer is gone and sent no such message.
            TransportClosed: `close` was called.
        """
        self._check_peer(src)
        _check_tag(tag)
        if not (isinstance(timeout_s, int | float) and 0 < timeout_s < math.inf):
            raise ValueError(f"timeout_s must be a positive finite number, got {timeout_s!r}")
        if self._closed:
            raise TransportClosed(f"rank {self._rank}: recv from {src} after close")
        data = self._receive(src, tag, float(timeout_s))
        with self._stats_lock:
            s = self._stats
            self._stats = TransportStats(
                s.bytes_sent,
                s.bytes_received + len(data),
                s.messages_sent,
                s.messages_received + 1,
                s.rounds,
            )
            self._last_was_send = False
        return data

    def close(self) -> None:
        """Flush what was sent, then release this end; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        self._shutdown()

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_peer(self, peer: int) -> None:
        if isinstance(peer, bool) or not isinstance(peer, int):
            raise TypeError(f"rank must be an int, got {type(peer).__name__}")
        if not 0 <= peer < self._world_size or peer == self._rank:
            raise ValueError(
                f"rank {self._rank} cannot talk to rank {peer} (world_size {self._world_size})"
            )

    def _timeout(self, src: int, tag: str, timeout_s: float, pending: Sequence[str]) -> PeerTimeout:
        waiting = f"; buffered tags from it: {sorted(pending)[:8]}" if pending else ""
        return PeerTimeout(
            f"rank {self._rank}: no message {tag!r} from rank {src} within {timeout_s:g} s"
            f"{waiting}",
            rank=src,
            tag=tag,
            timeout_s=timeout_s,
        )

    @abstractmethod
    def _deliver(self, dst: int, tag: str, payload: bytes) -> None:
        """Hand `payload` to the channel towards `dst`; must not wait for the peer's recv."""

    @abstractmethod
    def _receive(self, src: int, tag: str, timeout_s: float) -> bytes:
        """Return the next message from `src` under `tag`, or raise as `recv` documents."""

    @abstractmethod
    def _shutdown(self) -> None:
        """Flush, then release resources (called once)."""


def _check_tag(tag: str) -> None:
    if not isinstance(tag, str) or not tag or len(tag.encode("utf-8")) > MAX_TAG_BYTES:
        raise ValueError(f"tag must be a non-empty str of <= {MAX_TAG_BYTES} bytes, got {tag!r}")


class _Mailbox:
    """Messages that arrived for one rank, keyed by (source, tag), FIFO within a key."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queues: dict[tuple[int, str], deque[bytes]] = {}
        self._gone: set[int] = set()
        self._closed = False

    def put(self, src: int, tag: str, payload: bytes) -> bool:
        """Queue a message; False (and nothing queued) if this mailbox was closed."""
        with self._cond:
            if self._closed:
                return False
            self._queues.setdefault((src, tag), deque()).append(payload)
            self._cond.notify_all()
            return True

    def mark_gone(self, src: int) -> None:
        with self._cond:
            self._gone.add(src)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def take(self, owner: Transport, src: int, tag: str, timeout_s: float) -> bytes:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                box = self._queues.get((src, tag))
                if box:
                    payload = box.popleft()
                    if not box:
                        del self._queues[(src, tag)]
                    return payload
                if self._closed:
                    raise TransportClosed(f"rank {owner.rank}: closed while waiting for {src}")
                if src in self._gone:
                    raise PeerDisconnected(
                        f"rank {owner.rank}: rank {src} disconnected before sending {tag!r}",
                        rank=src,
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pending = [t for (s, t) in self._queues if s == src]
                    raise owner._timeout(src, tag, timeout_s, pending)
                self._cond.wait(remaining)


class LocalTransport(Transport):
    """In-memory transport between threads of one process (tests, single-host simulation).

    Build a connected set with `local_transports(world_size)`. `send` appends to the peer's
    mailbox (never blocks); closing an end makes peers' pending and later `recv`s from it raise
    `PeerDisconnected` once its already-sent messages are consumed.
    """

    def __init__(self, rank: int, mailboxes: Sequence[_Mailbox]) -> None:
        super().__init__(rank, len(mailboxes))
        self._mailboxes = mailboxes

    def _deliver(self, dst: int, tag: str, payload: bytes) -> None:
        if not self._mailboxes[dst].put(self.rank, tag, payload):
            raise PeerDisconnected(f"rank {self.rank}: rank {dst} is closed", rank=dst)

    def _receive(self, src: int, tag: str, timeout_s: float) -> bytes:
        return self._mailboxes[self.rank].take(self, src, tag, timeout_s)

    def _shutdown(self) -> None:
        for rank, box in enumerate(self._mailboxes):
            if rank == self.rank:
                box.close()
            else:
                box.mark_gone(self.rank)


def local_transports(world_size: int) -> list[LocalTransport]:
    """`world_size` connected `LocalTransport` ends, indexed by rank."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    boxes = [_Mailbox() for _ in range(world_size)]
    return [LocalTransport(rank, boxes) for rank in range(world_size)]


# --------------------------------------------------------------------------------------------
# PipeTransport: one duplex OS pipe per pair of ranks, for processes on one host.

_FRAME = struct.Struct("<QH")  # payload length, tag length; then the UTF-8 tag, the payload
_SMALL_FRAME = 1 << 16  # payloads up to this size leave in one write with their header
_FLUSH_TIMEOUT_S = 10.0


def pipe_mesh(world_size: int) -> list[dict[int, Connection]]:
    """Duplex pipes between every pair of ranks: entry r maps each peer to rank r's end.

    Pass entry r to the process of rank r (e.g. as a `spawn` Process argument) and build
    `PipeTransport(r, world_size, entry_r)` there; then close the parent's copies so a dead
    child shows up as end-of-file at its peers.
    """
    import multiprocessing as mp

    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    ends: list[dict[int, Connection]] = [{} for _ in range(world_size)]
    ctx = mp.get_context("spawn")
    for a in range(world_size):
        for b in range(a + 1, world_size):
            ends[a][b], ends[b][a] = ctx.Pipe(duplex=True)
    return ends


def _recv_exactly(sock: socket.socket, view: memoryview) -> bool:
    """Fill `view` from `sock`; False at end-of-file before the first byte, raise after it."""
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            if got:
                raise EOFError(f"end-of-file after {got} of {len(view)} bytes")
            return False
        got += n
    return True


class PipeTransport(Transport):
    """Transport over the socket pairs of `pipe_mesh` (raw frames, nothing pickled).

    One reader thread per peer drains its socket into a mailbox, so a peer's sends never block
    on this end's progress; one writer thread per peer makes `send` eager. A frame is a 10-byte
    header (payload and tag lengths), the tag and the payload; the reader receives a payload
    straight into its own buffer (`recv_into`), and the writer hands a large payload to the
    kernel without joining it to its header, so a message costs the kernel's copy and no
    Python-level one. A peer whose socket reaches end-of-file (closed, or its process died) is
    marked disconnected. Buffers are unbounded (no flow control): this is a single-host test,
    development and benchmark transport. `recv` returns a writable `memoryview` of a buffer
    that belongs to the caller (bytes-like: `bytes(...)` makes it bytes).

    Args:
        rank: This end's rank.
        world_size: Number of ranks.
        conns: This rank's end of the pipe to every other rank (from `pipe_mesh`).
        flush_timeout_s: How long `close` waits for queued sends to leave, in seconds.
    """

    def __init__(
        self,
        rank: int,
        world_size: int,
        conns: Mapping[int, Connection],
        *,
        flush_timeout_s: float = _FLUSH_TIMEOUT_S,
    ) -> None:
        super().__init__(rank, world_size)
        expected = set(range(world_size)) - {rank}
        if set(conns) != expected:
            raise ValueError(f"rank {rank} needs a pipe to each of {sorted(expected)}")
        self._conns = dict(conns)
        # Socket objects over duplicates of the pipes' descriptors (blocking, no timeout):
        # recv_into and a header-less sendall, which `Connection` does not offer.
        self._socks = {peer: socket.socket(fileno=os.dup(c.fileno())) for peer, c in conns.items()}
        self._mailbox = _Mailbox()
        self._flush_timeout_s = flush_timeout_s
        self._outbox: dict[int, queue.Queue[tuple[bytes, bytes] | None]] = {
            p: queue.Queue() for p in expected
        }
        self._send_failed: dict[int, BaseException] = {}
        self._threads: list[threading.Thread] = []
        for peer in sorted(expected):
            for target, role in ((self._read_loop, "reader"), (self._write_loop, "writer")):
                thread = threading.Thread(
                    target=target, args=(peer,), name=f"pipe-{role}-{rank}-{peer}", daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def _read_loop(self, peer: int) -> None:
        sock = self._socks[peer]
        header = bytearray(_FRAME.size)
        try:
            while _recv_exactly(sock, memoryview(header)):
                length, tag_len = _FRAME.unpack(header)
                raw_tag = bytearray(tag_len)
                payload = memoryview(np.empty(length, dtype=np.uint8))  # not zero-filled
                if not (_recv_exactly(sock, memoryview(raw_tag)) and _recv_exactly(sock, payload)):
                    break
                self._mailbox.put(peer, raw_tag.decode("utf-8"), payload)
        except (EOFError, OSError, UnicodeDecodeError, MemoryError, ValueError):
            pass
        self._mailbox.mark_gone(peer)

    def _write_loop(self, peer: int) -> None:
        sock, outbox = self._socks[peer], self._outbox[peer]
        while True:
            frame = outbox.get()
            if frame is None:
                return
            head, payload = frame
            try:
                if len(payload) <= _SMALL_FRAME:
                    sock.sendall(head + payload)
                else:
                    sock.sendall(head)
                    sock.sendall(payload)
            except (OSError, ValueError) as exc:
                self._send_failed[peer] = exc
                self._mailbox.mark_gone(peer)
                return

    def _deliver(self, dst: int, tag: str, payload: bytes) -> None:
        if dst in self._send_failed:
            raise PeerDisconnected(f"rank {self.rank}: pipe to rank {dst} is broken", rank=dst)
        raw_tag = tag.encode("utf-8")
        self._outbox[dst].put((_FRAME.pack(len(payload), len(raw_tag)) + raw_tag, payload))

    def _receive(self, src: int, tag: str, timeout_s: float) -> bytes:
        return self._mailbox.take(self, src, tag, timeout_s)

    def _shutdown(self) -> None:
        for outbox in self._outbox.values():
            outbox.put(None)
        deadline = time.monotonic() + self._flush_timeout_s
        for thread in self._threads:
            if thread.name.startswith("pipe-writer"):
                thread.join(max(0.0, deadline - time.monotonic()))
        # shutdown(), not just close(): it wakes our reader blocked in recv and gives the peer
        # end-of-file at once (a close alone waits for that recv to return).
        for sock in self._socks.values():
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for conn in self._conns.values():
            conn.close()
        self._mailbox.close()


# --------------------------------------------------------------------------------------------
# Tensor encoding: per tensor, a fixed header then raw little-endian element bytes.
#
#   message  = u32 magic "SIT1" | u32 count | tensor * count
#   tensor   = u8 dtype code | u8 ndim | u16 zero | u32 zero | u64 nbytes | u64 dim * ndim | data

_TENSOR_MAGIC = b"SIT1"
_MESSAGE_HEADER = struct.Struct("<4sI")
_TENSOR_HEADER = struct.Struct("<BBHIQ")
_DIM = struct.Struct("<Q")

# code -> (torch dtype, little-endian numpy dtype of the same width used for the bytes)
_DTYPES: dict[int, tuple[torch.dtype, str]] = {
    1: (torch.bool, "|b1"),
    2: (torch.uint8, "|u1"),
    3: (torch.int8, "|i1"),
    4: (torch.int16, "<i2"),
    5: (torch.int32, "<i4"),
    6: (torch.int64, "<i8"),
    7: (torch.float16, "<f2"),
    8: (torch.bfloat16, "<u2"),  # no numpy bfloat16: moved as its 16-bit pattern
    9: (torch.float32, "<f4"),
    10: (torch.float64, "<f8"),
    11: (torch.complex64, "<c8"),
    12: (torch.complex128, "<c16"),
}
_CODES = {dtype: code for code, (dtype, _) in _DTYPES.items()}


def _tensor_bytes(tensor: torch.Tensor) -> tuple[int, memoryview]:
    """The dtype code and a flat byte view of `tensor`'s little-endian data (no copy when the
    tensor is a contiguous CPU tensor on a little-endian host)."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(tensor).__name__}")
    code = _CODES.get(tensor.dtype)
    if code is None:
        raise UnencodableObject(f"tensor dtype {tensor.dtype} has no wire encoding")
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if tensor.dtype == torch.bfloat16:
        flat = flat.view(torch.int16)
    array = flat.resolve_conj().numpy().astype(_DTYPES[code][1], copy=False)
    return code, memoryview(np.ascontiguousarray(array).view(np.uint8))


def encode_tensors(tensors: Sequence[torch.Tensor], *, prefix: bytes = b"") -> bytes:
    """Encode tensors (any shape, a dtype of `_DTYPES`) as one message; the inverse of decode.

    CUDA tensors are copied to the host. Cost: one copy of the data plus 8 + 16 + 8 * ndim
    header bytes per tensor. `prefix` (a caller's own framing) is placed before the message in
    that same copy, so `prefix + encode_tensors(...)` needs no second one.

    Raises:
        UnencodableObject: a dtype without an encoding, or more than `MAX_NDIM` dimensions.
    """
    parts: list[bytes | memoryview] = [prefix, _MESSAGE_HEADER.pack(_TENSOR_MAGIC, len(tensors))]
    for tensor in tensors:
        code, data = _tensor_bytes(tensor)
        if tensor.dim() > MAX_NDIM or any(dim > MAX_DIM for dim in tensor.shape):
            raise UnencodableObject(f"tensor shape {tuple(tensor.shape)} exceeds the wire limits")
        parts.append(_TENSOR_HEADER.pack(code, tensor.dim(), 0, 0, len(data)))
        parts.extend(_DIM.pack(dim) for dim in tensor.shape)
        parts.append(data)
    return b"".join(parts)


def decode_tensors(payload: bytes, *, share: bool = False) -> list[torch.Tensor]:
    """Decode `encode_tensors` output into writable CPU tensors.

    By default every tensor is a fresh copy. With `share=True` the caller hands `payload` over
    (it must not touch the buffer again): a tensor whose data lies aligned in a writable buffer
    uses that memory in place, saving the copy; the others are copied.

    Raises:
        MalformedMessage: bad magic, unknown dtype code, a length that does not match the
            shape, or trailing bytes.
    """
    view = memoryview(payload)
    if len(view) < _MESSAGE_HEADER.size:
        raise MalformedMessage(f"tensor message of {len(view)} bytes is shorter than its header")
    magic, count = _MESSAGE_HEADER.unpack_from(view)
    if magic != _TENSOR_MAGIC:
        raise MalformedMessage(f"tensor message magic {magic!r}, expected {_TENSOR_MAGIC!r}")
    offset = _MESSAGE_HEADER.size
    out = []
    for _ in range(count):
        if len(view) - offset < _TENSOR_HEADER.size:
            raise MalformedMessage("tensor message truncated in a tensor header")
        code, ndim, pad16, pad32, nbytes = _TENSOR_HEADER.unpack_from(view, offset)
        offset += _TENSOR_HEADER.size
        if code not in _DTYPES or ndim > MAX_NDIM or pad16 or pad32:
            raise MalformedMessage(f"bad tensor header (dtype code {code}, ndim {ndim})")
        if len(view) - offset < ndim * _DIM.size:
            raise MalformedMessage("tensor message truncated in a shape")
        shape = [_DIM.unpack_from(view, offset + i * _DIM.size)[0] for i in range(ndim)]
        offset += ndim * _DIM.size
        if any(dim > MAX_DIM for dim in shape):
            raise MalformedMessage(f"tensor dimension above {MAX_DIM} in shape {shape}")
        dtype, np_dtype = _DTYPES[code]
        itemsize = np.dtype(np_dtype).itemsize
        if math.prod(shape) * itemsize != nbytes or len(view) - offset < nbytes:
            raise MalformedMessage(
                f"tensor of shape {shape} and dtype {dtype} needs {math.prod(shape) * itemsize} "
                f"bytes; header says {nbytes}, {len(view) - offset} remain"
            )
        array = np.frombuffer(view, dtype=np_dtype, count=nbytes // itemsize, offset=offset)
        if dtype == torch.bool and bool((array.view(np.uint8) > 1).any()):
            raise MalformedMessage("bool tensor with bytes other than 0 and 1")
        offset += nbytes
        in_place = share and not view.readonly and array.flags.aligned and array.dtype.isnative
        native = array if in_place else array.astype(array.dtype.newbyteorder("="), copy=True)
        tensor = torch.from_numpy(native)
        if dtype == torch.bfloat16:
            tensor = tensor.view(torch.int16).view(torch.bfloat16)
        out.append(tensor.reshape(shape))
    if offset != len(view):
        raise MalformedMessage(f"{len(view) - offset} trailing bytes after {count} tensors")
    return out


# --------------------------------------------------------------------------------------------
# Control objects: JSON over a closed set of types.
#
# str, int, float (finite), bool and None are JSON scalars; list is a JSON array; every other
# allowed type is a one-key JSON object: {"$dict": {str: value}}, {"$tuple": [...]},
# {"$size": [int, ...]}, {"$device": "cpu"}, {"$dtype": "int64"},
# {"$float": "nan" | "inf" | "-inf"}. An untagged JSON object never decodes.

_TORCH_DTYPES = {str(dtype).removeprefix("torch."): dtype for dtype, _ in _DTYPES.values()}


def _to_json(obj: object, depth: int) -> object:
    if depth > MAX_OBJECT_DEPTH:
        raise UnencodableObject(f"control object nested deeper than {MAX_OBJECT_DEPTH}")
    kind = type(obj)
    if obj is None or kind in (str, bool, int):
        return obj
    if kind is float:
        value = float(obj)  # type: ignore[arg-type]
        return value if math.isfinite(value) else {"$float": repr(value)}
    if kind is list:
        return [_to_json(item, depth + 1) for item in obj]  # type: ignore[attr-defined]
    if kind is tuple:
        return {"$tuple": [_to_json(item, depth + 1) for item in obj]}  # type: ignore[attr-defined]
    if kind is torch.Size:
        return {"$size": [int(dim) for dim in obj]}  # type: ignore[attr-defined]
    if kind is torch.device:
        return {"$device": str(obj)}
    if kind is torch.dtype:
        name = str(obj).removeprefix("torch.")
        if name not in _TORCH_DTYPES:
            raise UnencodableObject(f"dtype {obj} is not allowed in a control object")
        return {"$dtype": name}
    if kind is dict:
        items = obj.items()  # type: ignore[attr-defined]
        if not all(type(key) is str for key, _ in items):
            raise UnencodableObject("control-object dict keys must be str")
        return {"$dict": {key: _to_json(value, depth + 1) for key, value in items}}
    raise UnencodableObject(
        f"{kind.__module__}.{kind.__qualname__} is not allowed in a control object "
        "(allowed: str, int, float, bool, None, list, tuple, dict, torch.Size, torch.device, "
        "torch.dtype)"
    )


def encode_object(obj: object) -> bytes:
    """Encode a control object (e.g. a TTP request dict, a `torch.Size`) as UTF-8 JSON.

    Allowed types, matched exactly (no subclasses): str, int, float, bool, None, list, tuple,
    dict with str keys, torch.Size, torch.device, and the torch dtypes tensors may have.

    Raises:
        UnencodableObject: anything else (tensors, modules, numpy scalars, arbitrary classes),
            nesting deeper than `MAX_OBJECT_DEPTH`, or more than `MAX_OBJECT_BYTES`.
    """
    text = json.dumps(_to_json(obj, 0), separators=(",", ":"), allow_nan=False)
    data = text.encode("utf-8")
    if len(data) > MAX_OBJECT_BYTES:
        raise UnencodableObject(f"control object of {len(data)} bytes > {MAX_OBJECT_BYTES}")
    return data


def _from_json(value: Any, depth: int) -> object:
    if depth > MAX_OBJECT_DEPTH:
        raise MalformedMessage(f"control object nested deeper than {MAX_OBJECT_DEPTH}")
    if value is None or type(value) in (str, bool, int, float):
        return value
    if type(value) is list:
        return [_from_json(item, depth + 1) for item in value]
    if type(value) is not dict or len(value) != 1:
        raise MalformedMessage("control object: untagged JSON object")
    ((key, inner),) = value.items()
    if key == "$dict" and type(inner) is dict:
        return {k: _from_json(v, depth + 1) for k, v in inner.items()}
    if key == "$tuple" and type(inner) is list:
        return tuple(_from_json(item, depth + 1) for item in inner)
    if key == "$size" and type(inner) is list and all(type(d) is int and d >= 0 for d in inner):
        return torch.Size(inner)
    if key == "$device" and type(inner) is str:
        try:
            return torch.device(inner)
        except RuntimeError as exc:
            raise MalformedMessage(f"control object: bad device {inner!r}") from exc
    if key == "$dtype" and inner in _TORCH_DTYPES:
        return _TORCH_DTYPES[inner]
    if key == "$float" and inner in ("nan", "inf", "-inf"):
        return float(inner)
    raise MalformedMessage(f"control object: unknown or malformed tag {key!r}")


def decode_object(payload: bytes) -> object:
    """Decode `encode_object` output.

    Raises:
        MalformedMessage: not UTF-8 JSON, too large or deep, or a tag outside the allowed set.
    """
    if len(payload) > MAX_OBJECT_BYTES:
        raise MalformedMessage(f"control object of {len(payload)} bytes > {MAX_OBJECT_BYTES}")
    try:
        value = json.loads(bytes(payload).decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise MalformedMessage(f"control object is not valid JSON: {exc}") from None
    return _from_json(value, 0)


def _refuse_constant(name: str) -> object:
    raise MalformedMessage(f"control object: bare {name} is not JSON")
