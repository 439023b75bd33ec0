"""MPC session transport over mTLS gRPC: ordering, fragments, deadlines, authentication."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from decentralized.errors import InvalidRequest
from decentralized.mpc_relay import RelayTransport
from decentralized.transport import Credentials
from decentralized.v1 import mpc_pb2, mpc_pb2_grpc
from mpc.comm import PeerDisconnected, PeerTimeout
from secure_infer import certs

pytestmark = pytest.mark.grpc
SESSION = "session-0123456789ab"
NAMES = {0: "party-0", 1: "party-1", 2: "dealer"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    certs.init_ca(d)
    for name in [*NAMES.values(), "outsider"]:
        certs.issue(d, name, role="node")
    return d


def _creds(pki: Path, name: str) -> Credentials:
    ca, key, cert = certs.material(pki, name).read()
    return Credentials(root_ca=ca, private_key=key, certificate=cert)


@pytest.fixture
def relays(pki: Path) -> Iterator[list[RelayTransport]]:
    parties = [
        RelayTransport(SESSION, r, 3, _creds(pki, NAMES[r]), expect_names=NAMES, send_timeout_s=5)
        for r in range(3)
    ]
    for p in parties:
        p.connect({q.rank: q.address for q in parties})
    yield parties
    for p in parties:
        p.close()


def test_messages_arrive_in_order_per_tag_and_are_counted(relays: list[RelayTransport]) -> None:
    a, b, dealer = relays
    for i in range(5):
        a.send(1, "p2p", bytes([i]) * (i + 1))
    dealer.send(1, "triples", b"T")
    assert b.recv(2, "triples", timeout_s=5) == b"T"
    assert [b.recv(0, "p2p", timeout_s=5) for _ in range(5)] == [
        bytes([i]) * (i + 1) for i in range(5)
    ]
    assert a.stats.bytes_sent == 15
    assert a.stats.messages_sent == 5
    assert b.stats.bytes_received == 16
    assert b.stats.messages_received == 6


def test_large_payloads_are_fragmented_and_joined(relays: list[RelayTransport]) -> None:
    payload = os.urandom(10 * 1024 * 1024 + 7)
    relays[0].send(2, "big", payload)
    assert relays[2].recv(0, "big", timeout_s=10) == payload
    relays[0].send(2, "empty", b"")
    assert relays[2].recv(0, "empty", timeout_s=5) == b""


def test_concurrent_senders(relays: list[RelayTransport]) -> None:
    a, b, dealer = relays
    threads = [
        threading.Thread(target=lambda s=s: [s.send(1, "x", b"m") for _ in range(20)])
        for s in (a, dealer)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [b.recv(0, "x", 5) for _ in range(20)] == [b"m"] * 20
    assert [b.recv(2, "x", 5) for _ in range(20)] == [b"m"] * 20


def test_a_silent_party_aborts_within_the_deadline(relays: list[RelayTransport]) -> None:
    with pytest.raises(PeerTimeout, match="rank 2 sent nothing on 'late' within 0.3 s"):
        relays[0].recv(2, "late", timeout_s=0.3)


def test_a_dead_party_is_an_error_not_a_hang(relays: list[RelayTransport]) -> None:
    relays[1].close()
    with pytest.raises(PeerDisconnected, match="rank 1"):
        relays[0].send(1, "p2p", b"hello")


def test_replayed_and_misaddressed_messages_are_refused(
    relays: list[RelayTransport], pki: Path
) -> None:
    from decentralized.transport import sync_channel

    relays[0].send(1, "p2p", b"first")
    with sync_channel(relays[1].address, _creds(pki, "party-0"), "party-1") as channel:
        stub = mpc_pb2_grpc.MPCRelayStub(channel)
        replay = mpc_pb2.MPCMessage(
            session_id=SESSION, src=0, dst=1, tag="p2p", payload=b"x", seq=0
        )
        with pytest.raises(grpc.RpcError) as info:
            stub.Deliver(iter([replay]), timeout=5)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "lost or replayed" in info.value.details()
        other = mpc_pb2.MPCMessage(session_id="x" * 20, src=0, dst=1, tag="p2p", seq=1)
        with pytest.raises(grpc.RpcError) as info:
            stub.Deliver(iter([other]), timeout=5)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        wrong = mpc_pb2.MPCMessage(session_id=SESSION, src=0, dst=2, tag="p2p", seq=1)
        with pytest.raises(grpc.RpcError) as info:
            stub.Deliver(iter([wrong]), timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert relays[1].recv(0, "p2p", 5) == b"first"


def test_only_the_expected_node_speaks_for_a_rank(relays: list[RelayTransport], pki: Path) -> None:
    from decentralized.transport import sync_channel

    msg = mpc_pb2.MPCMessage(session_id=SESSION, src=0, dst=1, tag="p2p", payload=b"evil", seq=0)
    with sync_channel(relays[1].address, _creds(pki, "outsider"), "party-1") as channel:
        with pytest.raises(grpc.RpcError) as info:
            mpc_pb2_grpc.MPCRelayStub(channel).Deliver(iter([msg]), timeout=5)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with grpc.insecure_channel(relays[1].address) as channel:  # no TLS: refused at handshake
        with pytest.raises(grpc.RpcError) as info:
            mpc_pb2_grpc.MPCRelayStub(channel).Deliver(iter([msg]), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(PeerTimeout):
        relays[1].recv(0, "p2p", 0.2)  # nothing was accepted


def test_invalid_construction() -> None:
    with pytest.raises(InvalidRequest, match="session_id"):
        RelayTransport("short", 0, 2, Credentials(insecure_dev=True))
    with pytest.raises(InvalidRequest, match="rank 3 outside"):
        RelayTransport(SESSION, 3, 2, Credentials(insecure_dev=True))


class _Recorder:
    """A loopback TCP proxy that forwards to `target` and keeps every byte it forwards: the
    packet capture of the test below, without needing capture privileges."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self._server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._server.getsockname()[1]}"
        self.captured = bytearray()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self.captured += data
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self._server.close()


