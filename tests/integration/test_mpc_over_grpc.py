"""CrypTen with 2 parties + the dealer (TTP) as separate processes, every byte over the
mesh's mTLS gRPC relay: no torch.distributed, no gloo, no pickle on the wire."""

from __future__ import annotations

import multiprocessing as mp
import pickle
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
import torch

from secure_infer import certs

pytestmark = [pytest.mark.grpc, pytest.mark.multiparty]
NAMES = {0: "party-0", 1: "party-1", 2: "dealer"}
SESSION = "grpc-session-0123456789"
X = torch.tensor([1.5, -2.0, 3.25, 0.0, -7.5, 4.0])
Y = torch.tensor([2.0, 4.0, -1.0, 5.5, -0.25, 1.0])
A = torch.linspace(-2.0, 2.0, 12).reshape(3, 4)
B = torch.linspace(1.0, -1.5, 8).reshape(4, 2)
LOGITS = torch.tensor([[2.0, -1.0, 0.5, 3.0], [-4.0, 0.0, 8.0, 1.0]])


def _child(rank: int, pki: str, parent: Connection) -> None:
    try:
        torch.set_num_threads(1)
        import torch.distributed as dist

        from decentralized.mpc_relay import RelayTransport
        from decentralized.transport import Credentials
        from mpc.approx import gelu, softmax
        from mpc.backends import crypten_comm
        from mpc.backends.crypten import load

        ca, key, cert = certs.material(Path(pki), NAMES[rank]).read()
        creds = Credentials(root_ca=ca, private_key=key, certificate=cert)
        transport = RelayTransport(SESSION, rank, 3, creds, expect_names=NAMES)
        parent.send_bytes(transport.address.encode())
        peers = {
            int(k): v for k, v in (p.split("=") for p in parent.recv_bytes().decode().split(","))
        }
        transport.connect(peers)
        crypten = load()
        crypten.cfg.mpc.provider = "TTP"
        crypten_comm.install(transport, timeout_s=30.0)
        result: dict[str, Any] = {}
        if rank == 2:
            crypten.mpc.provider.ttp_provider.TTPServer()
        else:
            crypten.init()
            x = crypten.cryptensor(X, src=0)
            y = crypten.cryptensor(Y, src=1)
            result["mul"] = (x * y).get_plain_text()
            result["matmul"] = (
                crypten.cryptensor(A, src=0).matmul(crypten.cryptensor(B, src=1)).get_plain_text()
            )
            result["lt"] = (x < y).get_plain_text()
            result["gelu"] = gelu(x).get_plain_text()
            # Dealer preprocessing over the relay: plan on placeholders, one batch, then online.
            from mpc.backends import crypten_dealer as dealer

            def step(u: Any, v: Any) -> Any:
                return gelu(u * v).get_plain_text()

            zeros = torch.zeros_like(X)
            if rank == 0:
                with dealer.record_plan(crypten) as plan:
                    step(crypten.cryptensor(zeros, src=0), crypten.cryptensor(zeros, src=1))
                client = crypten.mpc.provider.ttp_provider.TTPClient.get()
                before = client.online_requests
                dealer.prefetch(crypten, plan)
            else:
                step(crypten.cryptensor(zeros, src=0), crypten.cryptensor(zeros, src=1))
            result["gelu_xy"] = step(x, y)
            if rank == 0:
                result["online_dealer_requests"] = client.online_requests - before
            result["softmax"] = softmax(crypten.cryptensor(LOGITS, src=0), dim=-1).get_plain_text()
            crypten.uninit()
        result["dist_initialized"] = dist.is_available() and dist.is_initialized()
        transport.close()
        result["stats"] = transport.stats
        parent.send_bytes(pickle.dumps(("ok", result)))
    except BaseException:  # noqa: BLE001 - reported to the test process
        parent.send_bytes(pickle.dumps(("error", traceback.format_exc())))


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    pki = tmp_path_factory.mktemp("pki")
    certs.init_ca(pki)
    for name in NAMES.values():
        certs.issue(pki, name, role="node")
    ctx = mp.get_context("spawn")
    procs, conns = [], []
    for rank in range(3):
        mine, theirs = ctx.Pipe()
        proc = ctx.Process(target=_child, args=(rank, str(pki), theirs), daemon=True)
        proc.start()
        procs.append(proc)
        conns.append(mine)
    try:
        addresses = []
        for conn in conns:
            assert conn.poll(120), "a party did not start"
            addresses.append(conn.recv_bytes().decode())
        peer_map = ",".join(f"{r}={a}" for r, a in enumerate(addresses)).encode()
        for conn in conns:
            conn.send_bytes(peer_map)
        results = []
        for rank, conn in enumerate(conns):
            assert conn.poll(180), f"rank {rank} did not finish"
            status, payload = pickle.loads(conn.recv_bytes())  # noqa: S301 - our own child
            assert status == "ok", f"rank {rank}:\n{payload}"
            results.append(payload)
        return results
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


def test_results_are_correct(outcomes: list[dict[str, Any]]) -> None:
    from mpc.approx.gelu import MAX_ABS_ERROR as GELU_ERROR
    from mpc.approx.softmax import MAX_ABS_ERROR as SOFTMAX_ERROR

    for party in outcomes[:2]:
        torch.testing.assert_close(party["mul"], X * Y, atol=1e-3, rtol=0)
        torch.testing.assert_close(party["matmul"], A @ B, atol=5e-3, rtol=0)
        assert torch.equal(party["lt"], (X < Y).float())
        ref = torch.nn.functional.gelu(X)
        assert float((party["gelu"] - ref).abs().max()) <= GELU_ERROR
        ref_xy = torch.nn.functional.gelu(X * Y)
        assert float((party["gelu_xy"] - ref_xy).abs().max()) <= GELU_ERROR + 1e-3
        ref_sm = torch.softmax(LOGITS, dim=-1)
        assert float((party["softmax"] - ref_sm).abs().max()) <= SOFTMAX_ERROR


def test_prefetched_dealer_randomness_needs_no_online_round_trip(
    outcomes: list[dict[str, Any]],
) -> None:
    assert outcomes[0]["online_dealer_requests"] == 0


def test_every_byte_went_over_the_grpc_relay(outcomes: list[dict[str, Any]]) -> None:
    for rank, party in enumerate(outcomes):
        assert party["dist_initialized"] is False, rank
        assert party["stats"].bytes_sent > 0, rank
        assert party["stats"].messages_received > 0, rank
    sent = sum(p["stats"].bytes_sent for p in outcomes)
    received = sum(p["stats"].bytes_received for p in outcomes)
    assert sent == received
