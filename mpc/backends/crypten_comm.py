"""CrypTen's communicator over an `mpc.comm.Transport`: no torch.distributed, no gloo, no pickle.

What:   `TransportCommunicator` implements every `crypten.communicator.Communicator` method
        CrypTen 0.4.1 calls (send, recv, isend, irecv, scatter, reduce, all_reduce, gather,
        all_gather, broadcast, barrier, send_obj, recv_obj, broadcast_obj, ranks, names,
        communication stats) plus the groups its TTP uses (`main_group`, `ttp_group`,
        `ttp_comm_group`). `install(transport)` makes the next `crypten.init()` (and the
        `TTPServer`, which calls it) use it instead of `DistributedCommunicator`.
        `mpc.backends.crypten` routes the TTP's seed exchange, which CrypTen does with direct
        `torch.distributed` calls, through the communicator when it is this one.
Ranks:  the transport's ranks are CrypTen's global ranks: parties 0..n-1, and the TTP as rank n
        when `cfg.mpc.provider == "TTP"` (then `transport.world_size == n + 1`).
        `get_world_size()` is n, as in CrypTen. Groups: `main_group` = the parties,
        `ttp_group` = parties + TTP, `ttp_comm_group` = {0, TTP}.
Wire:   every message is one transport message under the tag `str(seq)`, where `seq` counts
        messages per direction of each pair of ranks (both ends run the same sequence of
        operations, so the counters agree); its first byte names the operation and the rest is
        `mpc.comm.encode_tensors` or `encode_object` output. A message whose operation byte is
        not the one expected raises `MalformedMessage` (the parties fell out of step).
        Control objects are JSON over a closed set of types: `crypten.load` of a tensor or a
        module, which broadcasts it with `broadcast_obj`, is refused (`UnencodableObject`).
Threat: the transport is trusted to authenticate peers and keep messages confidential; this
        module adds neither. Semi-honest CrypTen; the TTP is a trusted dealer (an assumption).
Cost:   (g = members of the group, B = encoded bytes of the caller's tensors; "round" = one
        message delay)
          send / recv / isend / irecv   1 message, B bytes, 1 round
          broadcast, scatter            root sends g-1 messages; 1 round
          reduce, gather                g-1 messages into the root; 1 round
          all_reduce, all_gather        all-to-all: each sends and receives g-1 messages of B;
                                        1 round (not bandwidth-optimal: a ring would send ~2B)
          barrier                       all-to-all of 1-byte messages; 1 round
        `get_communication_stats()` counts, as CrypTen does, one "round" per operation and,
        unlike CrypTen's element estimate, the payload bytes this party actually sent and
        received (headers included, transport framing excluded).
Limits: one communicator per process (CrypTen's communicator, generators and TTP client are
        process-global), so parties run in separate processes; CPU tensors only. One CrypTen
        session per transport: a new communicator restarts the per-pair sequence numbers, so
        open a fresh transport (session) for each `crypten.init()`.
"""

from __future__ import annotations

import importlib
import logging
import math
import threading
import timeit
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch.distributed import ReduceOp

from mpc.backends.crypten import load
from mpc.comm import (
    MalformedMessage,
    Transport,
    decode_object,
    decode_tensors,
    encode_object,
    encode_tensors,
)
from mpc.errors import MPCError

__all__ = [
    "CommunicatorBusy",
    "Group",
    "TransportCommunicator",
    "install",
    "installed",
    "uninstall",
]

_log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0  # longest wait for one message from a peer
DEFAULT_TTP_IDLE_TIMEOUT_S = 600.0  # longest the TTP waits for party 0's next request

# Operation code at the start of every message: one letter padded to 8 bytes, so that the
# tensor data after it (its headers are multiples of 8 bytes) stays 8-byte aligned in the
# receiver's buffer and `decode_tensors(..., share=True)` can use it in place.
_OP_SIZE = 8
_P2P, _BCAST, _REDUCE, _ALLREDUCE, _GATHER, _ALLGATHER, _SCATTER, _BARRIER, _OBJ, _BOBJ = (
    letter.ljust(_OP_SIZE, b"\0")
    for letter in (b"P", b"B", b"R", b"A", b"G", b"H", b"S", b"Y", b"O", b"Q")
)