def test_the_wire_carries_no_plaintext(pki: Path) -> None:
    """Party 0 reaches party 1 through a recording proxy: the payload arrives intact, and the
    captured stream is a TLS session (handshake record first) without the payload's bytes."""
    parties = [
        RelayTransport(SESSION, r, 3, _creds(pki, NAMES[r]), expect_names=NAMES, send_timeout_s=5)
        for r in range(3)
    ]
    recorder = _Recorder(parties[1].address)
    try:
        addresses = {q.rank: q.address for q in parties}
        parties[0].connect({**addresses, 1: recorder.address})
        for p in parties[1:]:
            p.connect(addresses)
        secret = b"SECRET-SHARE-0123456789" * 4096  # 94 KB, compressible and easy to spot
        parties[0].send(1, "p2p", secret)
        assert parties[1].recv(0, "p2p", timeout_s=5) == secret
        with recorder._lock:
            wire = bytes(recorder.captured)
        assert len(wire) > len(secret)  # the payload did cross the proxy
        assert wire[0] == 0x16 and wire[1] == 0x03  # a TLS handshake record opens the stream
        assert b"SECRET-SHARE" not in wire
    finally:
        recorder.close()
        for p in parties:
            p.close()


def test_the_mailbox_address_is_the_advertised_host(pki: Path) -> None:
    """A node bound to 0.0.0.0 (or behind a NAT) is dialled at its --advertise host: its
    session mailboxes must be announced there too, not at the address they bound."""
    relay = RelayTransport(
        SESSION, 0, 3, _creds(pki, NAMES[0]), listen="0.0.0.0:0", advertise_host="127.0.0.1"
    )
    try:
        host, port = relay.address.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        with socket.create_connection((host, int(port)), timeout=5):
            pass  # reachable there
    finally:
        relay.close()


def test_a_peer_cannot_fill_a_mailbox_with_unread_messages(
    relays: list[RelayTransport], pki: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each message is bounded, and so is what a rank holds unread from all its peers and
    tags together: a peer sending on tag after tag that nobody reads is refused."""
    from decentralized import mpc_relay
    from decentralized.transport import sync_channel

    monkeypatch.setattr(mpc_relay, "MAX_BUFFERED_MESSAGES", 8)
    monkeypatch.setattr(mpc_relay, "MAX_BUFFERED_BYTES", 1000)
    with sync_channel(relays[1].address, _creds(pki, "party-0"), "party-1") as channel:
        stub = mpc_pb2_grpc.MPCRelayStub(channel)

        def flood(tags: int, payload: bytes) -> grpc.RpcError:  # one call, many tags
            messages = (
                mpc_pb2.MPCMessage(
                    session_id=SESSION, src=0, dst=1, tag=f"t{i}", payload=payload, seq=0
                )
                for i in range(tags)
            )
            with pytest.raises(grpc.RpcError) as info:
                stub.Deliver(messages, timeout=5)
            return info.value

        refused = flood(100, b"")
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "mailbox holds unread" in refused.details()
        assert relays[1].recv(0, "t0", 5) == b""  # what was accepted is still there to read
    # reading frees room; bytes are bounded too
    for i in range(1, 8):
        relays[1].recv(0, f"t{i}", 5)
    with sync_channel(relays[1].address, _creds(pki, "party-0"), "party-1") as channel:
        stub = mpc_pb2_grpc.MPCRelayStub(channel)
        big = mpc_pb2.MPCMessage(session_id=SESSION, src=0, dst=1, tag="b", payload=b"x" * 600)
        assert stub.Deliver(iter([big]), timeout=5).accepted == 1
        big.seq = 1
        with pytest.raises(grpc.RpcError) as info:
            stub.Deliver(iter([big]), timeout=5)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
