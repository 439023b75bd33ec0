from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from decentralized.identity import Identity, verify_record
from decentralized.membership import MAX_RECORDS_PER_REPLY, PeerTable
from decentralized.v1 import common_pb2


def _signed(
    ident: Identity, ts_ms: int, address: str = "127.0.0.1:1"
) -> common_pb2.SignedNodeRecord:
    return ident.sign(common_pb2.NodeRecord(address=address, name="p", timestamp_ms=ts_ms))


def test_newer_records_replace_older_ones(tmp_path: Path) -> None:
    me = Identity.load_or_create(tmp_path / "me")
    peer = Identity.load_or_create(tmp_path / "peer")
    table = PeerTable(me.node_id, dead_after_s=5, ca=None)
    now = int(time.time() * 1000)
    assert table.update(_signed(peer, now - 100, "127.0.0.1:1"))
    assert not table.update(_signed(peer, now - 200, "127.0.0.1:2"))  # stale: ignored
    assert table.update(_signed(peer, now, "127.0.0.1:3"))
    assert [p.record.address for p in table.live()] == ["127.0.0.1:3"]
    assert not table.update(_signed(me, now))  # own record never enters the table


def test_liveness_by_record_age_and_failures(tmp_path: Path) -> None:
    me = Identity.load_or_create(tmp_path / "me")
    peer = Identity.load_or_create(tmp_path / "peer")
    table = PeerTable(me.node_id, dead_after_s=5, suspect_after=2, ca=None)
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
    table = PeerTable(me.node_id, dead_after_s=5, ca=None)
    good = _signed(peer, int(time.time() * 1000))
    bad = common_pb2.SignedNodeRecord(record=good.record, signature=b"\0" * 64)
    table.merge([bad])
    assert table.all() == []
    table.merge([good])
    assert len(table.all()) == 1


def test_expire_forgets_long_dead_peers(tmp_path: Path) -> None:
    me = Identity.load_or_create(tmp_path / "me")
    peer = Identity.load_or_create(tmp_path / "peer")
    table = PeerTable(me.node_id, dead_after_s=1, ca=None)
    table.update(_signed(peer, int(time.time() * 1000) - 10_000))
    table.expire()
    assert table.all() == []


# -- bounds against a member that gossips records signed with keys it makes up -----------------


def _fresh(name: str, ts_ms: int | None = None) -> common_pb2.SignedNodeRecord:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    ts = int(time.time() * 1000) if ts_ms is None else ts_ms
    return Identity(Ed25519PrivateKey.generate()).sign(
        common_pb2.NodeRecord(address="127.0.0.1:1", name=name, timestamp_ms=ts)
    )


def _names(table: PeerTable) -> list[str]:
    return sorted(p.record.name for p in table.all())


def test_gossip_holds_a_few_records_per_name_and_never_evicts(tmp_path: Path) -> None:
    me = Identity.load_or_create(tmp_path / "me")
    table = PeerTable(me.node_id, dead_after_s=5, per_name=3, ca=None)
    assert table.merge([_fresh("evil") for _ in range(50)]) == 3
    assert table.merge([_fresh("EVIL.") for _ in range(5)]) == 0  # one name, spelled otherwise
    assert table.merge([_fresh("node-b")]) == 1
    assert _names(table) == ["evil", "evil", "evil", "node-b"]


def test_a_record_announced_by_its_node_evicts_gossiped_impostors(tmp_path: Path) -> None:
    me = Identity.load_or_create(tmp_path / "me")
    real = Identity.load_or_create(tmp_path / "real")
    table = PeerTable(me.node_id, dead_after_s=5, per_name=2, ca=None)
    table.merge([_fresh("node-b"), _fresh("node-b")])  # impostors got there first
    assert not table.merge([_signed_as(real, "node-b")])  # gossip of the real one: no room
    assert table.update(_signed_as(real, "node-b"))  # announced by node-b itself: evicts
    held = {p.record.node_id: p.direct for p in table.all()}
    assert held[real.node_id] is True and len(held) == 2
    assert table.merge([_fresh("node-b")]) == 0  # gossip never evicts
    # One certificate announcing many keys under its own name keeps `per_name` of them.
    for _ in range(5):
        assert table.update(_fresh("node-c"))
    assert _names(table).count("node-c") == 2