_REDUCERS: dict[Any, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    ReduceOp.SUM: torch.add,
    ReduceOp.PRODUCT: torch.mul,
    ReduceOp.MIN: torch.minimum,
    ReduceOp.MAX: torch.maximum,
    ReduceOp.BAND: torch.bitwise_and,
    ReduceOp.BOR: torch.bitwise_or,
    ReduceOp.BXOR: torch.bitwise_xor,
}


class CommunicatorBusy(MPCError, RuntimeError):
    """CrypTen is already initialized, so its communicator cannot be swapped now."""


@dataclass(frozen=True, slots=True)
class Group:
    """A set of global ranks that take part in a collective, in ascending order."""

    name: str
    ranks: tuple[int, ...]

    def __contains__(self, rank: object) -> bool:
        return rank in self.ranks


@dataclass(frozen=True, slots=True)
class _Settings:
    transport: Transport
    timeout_s: float
    ttp_idle_timeout_s: float


class _Request:
    """What `isend` / `irecv` return: `wait()` completes the operation (CrypTen's Work API)."""

    def __init__(self, complete: Callable[[], None] | None = None) -> None:
        self._complete = complete

    def wait(self) -> bool:
        if self._complete is not None:
            complete, self._complete = self._complete, None
            complete()
        return True

    def is_completed(self) -> bool:
        return self._complete is None


_Communicator: type = load().communicator.Communicator  # CrypTen only ever via load()


