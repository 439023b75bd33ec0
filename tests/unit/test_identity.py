from __future__ import annotations

import time
from pathlib import Path

import pytest

from decentralized.errors import PeerMisbehaved
from decentralized.identity import Identity, node_id_of, reserved_node_name, verify_record
from decentralized.v1 import common_pb2


def _record(**kw: object) -> common_pb2.NodeRecord:
    return common_pb2.NodeRecord(
        address="127.0.0.1:1",
        name="n",
        timestamp_ms=int(time.time() * 1000),
        spans=[common_pb2.Span(model="m", start=0, end=3, weight_digest="ab")],
        **kw,
    )


def test_key_is_created_once_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "identity.key"
    a = Identity.load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    b = Identity.load_or_create(path)
    assert a.node_id == b.node_id == node_id_of(a.public_key)
    assert len(a.node_id) == 32


def test_signed_record_verifies(tmp_path: Path) -> None:
    ident = Identity.load_or_create(tmp_path / "k")
    rec = verify_record(ident.sign(_record()))
    assert rec.node_id == ident.node_id
    assert rec.spans[0].end == 3


def test_tampered_record_is_rejected(tmp_path: Path) -> None:
    ident = Identity.load_or_create(tmp_path / "k")
    signed = ident.sign(_record())
    rec = common_pb2.NodeRecord()
    rec.ParseFromString(signed.record)
    rec.address = "10.0.0.1:1"
    signed.record = rec.SerializeToString(deterministic=True)
    with pytest.raises(PeerMisbehaved, match="bad signature"):
        verify_record(signed)


def test_record_claiming_another_id_is_rejected(tmp_path: Path) -> None:
    mallory = Identity.load_or_create(tmp_path / "m")
    victim = Identity.load_or_create(tmp_path / "v")
    rec = _record()
    rec.node_id = victim.node_id
    rec.public_key = mallory.public_key
    data = rec.SerializeToString(deterministic=True)
    signed = common_pb2.SignedNodeRecord(record=data, signature=mallory._key.sign(data))
    with pytest.raises(PeerMisbehaved, match="does not match its public key"):
        verify_record(signed)


def test_future_and_garbage_records_are_rejected(tmp_path: Path) -> None:
    ident = Identity.load_or_create(tmp_path / "k")
    future = _record()
    future.timestamp_ms = int(time.time() * 1000) + 3_600_000
    with pytest.raises(PeerMisbehaved, match="future"):
        verify_record(ident.sign(future))
    with pytest.raises(PeerMisbehaved):
        verify_record(common_pb2.SignedNodeRecord(record=b"\xff\xff\xff", signature=b"x"))
    empty = _record()
    empty.spans[0].end = 0
    with pytest.raises(PeerMisbehaved, match="empty span"):
        verify_record(ident.sign(empty))


@pytest.mark.parametrize("name", ["localhost", "localhost.", "a.LOCALHOST", "127.0.0.1", "::1"])
def test_a_record_named_like_a_default_san_is_refused(tmp_path: Path, name: str) -> None:
    # Any node certificate carries localhost / 127.0.0.1 / ::1: the name would bind nothing.
    ident = Identity.load_or_create(tmp_path / "k")
    with pytest.raises(PeerMisbehaved, match="is refused.*(loopback host name|IP address)"):
        verify_record(ident.sign(_named(name)))
    assert reserved_node_name("node-1") is None and reserved_node_name("localhost-1") is None


def _named(name: str) -> common_pb2.NodeRecord:
    rec = _record()
    rec.name = name
    return rec
