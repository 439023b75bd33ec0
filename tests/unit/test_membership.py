from __future__ import annotations

import time
from pathlib import Path

from decentralized.identity import Identity
from decentralized.membership import PeerTable
from decentralized.v1 import common_pb2


def _signed(
    ident: Identity, ts_ms: int, address: str = "127.0.0.1:1"
) -> common_pb2.SignedNodeRecord:
    return ident.sign(common_pb2.NodeRecord(address=address, name="p", timestamp_ms=ts_ms))


def test_newer_records_replace_older_ones(tmp_path: Path) -> None:
    me = Identity.load_or_create(tmp_path / "me")
    peer = Identity.load_or_create(tmp_path / "peer")
    table = PeerTable(me.node_id, dead_after_s=5)
    now = int(time.time() * 1000)
    assert table.update(_signed(peer, now - 100, "127.0.0.1:1"))
    assert not table.update(_signed(peer, now - 200, "127.0.0.1:2"))  # stale: ignored
    assert table.update(_signed(peer, now, "127.0.0.1:3"))
    assert [p.record.address for p in table.live()] == ["127.0.0.1:3"]
    assert not table.update(_signed(me, now))  # own record never enters the table


def test_liveness_by_record_age_and_failures(tmp_path: Path) -> None:
    me = Identity.load_or_create(tmp_path / "me")
    peer = Identity.load_or_create(tmp_path / "peer")
    table = PeerTable(me.node_id, dead_after_s=5, suspect_after=2)
    now = int(time.time() * 1000)
    table.update(_signed(peer, now - 6_000))
    assert table.live() == []  # record older than dead_after_s
    table.update(_signed(peer, now))
    assert len(table.live()) == 1
    table.mark_failure(peer.node_id)
    assert len(table.live()) == 1
    table.mark_failure(peer.node_id)
    assert table.live() == []  # unreachable twice in a row
    table.mark_success(peer.node_id)
    assert len(table.live()) == 1


def test_invalid_records_are_dropped_not_raised(tmp_path: Path) -> None:
    me = Identity.load_or_create(tmp_path / "me")
    peer = Identity.load_or_create(tmp_path / "peer")
    table = PeerTable(me.node_id, dead_after_s=5)
    good = _signed(peer, int(time.time() * 1000))
    bad = common_pb2.SignedNodeRecord(record=good.record, signature=b"\0" * 64)
    table.merge([bad])
    assert table.all() == []
    table.merge([good])
    assert len(table.all()) == 1


def test_expire_forgets_long_dead_peers(tmp_path: Path) -> None:
    me = Identity.load_or_create(tmp_path / "me")
    peer = Identity.load_or_create(tmp_path / "peer")
    table = PeerTable(me.node_id, dead_after_s=1)
    table.update(_signed(peer, int(time.time() * 1000) - 10_000))
    table.expire()
    assert table.all() == []
