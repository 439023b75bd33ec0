"""A rank that stays silent after another rank failed is cancelled and held to account (a
dispute), not waited on until the session's deadline (30 minutes by default)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from decentralized.errors import MeshError, PeerUnavailable
from decentralized.mpc_client import _assess, _gather
from decentralized.v1 import mpc_pb2, mpc_pb2_grpc


class _Scripted(mpc_pb2_grpc.MPCSessionServicer):
    """Run answers by the session id: "fail-..." aborts, "hang-..." never answers (until
    cancelled), "ok-..." returns after a short computation."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def Run(  # noqa: N802 - the proto's RPC name
        self, request_iterator: Iterator[mpc_pb2.RunChunk], context: grpc.ServicerContext
    ) -> mpc_pb2.RunResult:
        first = next(request_iterator)
        if first.session_id.startswith("fail"):
            context.abort(grpc.StatusCode.ABORTED, "rank 0 on a: rank 1 sent nothing")
        if first.session_id.startswith("hang"):
            while context.is_active():
                time.sleep(0.05)
            self.cancelled.set()
            return mpc_pb2.RunResult()
        time.sleep(0.2)
        return mpc_pb2.RunResult(rounds=7)


@pytest.fixture
def stub() -> Iterator[tuple[mpc_pb2_grpc.MPCSessionStub, _Scripted]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = _Scripted()
    mpc_pb2_grpc.add_MPCSessionServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield mpc_pb2_grpc.MPCSessionStub(channel), servicer
    channel.close()
    server.stop(0)


def _call(stub: mpc_pb2_grpc.MPCSessionStub, sid: str) -> grpc.Future:
    return stub.Run.future(iter([mpc_pb2.RunChunk(session_id=sid)]), timeout=600)


def test_a_rank_still_running_after_another_failed_is_cancelled_and_blamed(
    stub: tuple[mpc_pb2_grpc.MPCSessionStub, _Scripted],
) -> None:
    s, servicer = stub
    calls = [_call(s, "fail-0"), _call(s, "hang-1"), _call(s, "ok-2")]
    failures: dict[int, MeshError] = {}
    t0 = time.monotonic()
    results = _gather(calls, ["party 0 a", "party 1 b", "dealer c"], 1.0, failures)
    took = time.monotonic() - t0
    assert 1.0 <= took < 10.0  # the grace, not the 600 s deadline
    assert set(failures) == {0, 1}
    assert isinstance(failures[1], PeerUnavailable) and "silent" in str(failures[1])
    assert results[2].rounds == 7
    assert servicer.cancelled.wait(5)  # the node saw its call end
    # party 0 failed at once and party 1 kept running: either party 0 deviates (it can keep
    # an honest peer busy while failing itself) or party 1 stalls. A dispute, not a ban.
    blame = _assess(failures)
    assert blame.ban == set() and blame.disputes == ((0, 1),) and blame.exclude == {0, 1}


def test_no_grace_is_applied_while_every_rank_is_working(
    stub: tuple[mpc_pb2_grpc.MPCSessionStub, _Scripted],
) -> None:
    s, _ = stub
    failures: dict[int, MeshError] = {}
    results = _gather([_call(s, f"ok-{i}") for i in range(3)], ["a", "b", "c"], 0.01, failures)
    assert not failures and [r.rounds for r in results] == [7, 7, 7]
