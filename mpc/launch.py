"""Run a CrypTen computation in real party processes on this machine (development and tests).

`run_parties(fn, world_size=2, ttp=True)` starts `world_size` party processes (spawn start
method) plus, with `ttp=True`, CrypTen's trusted-third-party server as rank `world_size`. Each
party sets CrypTen's environment (`RENDEZVOUS`, `WORLD_SIZE`, `RANK`, `DISTRIBUTED_BACKEND`),
limits torch to one thread, imports CrypTen through `mpc.backends.crypten.load()` (so the AES-CTR
CSPRNG is installed), calls `crypten.init()`, runs `fn(rank, *args)` and `crypten.uninit()`.

Transport (`transport=`): "gloo" (default): torch.distributed's gloo over TCP on 127.0.0.1
(rendezvous on a free port found by binding port 0; gloo's data sockets pinned to the loopback
interface). "pipe": this repository's own communicator (`mpc.backends.crypten_comm`, the one the
mesh runs over its mTLS relay) over OS pipes between the processes (`mpc.comm.PipeTransport`):
an opening is one exchange of one message each way, where gloo's all-reduce takes several
(measured on the 2-core development machine: an opening of 10 values 0.3-0.5 ms over pipes vs
0.7-2.4 ms through CrypTen's gloo communicator; an all-reduce of 1M int64 10.1 ms vs 11.1 ms;
a multiplication of 160,000 values with exact truncation 31-33 ms vs 38-44 ms). Either sends
shares in PLAINTEXT between local processes and authenticates no one, so this harness is for
development, tests and benchmarks on one machine only; between real nodes the ranks talk over
the mTLS gRPC relay (`decentralized/mpc_relay.py`, `decentralized/mpc_worker.py`).

Threat model of what it runs: CrypTen's semi-honest protocols; with `ttp=True` the TTP process
is a trusted dealer that learns every triple (an assumption, not a property).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import pickle
import socket
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

from mpc.comm import pipe_mesh
from mpc.errors import PartyFailed, PartyTimeout

__all__ = ["TRANSPORTS", "run_parties"]

TRANSPORTS = ("gloo", "pipe")

_LOOPBACK = "127.0.0.1"
_TTP_EXIT_GRACE_S = 10.0  # how long the TTP may take to exit once every party returned
_KILL_GRACE_S = 5.0  # between SIGTERM and SIGKILL when reaping children


class RemoteTraceback(Exception):
    """The traceback text of an exception raised in a party process (set as `__cause__`)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _free_port() -> int:
    """A TCP port free on the loopback interface right now (bind port 0, read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _set_environment(rank: int, world_size: int, port: int) -> None:
    os.environ["RENDEZVOUS"] = f"tcp://{_LOOPBACK}:{port}"
    os.environ["WORLD_SIZE"] = str(world_size)  # parties only; CrypTen adds the TTP itself
    os.environ["RANK"] = str(rank)
    os.environ["DISTRIBUTED_BACKEND"] = "gloo"
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # keep gloo's data sockets local
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"


def _send_outcome(conn: Connection, status: str, payload: object) -> None:
    # Plain pickle, not the Connection's: torch registers reducers there that pass tensors by
    # file descriptor, which the parent cannot open once the child has exited.
    try:
        data = pickle.dumps((status, payload))
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        data = pickle.dumps(("error", (None, f"its result could not be pickled: {exc!r}", "")))
    conn.send_bytes(data)


def _child_main(
    rank: int,
    world_size: int,
    port: int,
    ttp: bool,
    fn: Callable[..., object] | None,
    args: tuple[object, ...],
    conn: Connection,
    pipes: dict[int, Connection] | None = None,
    timeout_s: float = 120.0,
) -> None:
    """Entry point of every child; `fn is None` marks the TTP server; `pipes` (this rank's
    ends of `mpc.comm.pipe_mesh`) selects the pipe transport over gloo."""
    transport = None
    try:
        _set_environment(rank, world_size, port)
        import torch

        torch.set_num_threads(1)
        with contextlib.suppress(RuntimeError):  # only settable before parallel work starts
            torch.set_num_interop_threads(1)
        from mpc.backends.crypten import load

        crypten = load()
        if ttp:
            crypten.cfg.mpc.provider = "TTP"
        if pipes is not None:
            from mpc.backends import crypten_comm
            from mpc.comm import PipeTransport

            transport = PipeTransport(rank, world_size + int(ttp), pipes)
            crypten_comm.install(transport, timeout_s=timeout_s, ttp_idle_timeout_s=timeout_s)
        if fn is None:
            crypten.mpc.provider.ttp_provider.TTPServer()  # serves until party 0 says terminate
            _send_outcome(conn, "ok", None)
            return
        crypten.init()
        result = fn(rank, *args)
        crypten.uninit()
        _send_outcome(conn, "ok", result)
    except BaseException as exc:  # noqa: BLE001 -- every failure is reported to the parent
        text = "".join(traceback.format_exception(exc))
        try:
            pickled: Exception | None = pickle.loads(pickle.dumps(exc))  # noqa: S301 -- own object
        except Exception:  # noqa: BLE001 -- an unpicklable exception travels as text
            pickled = None
        _send_outcome(conn, "error", (pickled, f"{type(exc).__name__}: {exc}", text))
    finally:
        if transport is not None:
            transport.close()  # flushes party 0's "terminate" to the TTP
        conn.close()


def _reap(processes: Sequence[mp.process.BaseProcess]) -> None:
    """Terminate, then kill, every child still alive, and wait for all of them."""
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    deadline = time.monotonic() + _KILL_GRACE_S
    for proc in processes:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()


def _raise_failure(rank: int, who: str, payload: tuple[Exception | None, str, str]) -> None:
    exc, summary, text = payload
    cause = RemoteTraceback(f"\n--- traceback in {who} ---\n{text}")
    if isinstance(exc, Exception):
        raise exc from cause
    raise PartyFailed(f"{who} raised {summary}", rank=rank) from cause


def run_parties(
    fn: Callable[..., Any],
    *,
    world_size: int = 2,
    ttp: bool = True,
    timeout_s: float = 120.0,
    args: tuple[object, ...] = (),
    transport: str = "gloo",
) -> list[Any]:
    """Run `fn(rank, *args)` in `world_size` CrypTen party processes and return their results.

    `fn` and `args` must be picklable (a module-level function), and so must each return
    value. CrypTen is initialized before `fn` runs and uninitialized after it returns.

    Args:
        fn: The per-party computation.
        world_size: Number of computing parties (the TTP is not counted).
        ttp: Start CrypTen's TTP server and set `cfg.mpc.provider = "TTP"`; otherwise CrypTen's
            configured provider (default TFP, triples from party 0) is used.
        timeout_s: Wall-clock limit for the whole run, in seconds.
        args: Extra positional arguments passed to `fn` after the rank.
        transport: "gloo" (torch.distributed) or "pipe" (`mpc.backends.crypten_comm` over OS
            pipes: one exchange per opening; see the module docstring).

    Returns:
        The return values of `fn`, indexed by rank.

    Raises:
        PartyTimeout: Not every process finished in `timeout_s`; all were killed.
        PartyFailed: A process exited without a result, or raised an exception that could not
            be sent back (its type, message and traceback are in the message and cause).
        Exception: The exception a party raised, re-raised as is, with the party's traceback
            attached as `__cause__` (a `RemoteTraceback`). Every other process is killed.
        ValueError: `world_size` < 1, `world_size` == 1 with `ttp`, `timeout_s` <= 0, or an
            unknown `transport`.
    """
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if ttp and world_size < 2:
        # CrypTen 0.4.1's TTP mis-routes messages with one party (its server crashes and the
        # party gets wrong triples), with or without our CSPRNG patch.
        raise ValueError("CrypTen's TTP provider needs world_size >= 2")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    ctx = mp.get_context("spawn")
    port = _free_port()
    ranks = list(range(world_size)) + ([world_size] if ttp else [])
    processes: dict[int, mp.process.BaseProcess] = {}
    conns: dict[int, Connection] = {}
    mesh = pipe_mesh(len(ranks)) if transport == "pipe" else None
    try:
        for rank in ranks:
            receiver, sender = ctx.Pipe(duplex=False)
            target_fn = None if rank == world_size else fn
            pipes = mesh[rank] if mesh is not None else None
            proc = ctx.Process(
                target=_child_main,
                args=(rank, world_size, port, ttp, target_fn, args, sender, pipes, timeout_s),
                name=f"mpc-party-{rank}" if target_fn else "mpc-ttp",
                daemon=True,
            )
            proc.start()
            sender.close()
            processes[rank], conns[rank] = proc, receiver
        for ends in mesh or ():  # the children hold their own copies: a dead one reads as EOF
            for end in ends.values():
                end.close()
        results = _collect(processes, conns, world_size, time.monotonic() + timeout_s)
        return [results[rank] for rank in range(world_size)]
    finally:
        _reap(list(processes.values()))
        for conn in conns.values():
            conn.close()


def _collect(
    processes: dict[int, mp.process.BaseProcess],
    conns: dict[int, Connection],
    world_size: int,
    deadline: float,
) -> dict[int, Any]:
    """Wait for every outcome; raise on the first failure or at the deadline."""
    results: dict[int, Any] = {}
    pending = dict(conns)
    while pending:
        parties_done = all(rank in results for rank in range(world_size))
        if parties_done:  # only the TTP is left: it exits once party 0 has uninitialized
            deadline = min(deadline, time.monotonic() + _TTP_EXIT_GRACE_S)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if parties_done:
                return results  # a TTP slow to exit does not fail the run; it is reaped
            late = sorted(rank for rank in pending if rank < world_size)
            raise PartyTimeout(f"parties {late} did not finish in time; all processes killed")
        sentinels = {processes[rank].sentinel: rank for rank in pending}
        ready = wait([*pending.values(), *sentinels], timeout=remaining)
        for obj in ready:
            rank = sentinels.get(obj) if isinstance(obj, int) else _rank_of(pending, obj)
            if rank is None or rank not in pending:
                continue
            conn = pending.pop(rank)
            who = "the TTP server" if rank == world_size else f"party {rank}"
            try:
                data = conn.recv_bytes()  # the child sends before it exits
            except EOFError:
                processes[rank].join(_KILL_GRACE_S)
                code = processes[rank].exitcode
                raise PartyFailed(
                    f"{who} exited with code {code} without a result", rank=rank
                ) from None
            status, payload = pickle.loads(data)  # noqa: S301 -- from our own child process
            if status == "error":
                _raise_failure(rank, who, payload)
            if rank < world_size:
                results[rank] = payload
    return results


def _rank_of(pending: dict[int, Connection], conn: object) -> int | None:
    for rank, candidate in pending.items():
        if candidate is conn:
            return rank
    return None