class TransportCommunicator(_Communicator):  # type: ignore[misc]
    """A CrypTen `Communicator` whose every message is a `Transport` message (see module doc).

    Built by `crypten.init()` through `initialize` once `install` has run; use
    `crypten.communicator.get()` to reach it. It can also be built directly (tests,
    tools) without touching CrypTen's global state. All methods raise `mpc.comm.CommFailure`
    subclasses on timeouts, dead peers and malformed messages.

    Args:
        transport: This rank's end of the session's transport.
        init_ttp: The transport's last rank is CrypTen's TTP.
        timeout_s: Longest wait for any one message, in seconds.
        ttp_idle_timeout_s: Longest the TTP waits for party 0's next request, in seconds.
    """

    BYTES_PER_ELEMENT = 8
    ROUTES_TTP_TRAFFIC = True  # mpc.backends.crypten sends the TTP seeds through us
    instance: ClassVar[TransportCommunicator | None] = None
    _settings: ClassVar[_Settings | None] = None
    _class_lock = threading.Lock()

    def __init__(
        self,
        transport: Transport,
        *,
        init_ttp: bool = False,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        ttp_idle_timeout_s: float = DEFAULT_TTP_IDLE_TIMEOUT_S,
    ) -> None:
        parties = transport.world_size - (1 if init_ttp else 0)
        if parties < 1 or (init_ttp and parties < 2):
            raise ValueError(
                f"a transport of {transport.world_size} ranks cannot carry "
                f"{'2+ parties and a TTP' if init_ttp else 'a party'}"
            )
        self.transport = transport
        self.timeout_s = timeout_s
        self.ttp_idle_timeout_s = ttp_idle_timeout_s
        self.rank = transport.rank
        self.world_size = parties
        self.ttp_initialized = init_ttp
        self._name = f"rank{self.rank}"
        self._send_seq = [0] * transport.world_size
        self._recv_seq = [0] * transport.world_size
        everyone = tuple(range(transport.world_size))
        self.main_group = Group("main", tuple(range(parties)))
        self.ttp_group = Group("ttp", everyone)
        if transport.world_size > 1:
            self.ttp_comm_group = Group("ttp_comm", (0, transport.world_size - 1))
        self.reset_communication_stats()

    # ---- lifecycle (called by crypten.communicator) ------------------------------------------

    @classmethod
    def is_initialized(cls) -> bool:
        return cls.instance is not None

    @classmethod
    def get(cls) -> TransportCommunicator | None:
        return cls.instance

    @classmethod
    def initialize(cls, rank: int = 0, world_size: int = 1, init_ttp: bool = False) -> None:
        """Build the instance from the installed transport; CrypTen's rank/world_size are unused.

        Raises:
            CommunicatorBusy: `install` was not called first.
        """
        with cls._class_lock:
            if cls._settings is None:
                raise CommunicatorBusy("call mpc.backends.crypten_comm.install(transport) first")
            settings = cls._settings
            cls.instance = cls(
                settings.transport,
                init_ttp=init_ttp,
                timeout_s=settings.timeout_s,
                ttp_idle_timeout_s=settings.ttp_idle_timeout_s,
            )

    @classmethod
    def shutdown(cls) -> None:
        """Party 0 tells the TTP to stop (as CrypTen does); the transport stays open.

        Close the transport after `crypten.uninit()`: closing flushes the last message.
        """
        inst = cls.instance
        if inst is not None and inst.rank == 0 and inst.ttp_initialized:
            inst.send_obj("terminate", inst.get_ttp_rank(), inst.ttp_group)
        cls.instance = None

    # ---- framing ------------------------------------------------------------------------------

    def _check(self, group: Group | None, *peers: int | None) -> Group:
        group = self.main_group if group is None else group
        if not isinstance(group, Group):
            raise TypeError(f"group must be a crypten_comm.Group, got {type(group).__name__}")
        for rank in (self.rank, *peers):
            if rank is not None and rank not in group:
                raise ValueError(f"rank {rank} is not in group {group.name} {group.ranks}")
        return group

    def _post(self, dst: int, message: bytes) -> None:
        """Send `message` (its operation code, then the body) as this link's next message."""
        tag = str(self._send_seq[dst])
        self._send_seq[dst] += 1
        self.transport.send(dst, tag, message)

    def _reserve(self, src: int) -> str:
        tag = str(self._recv_seq[src])
        self._recv_seq[src] += 1
        return tag

    def _take(self, src: int, op: bytes, tag: str | None = None, idle: bool = False) -> memoryview:
        tag = self._reserve(src) if tag is None else tag
        timeout = self.ttp_idle_timeout_s if idle else self.timeout_s
        payload = self.transport.recv(src, tag, timeout)
        if payload[:_OP_SIZE] != op:
            raise MalformedMessage(
                f"rank {self.rank}: message {tag} from rank {src} is operation "
                f"{bytes(payload[:1])!r}, expected {op[:1]!r}: the parties are out of step"
            )
        return memoryview(payload)[_OP_SIZE:]  # no copy of the body

    def _take_tensors(self, src: int, op: bytes, count: int, tag: str | None = None) -> list[Any]:
        # The transport's buffer is ours alone: tensors may use it in place.
        try:
            tensors = decode_tensors(self._take(src, op, tag), share=True)
        except MalformedMessage as exc:
            raise MalformedMessage(f"from rank {src}: {exc}") from None
        if len(tensors) != count:
            raise MalformedMessage(f"rank {src} sent {len(tensors)} tensors, expected {count}")
        return tensors

    def _take_like(self, src: int, op: bytes, mine: list[torch.Tensor]) -> list[torch.Tensor]:
        received = self._take_tensors(src, op, len(mine))
        return [self._like(r, t, src) for r, t in zip(received, mine, strict=True)]

    @contextmanager
    def _counted(self, rounds: int = 1) -> Iterator[None]:
        before = self.transport.stats
        tic = timeit.default_timer()
        try:
            yield
        finally:
            after = self.transport.stats
            self.comm_rounds += rounds
            self.comm_bytes += (after.bytes_sent - before.bytes_sent) + (
                after.bytes_received - before.bytes_received
            )
            self.comm_time += timeit.default_timer() - tic

    @staticmethod
    def _like(received: torch.Tensor, template: torch.Tensor, src: int) -> torch.Tensor:
        if received.shape != template.shape or received.dtype != template.dtype:
            raise MalformedMessage(
                f"rank {src} sent a {received.dtype} tensor of shape {tuple(received.shape)}, "
                f"expected {template.dtype} {tuple(template.shape)}"
            )
        return received.to(template.device)

    # ---- point to point -----------------------------------------------------------------------

    def _peer_of(self, src: int | None, group: Group) -> int:
        if src is not None:
            return src
        others = [rank for rank in group.ranks if rank != self.rank]
        if len(others) != 1:
            raise ValueError("recv from any source is not supported: pass src")
        return others[0]

    def send(self, tensor: torch.Tensor, dst: int, group: Group | None = None) -> None:
        """Send `tensor` to `dst`. Cost: 1 message."""
        self._check(group, dst)
        with self._counted():
            self._post(dst, encode_tensors([tensor.data], prefix=_P2P))

    def recv(
        self, tensor: torch.Tensor, src: int | None = None, group: Group | None = None
    ) -> torch.Tensor:
        """Receive a tensor shaped like `tensor` from `src`; returns a new tensor."""
        group = self._check(group, src)
        src = self._peer_of(src, group)
        with self._counted():
            (received,) = self._take_tensors(src, _P2P, 1)
        return self._like(received, tensor, src)

    def isend(self, tensor: torch.Tensor, dst: int, group: Group | None = None) -> _Request:
        """Send now (the transport is eager); the request is already complete."""
        self.send(tensor, dst, group)
        return _Request()

    def irecv(
        self, tensor: torch.Tensor, src: int | None = None, group: Group | None = None
    ) -> _Request:
        """Reserve the next message from `src`; `wait()` receives it into `tensor` in place."""
        group = self._check(group, src)
        peer = self._peer_of(src, group)
        tag = self._reserve(peer)

        def complete() -> None:
            with self._counted():
                (received,) = self._take_tensors(peer, _P2P, 1, tag)
            tensor.data.copy_(self._like(received, tensor, peer))

        return _Request(complete)

    # ---- collectives --------------------------------------------------------------------------

    def broadcast(
        self, input: Any, src: int, group: Group | None = None, batched: bool = False
    ) -> Any:
        """Root `src` sends its tensor(s) to every member; the others overwrite theirs in place.

        Cost: 1 round; root sends g-1 messages of B bytes, every other member receives one.
        """
        group = self._check(group, src)
        tensors = list(input) if batched else [input]
        with self._counted():
            if self.rank == src:
                body = encode_tensors([t.data for t in tensors], prefix=_BCAST)
                for rank in group.ranks:
                    if rank != src:
                        self._post(rank, body)
            else:
                received = self._take_tensors(src, _BCAST, len(tensors))
                for tensor, new in zip(tensors, received, strict=True):
                    tensor.data.copy_(self._like(new, tensor.data, src))
        return input

    def _reduce_in_order(
        self, by_rank: dict[int, list[torch.Tensor]], op: Any, ranks: Sequence[int]
    ) -> list[torch.Tensor]:
        reducer = _REDUCERS.get(op)
        if reducer is None:
            raise ValueError(f"unsupported reduce op {op!r}")
        if len(ranks) == 1:
            return [t.clone() for t in by_rank[ranks[0]]]
        result = by_rank[ranks[0]]  # not modified: every reducer returns a new tensor
        for rank in ranks[1:]:
            result = [reducer(acc, t) for acc, t in zip(result, by_rank[rank], strict=True)]
        return result

    def reduce(self, input: Any, dst: int, op: Any = ReduceOp.SUM, batched: bool = False) -> Any:
        """Every party sends its tensor(s) to `dst`, which combines them in rank order.

        Returns the result at `dst` and None elsewhere. Cost: 1 round; g-1 messages into `dst`.
        """
        group = self._check(None, dst)
        mine = [t.data for t in input] if batched else [input.data]
        with self._counted():
            if self.rank != dst:
                self._post(dst, encode_tensors(mine, prefix=_REDUCE))
                return None
            by_rank = {dst: mine}
            for rank in group.ranks:
                if rank != dst:
                    by_rank[rank] = self._take_like(rank, _REDUCE, mine)
            result = self._reduce_in_order(by_rank, op, group.ranks)
        return result if batched else result[0]

    def all_reduce(self, input: Any, op: Any = ReduceOp.SUM, batched: bool = False) -> Any:
        """All-to-all exchange, then every party combines in rank order (SUM, BXOR, ...).

        Cost: 1 round; each party sends and receives g-1 messages of B bytes.
        """
        group = self._check(None)
        mine = [t.data for t in input] if batched else [input.data]
        with self._counted():
            by_rank = {self.rank: mine}
            body = encode_tensors(mine, prefix=_ALLREDUCE)
            for rank in group.ranks:
                if rank != self.rank:
                    self._post(rank, body)
            for rank in group.ranks:
                if rank != self.rank:
                    by_rank[rank] = self._take_like(rank, _ALLREDUCE, mine)
            result = self._reduce_in_order(by_rank, op, group.ranks)
        return result if batched else result[0]

    def gather(self, tensor: torch.Tensor, dst: int) -> list[torch.Tensor | None]:
        """Collect every party's tensor at `dst` (a list by rank); others get `[None]`.

        Cost: 1 round; g-1 messages into `dst`.
        """
        group = self._check(None, dst)
        with self._counted():
            if self.rank != dst:
                self._post(dst, encode_tensors([tensor.data], prefix=_GATHER))
                return [None]
            out: list[torch.Tensor | None] = []
            for rank in group.ranks:
                if rank == dst:
                    out.append(tensor.data.clone())
                else:
                    (received,) = self._take_tensors(rank, _GATHER, 1)
                    out.append(self._like(received, tensor.data, rank))
        return out

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every party gets every party's tensor, as a list by rank.

        Cost: 1 round; each party sends and receives g-1 messages of B bytes.
        """
        group = self._check(None)
        with self._counted():
            body = encode_tensors([tensor.data], prefix=_ALLGATHER)
            for rank in group.ranks:
                if rank != self.rank:
                    self._post(rank, body)
            out = []
            for rank in group.ranks:
                if rank == self.rank:
                    out.append(tensor.data.clone())
                else:
                    (received,) = self._take_tensors(rank, _ALLGATHER, 1)
                    out.append(self._like(received, tensor.data, rank))
        return out

    def scatter(
        self,
        scatter_list: Sequence[torch.Tensor],
        src: int,
        size: Sequence[int] | None = None,
        device: Any = None,
    ) -> torch.Tensor:
        """Root `src` sends `scatter_list[r]` to each party r and keeps its own entry.

        Cost: 1 round; root sends g-1 messages.
        """
        group = self._check(None, src)
        with self._counted():
            if self.rank == src:
                if len(scatter_list) != len(group.ranks):
                    raise ValueError(f"scatter needs {len(group.ranks)} tensors")
                for rank in group.ranks:
                    if rank != src:
                        message = encode_tensors([scatter_list[rank].data], prefix=_SCATTER)
                        self._post(rank, message)
                own: torch.Tensor = scatter_list[src].data
                return own
            (received,) = self._take_tensors(src, _SCATTER, 1)
        if size is not None and tuple(received.shape) != tuple(size):
            raise MalformedMessage(f"scatter from {src}: shape {tuple(received.shape)}")
        placed: torch.Tensor = received if device is None else received.to(device)
        return placed

    def barrier(self, group: Group | None = None) -> None:
        """Return once every member of `group` has entered. Cost: 1 round, all-to-all."""
        group = self._check(group)
        with self._counted():
            for rank in group.ranks:
                if rank != self.rank:
                    self._post(rank, _BARRIER)
            for rank in group.ranks:
                if rank != self.rank:
                    self._take(rank, _BARRIER)

    # ---- control objects ----------------------------------------------------------------------

    def send_obj(self, obj: object, dst: int, group: Group | None = None) -> None:
        """Send a control object (JSON, see `mpc.comm.encode_object`). Cost: 1 message."""
        self._check(group, dst)
        with self._counted():
            self._post(dst, _OBJ + encode_object(obj))

    def recv_obj(self, src: int, group: Group | None = None) -> object:
        """Receive a control object. The TTP waits up to `ttp_idle_timeout_s` for a request."""
        self._check(group, src)
        idle = self.ttp_initialized and self.rank == self.get_ttp_rank()
        with self._counted():
            return self._object(src, self._take(src, _OBJ, idle=idle))

    def broadcast_obj(self, obj: object, src: int, group: Group | None = None) -> object:
        """Root `src` sends a control object to every member. Cost: 1 round, g-1 messages."""
        group = self._check(group, src)
        with self._counted():
            if self.rank == src:
                body = _BOBJ + encode_object(obj)
                for rank in group.ranks:
                    if rank != src:
                        self._post(rank, body)
                return obj
            return self._object(src, self._take(src, _BOBJ))

    @staticmethod
    def _object(src: int, body: memoryview) -> object:
        try:
            return decode_object(body)
        except MalformedMessage as exc:  # the sender is named: the client blames by rank
            raise MalformedMessage(f"from rank {src}: {exc}") from None

    # ---- identity and stats -------------------------------------------------------------------

    def get_world_size(self) -> int:
        """Number of parties (the TTP is not counted)."""
        return self.world_size

    def get_rank(self) -> int:
        """This process's global rank (the TTP's is `get_world_size()`)."""
        return self.rank

    def get_ttp_rank(self) -> int:
        """The TTP's rank: `get_world_size()`."""
        return self.world_size

    def set_name(self, name: str) -> None:
        if not isinstance(name, str):
            raise TypeError(f"party name must be a str, got {type(name).__name__}")
        self._name = name

    def get_name(self) -> str:
        return self._name

    def get_distributed_backend(self) -> str:
        return f"transport:{type(self.transport).__name__}"

    def get_communication_stats(self) -> dict[str, Any]:
        """CrypTen's dict (rounds = operations, bytes sent + received, time in seconds), plus
        the transport's own counters for the whole session under "transport"."""
        stats: dict[str, Any] = super().get_communication_stats()
        stats["transport"] = self.transport.stats
        return stats


