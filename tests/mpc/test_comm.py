"""`mpc.comm` transports and wire encodings, and CrypTen over `crypten_comm.TransportCommunicator`.

In-process tests use `LocalTransport` with one thread per rank. CrypTen itself keeps its
communicator, PRSS generators and TTP client in process globals, so two parties cannot share a
process: the end-to-end test spawns 2 parties + the TTP as processes joined by `PipeTransport`
(raw bytes over OS pipes), with no torch.distributed anywhere. The party functions are
module-level so that the spawn start method can pickle them.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import pickle
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np
import pytest
import torch
from torch.distributed import ReduceOp

from mpc.backends import crypten_comm
from mpc.backends.crypten_comm import CommunicatorBusy, TransportCommunicator
from mpc.comm import (
    CommFailure,
    LocalTransport,
    MalformedMessage,
    PeerDisconnected,
    PeerTimeout,
    PipeTransport,
    TransportClosed,
    UnencodableObject,
    decode_object,
    decode_tensors,
    encode_object,
    encode_tensors,
    local_transports,
    pipe_mesh,
)
from mpc.errors import MPCError

FIXED_POINT_ATOL = 1e-3  # CrypTen's 16 fractional bits, one truncation
MATMUL_ATOL = 5e-3
SHORT_TIMEOUT_S = 0.3
DEADLINE_SLACK_S = 2.0  # a timed-out recv must return within timeout + this
RUN_TIMEOUT_S = 60.0

X = torch.tensor([1.5, -2.0, 3.25, 0.0, -7.5])
Y = torch.tensor([2.0, 4.0, -1.0, 5.5, -0.25])
A = torch.linspace(-2.0, 2.0, 12).reshape(3, 4)
B = torch.linspace(1.0, -1.5, 8).reshape(4, 2)


# ---- tensor encoding ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tensor",
    [
        torch.tensor([-(2**63), -1, 0, 1, 2**63 - 1], dtype=torch.int64),
        torch.arange(24, dtype=torch.int64).reshape(2, 3, 4),
        torch.tensor([1.5, -0.0, math.inf, -math.inf, math.nan], dtype=torch.float32),
        torch.tensor([[True, False], [False, True]]),
        torch.tensor([0, 255], dtype=torch.uint8),
        torch.tensor([-128, 127], dtype=torch.int8),
        torch.tensor([-(2**15), 2**15 - 1], dtype=torch.int16),
        torch.tensor([-(2**31), 2**31 - 1], dtype=torch.int32),
        torch.tensor([1.0, 2.5], dtype=torch.float16),
        torch.tensor([1.0, -3.5], dtype=torch.bfloat16),
        torch.tensor([1.0 / 3.0], dtype=torch.float64),
        torch.tensor([1 + 2j], dtype=torch.complex64),
        torch.tensor(7, dtype=torch.int64),  # 0-dim
        torch.zeros(0, 3, dtype=torch.int64),  # empty
        torch.arange(12, dtype=torch.int64).reshape(3, 4).t(),  # non-contiguous
    ],
    ids=lambda t: f"{t.dtype}-{tuple(t.shape)}",
)
def test_tensor_encoding_round_trips(tensor: torch.Tensor) -> None:
    (out,) = decode_tensors(encode_tensors([tensor]))
    assert out.dtype == tensor.dtype and out.shape == tensor.shape
    assert torch.equal(
        out.view(-1).view(torch.uint8), tensor.contiguous().view(-1).view(torch.uint8)
    )
    out.fill_(0)  # a fresh, writable tensor (np.frombuffer alone would be read-only)


def test_tensor_encoding_is_little_endian_raw_bytes_with_a_header() -> None:
    payload = encode_tensors([torch.tensor([1, 2], dtype=torch.int64)])
    assert payload.startswith(b"SIT1")
    assert payload.endswith((1).to_bytes(8, "little") + (2).to_bytes(8, "little"))
    assert b"\x80" not in payload[:2]  # not a pickle (protocol >= 2 starts with 0x80)


def test_several_tensors_in_one_message() -> None:
    tensors = [torch.ones(2, dtype=torch.int64), torch.zeros(3, 1), torch.tensor(True)]
    out = decode_tensors(encode_tensors(tensors))
    assert len(out) == 3 and all(torch.equal(a, b) for a, b in zip(out, tensors, strict=True))


def test_a_prefix_shares_the_encoding_copy() -> None:
    tensors = [torch.arange(6).reshape(2, 3), torch.tensor([0.5])]
    assert encode_tensors(tensors, prefix=b"OP\0\0\0\0\0\0") == b"OP" + bytes(6) + encode_tensors(
        tensors
    )


def test_shared_decoding_uses_an_owned_buffer_in_place_and_copies_otherwise() -> None:
    tensors = [torch.arange(4, dtype=torch.int64), torch.tensor([True, False, True])]
    payload = encode_tensors(tensors + [torch.arange(3, dtype=torch.int64)])
    owned = bytearray(payload)
    shared = decode_tensors(memoryview(owned), share=True)
    address = np.frombuffer(owned, dtype=np.uint8).ctypes.data
    first = shared[0].data_ptr() - address
    assert 0 <= first < len(owned)  # the int64 data is used where it lies (8-byte aligned)
    # after the 3-byte bool tensor the next int64 data is misaligned: that one is copied
    assert not 0 <= shared[2].data_ptr() - address < len(owned)
    assert all(torch.equal(a, b) for a, b in zip(shared, decode_tensors(payload), strict=True))
    # bytes are read-only: even with share=True the tensors are fresh, writable copies
    for tensor in decode_tensors(payload, share=True):
        tensor.zero_()
    assert decode_tensors(payload)[0].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: b"XXXX" + p[4:],  # bad magic
        lambda p: p[:-1],  # truncated data
        lambda p: p + b"\x00",  # trailing byte
        lambda p: p[:8] + bytes([99]) + p[9:],  # unknown dtype code
        lambda p: p[:5],  # truncated header
    ],
    ids=["magic", "truncated", "trailing", "dtype", "header"],
)
def test_malformed_tensor_messages_are_refused(mutate: Callable[[bytes], bytes]) -> None:
    payload = encode_tensors([torch.arange(4, dtype=torch.int64)])
    with pytest.raises(MalformedMessage):
        decode_tensors(mutate(payload))


def test_hostile_bool_bytes_and_huge_dims_are_refused() -> None:
    bad_bool = bytearray(encode_tensors([torch.tensor([True, False])]))
    bad_bool[-1] = 2
    with pytest.raises(MalformedMessage, match="bool"):
        decode_tensors(bytes(bad_bool))
    huge = bytearray(encode_tensors([torch.zeros(0, 1, dtype=torch.int64)]))
    huge[-8:] = (2**62).to_bytes(8, "little")  # 0 x 2^62 elements: 0 bytes, absurd shape
    with pytest.raises(MalformedMessage, match="dimension"):
        decode_tensors(bytes(huge))


def test_unsupported_tensor_dtype_is_refused() -> None:
    with pytest.raises(UnencodableObject):
        encode_tensors([torch.zeros(2, dtype=torch.uint16)])


# ---- control-object encoding ----------------------------------------------------------------


def test_ttp_request_round_trips() -> None:
    message = {
        "function": "additive",
        "device": None,
        "args": (torch.Size([3, 4]), torch.Size([4, 2]), "matmul"),
        "kwargs": {"stride": [1, 1], "scale": 0.5, "flag": True, "odd": math.inf},
    }
    out = decode_object(encode_object(message))
    assert out == message
    assert type(out["args"]) is tuple and type(out["args"][0]) is torch.Size  # type: ignore[index]


@pytest.mark.parametrize(
    "obj", ["terminate", -1, None, torch.Size([2, 3]), torch.device("cpu"), torch.int64, [1, [2]]]
)
def test_small_control_objects_round_trip(obj: object) -> None:
    assert decode_object(encode_object(obj)) == obj


@pytest.mark.parametrize(
    "obj",
    [
        torch.zeros(2),
        torch.nn.Linear(2, 2),
        b"bytes",
        {1: "int key"},
        {"nested": {"set"}},
        object(),
        pytest.param(__import__("numpy").int64(3), id="numpy-int"),
    ],
    ids=lambda o: type(o).__name__,
)
def test_objects_outside_the_whitelist_are_refused(obj: object) -> None:
    with pytest.raises(UnencodableObject):
        encode_object(obj)


@pytest.mark.parametrize(
    "payload",
    [
        pickle.dumps({"a": 1}),
        b'{"a": 1}',  # untagged object
        b'{"$class": "os.system"}',
        b"NaN",
        b'{"$size": [-1]}',
        b"\xff\xfe",
    ],
)
def test_malformed_control_objects_are_refused(payload: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode_object(payload)


# ---- transports -----------------------------------------------------------------------------


def test_local_transport_matches_by_tag_and_counts() -> None:
    t0, t1 = local_transports(2)
    t0.send(1, "b", b"second")
    t0.send(1, "a", b"first")
    t0.send(1, "a", b"again")
    assert t1.recv(0, "a", 1.0) == b"first"
    assert t1.recv(0, "b", 1.0) == b"second"
    assert t1.recv(0, "a", 1.0) == b"again"
    t1.send(0, "r", b"xy")
    assert t0.recv(1, "r", 1.0) == b"xy"
    assert t0.stats.bytes_sent == 16 and t0.stats.messages_sent == 3
    assert t0.stats.bytes_received == 2 and t0.stats.rounds == 1
    assert t1.stats.bytes_received == 16 and t1.stats.rounds == 1


def test_recv_from_a_silent_peer_times_out_naming_it() -> None:
    transports = local_transports(3)
    start = time.monotonic()
    with pytest.raises(PeerTimeout) as info:
        transports[0].recv(2, "never", SHORT_TIMEOUT_S)
    elapsed = time.monotonic() - start
    assert SHORT_TIMEOUT_S <= elapsed < SHORT_TIMEOUT_S + DEADLINE_SLACK_S
    assert info.value.rank == 2 and "rank 2" in str(info.value)
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, MPCError)


def test_closed_peer_is_reported_after_its_messages() -> None:
    t0, t1 = local_transports(2)
    t1.send(0, "x", b"last words")
    t1.close()
    assert t0.recv(1, "x", 1.0) == b"last words"
    with pytest.raises(PeerDisconnected):
        t0.recv(1, "x", 5.0)
    with pytest.raises(TransportClosed):
        t1.send(0, "x", b"")
    with pytest.raises(PeerDisconnected):
        t0.send(1, "x", b"to nobody")


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda t: t.send(0, "t", b""), ValueError),  # to itself
        (lambda t: t.send(5, "t", b""), ValueError),
        (lambda t: t.send(1, "", b""), ValueError),
        (lambda t: t.send(1, "t", "str"), TypeError),
        (lambda t: t.recv(1, "t", 0.0), ValueError),
        (lambda t: t.recv(1, "t", math.inf), ValueError),
    ],
)
def test_transport_arguments_are_checked(
    call: Callable[[LocalTransport], object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        call(local_transports(2)[0])


def test_pipe_transport_in_one_process() -> None:
    ends = pipe_mesh(2)
    t0, t1 = PipeTransport(0, 2, ends[0]), PipeTransport(1, 2, ends[1])
    big = bytes(range(256)) * 4096  # 1 MiB: larger than a pipe buffer, both ways at once
    t0.send(1, "big", big)
    t1.send(0, "big", big)
    assert t1.recv(0, "big", 5.0) == big and t0.recv(1, "big", 5.0) == big
    with pytest.raises(PeerTimeout):
        t0.recv(1, "none", SHORT_TIMEOUT_S)
    t1.send(0, "bye", b"!")
    t1.close()
    assert t0.recv(1, "bye", 5.0) == b"!"
    start = time.monotonic()
    with pytest.raises(PeerDisconnected):
        t0.recv(1, "more", 30.0)  # end-of-file, not the deadline
    assert time.monotonic() - start < DEADLINE_SLACK_S
    t0.close()


def test_pipe_transport_moves_large_and_empty_messages_both_ways() -> None:
    ends = pipe_mesh(2)
    t0, t1 = PipeTransport(0, 2, ends[0]), PipeTransport(1, 2, ends[1])
    try:
        big = np.random.default_rng(0).integers(0, 256, 24 << 20, dtype=np.uint8).tobytes()
        for tag in ("a", "b"):  # 24 MiB each way at once, twice, then an empty message
            t0.send(1, tag, big)
            t1.send(0, tag, big[::-1])
        t0.send(1, "empty", b"")
        for tag in ("a", "b"):
            assert t1.recv(0, tag, 30.0) == big
            received = t0.recv(1, tag, 30.0)
            assert received == big[::-1]
            received[:4] = b"mine"  # the receiver owns a writable buffer
        assert len(t1.recv(0, "empty", 5.0)) == 0
        assert t0.stats.bytes_sent == t1.stats.bytes_received == 2 * len(big)
    finally:
        t0.close()
        t1.close()


# ---- the communicator in-process (threads, no CrypTen init) ---------------------------------


def _run_ranks(
    world_size: int, fn: Callable[[TransportCommunicator], Any], **kwargs: Any
) -> list[Any]:
    transports = local_transports(world_size)
    results: list[Any] = [None] * world_size
    errors: list[BaseException] = []

    def body(rank: int) -> None:
        try:
            comm = TransportCommunicator(transports[rank], timeout_s=5.0, **kwargs)
            results[rank] = fn(comm)
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(r,)) for r in range(world_size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30.0)
    if errors:
        raise errors[0]
    return results


def test_collectives_over_local_transport() -> None:
    def fn(comm: TransportCommunicator) -> dict[str, Any]:
        r = comm.get_rank()
        mine = torch.tensor([r + 1, 10 * (r + 1)], dtype=torch.int64)
        out: dict[str, Any] = {
            "sum": comm.all_reduce(mine),
            "xor": comm.all_reduce(mine, op=ReduceOp.BXOR),
            "batched": comm.all_reduce([mine, mine * 2], batched=True),
            "reduce": comm.reduce(mine, 1),
            "gather": comm.gather(mine, 0),
            "all_gather": comm.all_gather(mine),
            "bcast": comm.broadcast(mine.clone(), 2),
            "scatter": comm.scatter([torch.full((2,), i) for i in range(3)], 0, size=(2,)),
            "obj": comm.broadcast_obj({"size": torch.Size([2])} if r == 1 else None, 1),
        }
        comm.barrier()
        seed = torch.zeros(2, dtype=torch.int64)
        req = comm.irecv(seed, src=(r - 1) % 3)
        comm.isend(torch.tensor([r, r], dtype=torch.int64), (r + 1) % 3).wait()
        req.wait()
        out["ring"] = seed
        out["stats"] = comm.get_communication_stats()
        return out

    res = _run_ranks(3, fn)
    expect_sum = torch.tensor([6, 60])
    for r, out in enumerate(res):
        assert torch.equal(out["sum"], expect_sum)
        assert torch.equal(out["xor"], torch.tensor([1 ^ 2 ^ 3, 10 ^ 20 ^ 30]))
        assert torch.equal(out["batched"][1], 2 * expect_sum)
        assert torch.equal(out["bcast"], torch.tensor([3, 30]))
        assert torch.equal(out["scatter"], torch.full((2,), r))
        assert out["obj"] == {"size": torch.Size([2])}
        assert torch.equal(out["ring"], torch.full((2,), (r - 1) % 3))
        assert torch.equal(out["all_gather"][2], torch.tensor([3, 30]))
        assert out["stats"]["rounds"] == 12 and out["stats"]["bytes"] > 0
    assert torch.equal(res[1]["reduce"], expect_sum) and res[0]["reduce"] is None
    assert [t[0].item() for t in res[0]["gather"]] == [1, 2, 3] and res[1]["gather"] == [None]


def test_out_of_step_parties_are_detected() -> None:
    def fn(comm: TransportCommunicator) -> None:
        if comm.get_rank() == 0:
            comm.send(torch.zeros(1), 1)
        else:
            comm.recv_obj(0)

    with pytest.raises(MalformedMessage, match="out of step"):
        _run_ranks(2, fn)


def test_wrong_shape_is_detected() -> None:
    def fn(comm: TransportCommunicator) -> None:
        if comm.get_rank() == 0:
            comm.send(torch.zeros(3, dtype=torch.int64), 1)
        else:
            comm.recv(torch.zeros(2, dtype=torch.int64), 0)

    with pytest.raises(MalformedMessage, match="shape"):
        _run_ranks(2, fn)


def test_a_stalled_peer_aborts_a_collective() -> None:
    def fn(comm: TransportCommunicator) -> None:
        if comm.get_rank() == 0:
            comm.timeout_s = SHORT_TIMEOUT_S
            comm.all_reduce(torch.zeros(1, dtype=torch.int64))

    with pytest.raises(PeerTimeout) as info:
        _run_ranks(2, fn)
    assert info.value.rank == 1


def test_ttp_layout_needs_two_parties_and_the_ttp() -> None:
    with pytest.raises(ValueError, match="TTP"):
        TransportCommunicator(local_transports(2)[0], init_ttp=True)
    comm = TransportCommunicator(local_transports(3)[2], init_ttp=True)
    assert (comm.get_world_size(), comm.get_ttp_rank(), comm.get_rank()) == (2, 2, 2)
    assert comm.ttp_group.ranks == (0, 1, 2) and comm.ttp_comm_group.ranks == (0, 2)
    assert comm.main_group.ranks == (0, 1)
    with pytest.raises(ValueError, match="not in group"):
        comm.all_reduce(torch.zeros(1))  # the TTP is not a party


def test_install_refuses_while_crypten_is_initialized(monkeypatch: pytest.MonkeyPatch) -> None:
    from mpc.backends.crypten import load

    comm = load().communicator
    monkeypatch.setattr(comm, "is_initialized", lambda: True)
    with pytest.raises(CommunicatorBusy):
        crypten_comm.install(local_transports(1)[0])
    assert not crypten_comm.installed()


# ---- CrypTen end to end: 2 parties + TTP, spawn processes over PipeTransport ----------------


def _party_compute(crypten: Any, rank: int) -> dict[str, Any]:
    x = crypten.cryptensor(X, src=0)
    y = crypten.cryptensor(Y, src=1)
    a = crypten.cryptensor(A, src=0)
    b = crypten.cryptensor(B, src=1)
    return {
        "mul": (x * y).get_plain_text(),
        "matmul": a.matmul(b).get_plain_text(),
        "lt": (x < y).get_plain_text(),
        "revealed_to_0": x.get_plain_text(dst=0),  # a reduce to one party
    }


def _child(
    rank: int,
    n_parties: int,
    conns: Mapping[int, Connection],
    out: Connection,
    die_rank: int | None = None,
) -> None:
    try:
        torch.set_num_threads(1)
        import torch.distributed as dist

        from mpc.backends.crypten import load
        from mpc.prg import AESCTRGenerator

        crypten = load()
        crypten.cfg.mpc.provider = "TTP"
        transport = PipeTransport(rank, n_parties + 1, conns)
        crypten_comm.install(transport, timeout_s=30.0)
        result: dict[str, Any] = {}
        if rank == n_parties:
            crypten.mpc.provider.ttp_provider.TTPServer()  # returns on party 0's "terminate"
        else:
            crypten.init()
            if rank == die_rank:
                os._exit(3)  # a party that dies mid-session, without a word
            comm = crypten.communicator.get()
            result = _party_compute(crypten, rank)
            ttp_client = crypten.mpc.provider.ttp_provider.TTPClient.get()
            result["communicator"] = type(comm).__name__
            result["ttp_generator"] = type(ttp_client.generator) is AESCTRGenerator
            result["prss_generators"] = all(
                type(g) is AESCTRGenerator
                for by_device in crypten.generators.values()
                for g in by_device.values()
            )
            result["comm_stats"] = {
                k: v for k, v in comm.get_communication_stats().items() if k != "transport"
            }
            crypten.uninit()
        result["dist_initialized"] = dist.is_available() and dist.is_initialized()
        transport.close()  # flushes party 0's "terminate" before the process exits
        result["transport"] = transport.stats
        out.send_bytes(pickle.dumps(("ok", result)))
    except BaseException:  # noqa: BLE001 -- reported to the test process
        out.send_bytes(pickle.dumps(("error", traceback.format_exc())))
    finally:
        out.close()


def _run_crypten_over_pipes(
    n_parties: int, die_rank: int | None = None
) -> dict[int, tuple[str, Any]]:
    """Each rank's outcome: ("ok", result), ("error", traceback) or ("died", exit code)."""
    ctx = mp.get_context("spawn")
    world = n_parties + 1
    mesh = pipe_mesh(world)
    procs, results_conns = [], []
    try:
        for rank in range(world):
            receiver, sender = ctx.Pipe(duplex=False)
            args = (rank, n_parties, mesh[rank], sender, die_rank)
            proc = ctx.Process(target=_child, args=args)
            proc.daemon = True
            proc.start()
            sender.close()
            procs.append(proc)
            results_conns.append(receiver)
        for ends in mesh:  # the children hold their own copies now
            for conn in ends.values():
                conn.close()
        outcomes: dict[int, tuple[str, Any]] = {}
        deadline = time.monotonic() + RUN_TIMEOUT_S
        pending = dict(enumerate(results_conns))
        while pending:
            ready = wait(list(pending.values()), timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError(f"ranks {sorted(pending)} did not finish")
            for rank, conn in list(pending.items()):
                if conn in ready:
                    try:
                        outcome = pickle.loads(conn.recv_bytes())  # noqa: S301 -- own child
                    except EOFError:
                        procs[rank].join(5.0)
                        outcome = ("died", procs[rank].exitcode)
                    outcomes[rank] = outcome
                    del pending[rank]
        return outcomes
    finally:
        for proc in procs:
            proc.join(5.0)
            if proc.is_alive():
                proc.kill()
                proc.join()


@pytest.fixture(scope="module")
def two_parties_and_ttp() -> list[dict[str, Any]]:
    outcomes = _run_crypten_over_pipes(2)
    for rank, (status, payload) in sorted(outcomes.items()):
        assert status == "ok", f"rank {rank}: {status}\n{payload}"
    return [outcomes[rank][1] for rank in sorted(outcomes)]


def test_crypten_computes_correctly_over_the_transport(
    two_parties_and_ttp: list[dict[str, Any]],
) -> None:
    for party in two_parties_and_ttp[:2]:
        torch.testing.assert_close(party["mul"], X * Y, atol=FIXED_POINT_ATOL, rtol=0)
        torch.testing.assert_close(party["matmul"], A @ B, atol=MATMUL_ATOL, rtol=0)
        assert torch.equal(party["lt"], (X < Y).float())
    party0, party1 = two_parties_and_ttp[:2]
    torch.testing.assert_close(party0["revealed_to_0"], X, atol=FIXED_POINT_ATOL, rtol=0)
    assert party1["revealed_to_0"] is None


def test_no_torch_distributed_and_csprng_everywhere(
    two_parties_and_ttp: list[dict[str, Any]],
) -> None:
    parties, ttp = two_parties_and_ttp[:2], two_parties_and_ttp[2]
    assert not ttp["dist_initialized"]
    for party in parties:
        assert not party["dist_initialized"]
        assert party["communicator"] == "TransportCommunicator"
        assert party["ttp_generator"] and party["prss_generators"]


def test_bytes_and_rounds_are_counted(two_parties_and_ttp: list[dict[str, Any]]) -> None:
    for rank, info in enumerate(two_parties_and_ttp):
        stats = info["transport"]
        assert stats.bytes_sent > 0 and stats.bytes_received > 0 and stats.rounds > 0, rank
    party0, party1, ttp = two_parties_and_ttp
    for party in (party0, party1):
        assert party["comm_stats"]["rounds"] > 0 and party["comm_stats"]["bytes"] > 0
    # The TTP receives: k requests from party 0, 2 barrier tokens, "terminate"; it sends: 2
    # seeds, 2 barrier tokens, and per request a size (send_obj) and a tensor (broadcast to 0).
    ttp_stats = ttp["transport"]
    requests = ttp_stats.messages_received - 3
    assert requests > 0 and ttp_stats.messages_sent == 2 * requests + 4
    sent = sum(info["transport"].bytes_sent for info in two_parties_and_ttp)
    received = sum(info["transport"].bytes_received for info in two_parties_and_ttp)
    assert sent == received  # nothing was lost or left unread


def test_comm_failures_share_one_root() -> None:
    for cls in (PeerTimeout, PeerDisconnected, TransportClosed, MalformedMessage):
        assert issubclass(cls, CommFailure) and issubclass(cls, MPCError)


def test_a_dead_party_aborts_the_others_promptly() -> None:
    start = time.monotonic()
    outcomes = _run_crypten_over_pipes(2, die_rank=1)
    elapsed = time.monotonic() - start
    assert outcomes[1] == ("died", 3)
    for rank in (0, 2):  # party 0, and the TTP once party 0 is gone
        status, text = outcomes[rank]
        assert status == "error" and "PeerDisconnected" in text, (rank, text)
    assert elapsed < RUN_TIMEOUT_S / 2  # end-of-file, not the 30 s / 600 s deadlines