def test_table_size_is_capped_and_direct_records_still_enter(tmp_path: Path) -> None:
    me = Identity.load_or_create(tmp_path / "me")
    table = PeerTable(me.node_id, dead_after_s=5, max_peers=10, ca=None)
    assert table.merge([_fresh(f"ghost-{i}") for i in range(30)]) == 10
    assert table.merge([_fresh("late")]) == 0
    assert table.update(_fresh("node-b"))  # evicts a gossiped record
    assert len(table.all()) == 10 and "node-b" in _names(table)


def test_only_records_that_change_the_table_are_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from decentralized import membership

    calls: list[int] = []

    def counting(signed: common_pb2.SignedNodeRecord, *, ca: object) -> common_pb2.NodeRecord:
        calls.append(1)
        return verify_record(signed, ca=None)

    monkeypatch.setattr(membership, "verify_record", counting)
    me = Identity.load_or_create(tmp_path / "me")
    peer = Identity.load_or_create(tmp_path / "peer")
    table = PeerTable(me.node_id, dead_after_s=5, ca=None)
    now = int(time.time() * 1000)
    held = _signed(peer, now)
    table.merge([held])
    assert len(calls) == 1
    table.merge([held] * 5000 + [_signed(peer, now - 1)] * 10)  # held or older: parsed only
    assert len(calls) == 1
    newer = _signed(peer, now + 1, "127.0.0.1:9")
    forged = common_pb2.SignedNodeRecord(record=newer.record, signature=b"\0" * 64)
    table.merge([forged])  # would change the table: verified, refused
    assert len(calls) == 2
    assert [p.record.address for p in table.all()] == ["127.0.0.1:1"]
    table.merge([newer])
    assert [p.record.address for p in table.all()] == ["127.0.0.1:9"]


def test_a_reply_is_read_up_to_its_limit(tmp_path: Path) -> None:
    me = Identity.load_or_create(tmp_path / "me")
    table = PeerTable(me.node_id, dead_after_s=5, ca=None)
    records = [_fresh(f"n{i}") for i in range(MAX_RECORDS_PER_REPLY + 20)]
    assert table.merge(records) == MAX_RECORDS_PER_REPLY


def test_signatures_are_checked_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from decentralized import membership

    threads: set[int] = set()

    def recording(signed: common_pb2.SignedNodeRecord, *, ca: object) -> common_pb2.NodeRecord:
        threads.add(threading.get_ident())
        return verify_record(signed, ca=None)

    monkeypatch.setattr(membership, "verify_record", recording)
    me = Identity.load_or_create(tmp_path / "me")
    table = PeerTable(me.node_id, dead_after_s=5, ca=None)

    async def run() -> int:
        return await table.merge_async([_fresh("a"), _fresh("b")])

    assert asyncio.run(run()) == 2
    assert threads and threading.get_ident() not in threads


def test_peer_lists_share_announced_records_first(tmp_path: Path) -> None:
    me = Identity.load_or_create(tmp_path / "me")
    table = PeerTable(me.node_id, dead_after_s=5, ca=None)
    now = int(time.time() * 1000)
    table.merge([_fresh(f"g{i}", now) for i in range(5)])
    table.update(_fresh("direct", now - 1000))
    shared = table.shareable(3)
    assert [p.record.name for p in shared][0] == "direct" and len(shared) == 3
    assert len(table.shareable(100)) == 6


def _signed_as(ident: Identity, name: str) -> common_pb2.SignedNodeRecord:
    record = common_pb2.NodeRecord(
        address="127.0.0.1:2", name=name, timestamp_ms=int(time.time() * 1000)
    )
    return ident.sign(record)