# ---- installation -----------------------------------------------------------------------------


def install(
    transport: Transport,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    ttp_idle_timeout_s: float = DEFAULT_TTP_IDLE_TIMEOUT_S,
) -> None:
    """Make the next `crypten.init()` in this process communicate over `transport`.

    Replaces `crypten.communicator.DistributedCommunicator` (the class `crypten.communicator`
    instantiates and returns from `get()`) with `TransportCommunicator`; `crypten.init()`,
    the TTP server (`TTPServer()` calls `crypten.init()`) and `crypten.uninit()` then go
    through it. torch.distributed is never initialized. Set `cfg.mpc.provider` before
    `crypten.init()`: with "TTP", the transport's last rank is the TTP.

    Args:
        transport: This process's end of the session's transport.
        timeout_s: Longest wait for any one message, in seconds.
        ttp_idle_timeout_s: Longest the TTP waits for party 0's next request, in seconds.

    Raises:
        CommunicatorBusy: CrypTen is already initialized in this process.
        ValueError: a timeout is not positive and finite.
    """
    for name, value in (("timeout_s", timeout_s), ("ttp_idle_timeout_s", ttp_idle_timeout_s)):
        if not 0 < value < math.inf:
            raise ValueError(f"{name} must be positive and finite, got {value!r}")
    load()
    comm = importlib.import_module("crypten.communicator")
    with TransportCommunicator._class_lock:
        if comm.is_initialized():
            raise CommunicatorBusy("crypten is initialized: call crypten.uninit() first")
        TransportCommunicator._settings = _Settings(transport, timeout_s, ttp_idle_timeout_s)
        comm.DistributedCommunicator = TransportCommunicator  # type: ignore[attr-defined]
    _log.debug("CrypTen communicator set to %s", type(transport).__name__)


def uninstall() -> None:
    """Give `crypten.communicator` back its `DistributedCommunicator`.

    Raises:
        CommunicatorBusy: CrypTen is still initialized over a transport.
    """
    load()
    comm = importlib.import_module("crypten.communicator")
    original = importlib.import_module("crypten.communicator.distributed_communicator")
    with TransportCommunicator._class_lock:
        if TransportCommunicator.instance is not None:
            raise CommunicatorBusy("crypten is initialized: call crypten.uninit() first")
        TransportCommunicator._settings = None
        default = original.DistributedCommunicator
        comm.DistributedCommunicator = default  # type: ignore[attr-defined]


def installed() -> bool:
    """Whether `crypten.communicator` currently builds `TransportCommunicator`s."""
    comm = importlib.import_module("crypten.communicator")
    return comm.DistributedCommunicator is TransportCommunicator
