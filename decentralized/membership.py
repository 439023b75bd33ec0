"""Membership: the table of signed peer records, gossip by heartbeat, and failure detection.

Nodes start from seed addresses, `Join` them, and then every `heartbeat_s` re-sign their own
record and send it to every known peer (and to seeds they have not reached yet); each reply
carries the callee's peer list, so records spread by gossip. A peer is live while its newest
record is younger than `dead_after_s`; a peer this node fails to reach `suspect_after` times
in a row is dropped locally until a fresher record of it arrives.

Names. On a TLS mesh a record enters a table only with its node's certificate from the mesh
CA, naming the record's node and vouching for its key (`identity.MeshCA`): a node cannot
gossip records under names it holds no certificate of.

Bounds. Any node the CA admitted can still answer a heartbeat with many records, copies, or
records under its own name signed by keys it makes up, so what one reply can cost is
bounded: a gossip reply is at most `MAX_GOSSIP_REPLY_BYTES` (the channel refuses more) and
only its first `MAX_RECORDS_PER_REPLY` records are looked at; a record that cannot change the
table (its node's newer or identical record is held, the table or the name's quota is full)
is dropped after a parse, before its signature is checked; signatures are checked off the
event loop. The table holds at most `MAX_PEERS` records and at most `RECORDS_PER_NAME` per
node name: a node signs its records with keys it chooses, but every record carries its
node's name, proved by the certificate it carries. A record announced by its own node
(`Join`/`Heartbeat`, whose caller's certificate the service checked against the record's
name) always finds room, evicting gossiped records first; a gossiped one never evicts.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from decentralized.errors import InvalidRequest, PeerMisbehaved
from decentralized.identity import MeshCA, verify_record
from decentralized.transport import Credentials, aio_channel
from decentralized.v1 import common_pb2, mesh_pb2, mesh_pb2_grpc

logger = logging.getLogger(__name__)

MAX_PEERS = 1024  # records held in a peer table
RECORDS_PER_NAME = 4  # records held per node name (certificate CN)
MAX_RECORDS_PER_REPLY = 256  # records sent in, and read from, one peer list
MAX_RECORD_BYTES = 16 * 1024  # a serialized node record; larger ones are dropped unread
MAX_GOSSIP_REPLY_BYTES = 4 * 1024 * 1024  # a heartbeat reply; the channel refuses more


def name_key(name: str) -> str:
    """The quota bucket of a node name (TLS host names compare case-insensitively)."""
    return name.strip().rstrip(".").lower()


def verify_announced(
    signed: common_pb2.SignedNodeRecord, ca: MeshCA | None
) -> common_pb2.NodeRecord:
    """Check the record a caller announces about itself (Join/Heartbeat): a bad one is a
    malformed request (InvalidRequest, INVALID_ARGUMENT), not a peer's bad answer."""
    try:
        return verify_record(signed, ca=ca)
    except PeerMisbehaved as exc:
        raise InvalidRequest(f"announced record refused: {exc}") from None


@dataclass(slots=True)
class Peer:
    record: common_pb2.NodeRecord
    signed: common_pb2.SignedNodeRecord
    failures: int = 0  # consecutive failed heartbeats from this node to the peer
    direct: bool = False  # announced by the node itself (Join/Heartbeat), not gossiped


class PeerTable:
    """Verified records of other nodes, keyed by node id. Not thread-safe: one event loop."""

    def __init__(
        self,
        self_id: str,
        *,
        dead_after_s: float,
        suspect_after: int = 2,
        max_peers: int = MAX_PEERS,
        per_name: int = RECORDS_PER_NAME,
        ca: MeshCA | None,
    ) -> None:
        self.self_id = self_id
        self.ca = ca  # whose certificates prove records' names (None: insecure-dev mesh)
        self.dead_after_s = dead_after_s
        self.suspect_after = suspect_after
        self.max_peers = max_peers
        self.per_name = per_name
        self._peers: dict[str, Peer] = {}
        self._by_name: dict[str, set[str]] = {}  # name_key -> node ids

    # -- admission ---------------------------------------------------------------------------
    def update(self, signed: common_pb2.SignedNodeRecord) -> bool:
        """Verify and merge a record its own node announced (Join/Heartbeat; the caller's
        certificate was checked against the record's name); True when it was new or newer.
        Raises PeerMisbehaved."""
        record = verify_record(signed, ca=self.ca)
        return self._admit(record, signed, direct=True)

    def merge(self, records: Iterable[common_pb2.SignedNodeRecord]) -> int:
        """Verify and merge gossiped records, dropping invalid ones; returns how many changed
        the table. Signatures are checked here, on the caller's thread: `merge_async` checks
        them off the event loop."""
        changed = 0
        for _, signed in self._candidates(records):
            try:
                verified = verify_record(signed, ca=self.ca)
            except PeerMisbehaved as exc:
                logger.warning("dropped an invalid peer record: %s", exc)
                continue
            changed += self._admit(verified, signed, direct=False)
        return changed

    async def merge_async(self, records: Iterable[common_pb2.SignedNodeRecord]) -> int:
        """`merge`, with the signatures checked in the loop's default executor."""
        candidates = self._candidates(records)
        if not candidates:
            return 0
        loop = asyncio.get_running_loop()
        signed = [s for _, s in candidates]
        results = await loop.run_in_executor(None, _verify_all, signed, self.ca)
        changed = 0
        for (_, one), result in zip(candidates, results, strict=True):
            if isinstance(result, PeerMisbehaved):
                logger.warning("dropped an invalid peer record: %s", result)
                continue
            changed += self._admit(result, one, direct=False)  # re-checked: time passed
        return changed

    def _candidates(
        self, records: Iterable[common_pb2.SignedNodeRecord]
    ) -> list[tuple[common_pb2.NodeRecord, common_pb2.SignedNodeRecord]]:
        """Gossiped records that could change the table, parsed but not yet verified.

        Cheap checks only (a parse, dictionary look-ups); what is dropped here could not have
        changed the table whatever its signature: a record of this node, one no newer than
        the record held for its node id, one of a new node when the table or its name's quota
        is full. At most `MAX_RECORDS_PER_REPLY` are read, and no more new nodes are taken
        than there is room for."""
        picked: dict[str, tuple[common_pb2.NodeRecord, common_pb2.SignedNodeRecord]] = {}
        new_per_name: dict[str, int] = {}
        new_total = 0
        for signed in itertools.islice(records, MAX_RECORDS_PER_REPLY):
            if len(signed.record) > MAX_RECORD_BYTES:
                continue
            record = common_pb2.NodeRecord()
            try:
                record.ParseFromString(signed.record)
            except DecodeError:
                logger.debug("dropped a peer record that does not parse")
                continue
            if record.node_id == self.self_id:
                continue
            known = self._peers.get(record.node_id)
            if known is not None and known.record.timestamp_ms >= record.timestamp_ms:
                continue  # held already, or older: nothing to verify
            earlier = picked.get(record.node_id)
            if earlier is not None:
                if earlier[0].timestamp_ms < record.timestamp_ms:
                    picked[record.node_id] = (record, signed)
                continue
            if known is None or name_key(known.record.name) != name_key(record.name):
                key = name_key(record.name)
                held = len(self._by_name.get(key, ()))
                if held + new_per_name.get(key, 0) >= self.per_name:
                    continue
                if known is None and len(self._peers) + new_total >= self.max_peers:
                    continue
                new_per_name[key] = new_per_name.get(key, 0) + 1
                new_total += known is None
            picked[record.node_id] = (record, signed)
        return list(picked.values())

    def _admit(
        self, record: common_pb2.NodeRecord, signed: common_pb2.SignedNodeRecord, *, direct: bool
    ) -> bool:
        """Insert a verified record if it is newer and there is room for it."""
        if record.node_id == self.self_id:
            return False
        known = self._peers.get(record.node_id)
        if known is not None and known.record.timestamp_ms >= record.timestamp_ms:
            return False
        key = name_key(record.name)
        same_name = known is not None and name_key(known.record.name) == key
        if not same_name and not self._make_room(key, record.node_id, direct=direct):
            logger.debug("no room for a record of %r (%s)", record.name, record.node_id[:8])
            return False
        if known is None:
            logger.info(
                "peer joined: %s (%s) at %s", record.name, record.node_id[:8], record.address
            )
        else:
            self._unindex(known)
        # Announced by itself once, still direct, as long as it keeps its name.
        kept = direct or (known is not None and known.direct and same_name)
        self._peers[record.node_id] = Peer(record=record, signed=signed, direct=kept)
        self._by_name.setdefault(key, set()).add(record.node_id)
        return True

    def _make_room(self, key: str, node_id: str, *, direct: bool) -> bool:
        """Whether a record under name `key` fits; a direct one evicts (gossiped first, then
        the oldest), a gossiped one never does."""
        ids = self._by_name.get(key, set()) - {node_id}
        if len(ids) >= self.per_name:
            if not direct:
                return False
            self._evict(min(ids, key=self._eviction_order))
        if node_id not in self._peers and len(self._peers) >= self.max_peers:
            gossiped = [i for i, p in self._peers.items() if not p.direct]
            if not direct or not gossiped:
                return False
            self._evict(min(gossiped, key=self._eviction_order))
        return True

    def _eviction_order(self, node_id: str) -> tuple[bool, int]:
        peer = self._peers[node_id]
        return (peer.direct, peer.record.timestamp_ms)

    def _evict(self, node_id: str) -> None:
        peer = self._peers.pop(node_id)
        self._unindex(peer)
        logger.info("peer record evicted: %s (%s)", peer.record.name, node_id[:8])

    def _unindex(self, peer: Peer) -> None:
        key = name_key(peer.record.name)
        ids = self._by_name.get(key)
        if ids is not None:
            ids.discard(peer.record.node_id)
            if not ids:
                del self._by_name[key]

    # -- queries -----------------------------------------------------------------------------
    def is_live(self, peer: Peer, now_ms: int | None = None) -> bool:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        fresh = now - peer.record.timestamp_ms < self.dead_after_s * 1000
        return fresh and peer.failures < self.suspect_after

    def live(self) -> list[Peer]:
        return [p for p in self._peers.values() if self.is_live(p)]

    def shareable(self, limit: int) -> list[Peer]:
        """Up to `limit` live peers for a peer list: records their own nodes announced to this
        one first, then the freshest."""
        live = self.live()
        if len(live) <= limit:
            return live
        live.sort(key=lambda p: (not p.direct, -p.record.timestamp_ms))
        return live[:limit]

    def all(self) -> list[Peer]:
        return list(self._peers.values())

    def mark_failure(self, node_id: str) -> None:
        peer = self._peers.get(node_id)
        if peer is not None:
            peer.failures += 1
            if peer.failures == self.suspect_after:
                logger.warning(
                    "peer %s (%s) is unreachable: marked dead", peer.record.name, node_id[:8]
                )

    def mark_success(self, node_id: str) -> None:
        peer = self._peers.get(node_id)
        if peer is not None:
            peer.failures = 0

    def expire(self) -> None:
        """Forget peers whose newest record is older than 3 x dead_after_s."""
        now = int(time.time() * 1000)
        for node_id, peer in list(self._peers.items()):
            if now - peer.record.timestamp_ms > 3 * self.dead_after_s * 1000:
                del self._peers[node_id]
                self._unindex(peer)


def _verify_all(
    records: list[common_pb2.SignedNodeRecord], ca: MeshCA | None
) -> list[common_pb2.NodeRecord | PeerMisbehaved]:
    out: list[common_pb2.NodeRecord | PeerMisbehaved] = []
    for signed in records:
        try:
            out.append(verify_record(signed, ca=ca))
        except PeerMisbehaved as exc:
            out.append(exc)
    return out


def gossip_channel(address: str, creds: Credentials) -> grpc.aio.Channel:
    """A channel for heartbeats: replies of at most `MAX_GOSSIP_REPLY_BYTES` (a peer list,
    not tensors)."""
    return aio_channel(address, creds, max_receive_bytes=MAX_GOSSIP_REPLY_BYTES)


class Gossip:
    """The heartbeat loop of one node."""

    def __init__(
        self,
        table: PeerTable,
        sign_own: Callable[[], common_pb2.SignedNodeRecord],
        seeds: list[str],
        creds: Credentials,
        *,
        heartbeat_s: float,
        own_address: str,
    ) -> None:
        self.table = table
        self.sign_own = sign_own
        self.seeds = [s for s in seeds if s != own_address]
        self.creds = creds
        self.heartbeat_s = heartbeat_s
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._oversized: set[str] = set()  # addresses that answered over-long peer lists

    def _stub(self, address: str) -> mesh_pb2_grpc.MeshStub:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = gossip_channel(address, self.creds)
        return mesh_pb2_grpc.MeshStub(channel)

    async def _beat(
        self, address: str, node_id: str | None, own: common_pb2.SignedNodeRecord
    ) -> None:
        """Send our record to one node; Join for a seed not met yet, Heartbeat after."""
        stub = self._stub(address)
        call = stub.Join if node_id is None else stub.Heartbeat
        try:
            reply = await call(mesh_pb2.JoinRequest(record=own), timeout=max(1.0, self.heartbeat_s))
        except grpc.aio.AioRpcError as exc:
            if node_id is not None:
                self.table.mark_failure(node_id)
            level = (
                logging.WARNING
                if exc.code()
                in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED)
                else logging.DEBUG
            )
            logger.log(
                level,
                "%s to %s failed: %s %s",
                "Join" if node_id is None else "Heartbeat",
                address,
                exc.code().name,
                exc.details(),
            )
            return
        if len(reply.records) > MAX_RECORDS_PER_REPLY and address not in self._oversized:
            self._oversized.add(address)  # said once per address while it is in use
            logger.warning(
                "%s answered %d records; only the first %d are read",
                address,
                len(reply.records),
                MAX_RECORDS_PER_REPLY,
            )
        await self.table.merge_async(reply.records[:MAX_RECORDS_PER_REPLY])
        if node_id is not None:
            self.table.mark_success(node_id)

    async def round(self) -> None:
        """One heartbeat round to every known peer and every seed not yet known."""
        own = self.sign_own()
        targets: dict[str, str | None] = {s: None for s in self.seeds}
        for peer in self.table.all():
            targets[peer.record.address] = peer.record.node_id
        await asyncio.gather(*(self._beat(a, n, own) for a, n in targets.items()))
        self.table.expire()
        await self._close_unused()

    async def _close_unused(self) -> None:
        """Close the channels of addresses no seed and no peer in the table uses any more."""
        used = set(self.seeds) | {p.record.address for p in self.table.all()}
        self._oversized &= used
        for address in [a for a in self._channels if a not in used]:
            await self._channels.pop(address).close()

    async def run(self) -> None:
        while True:
            await self.round()
            await asyncio.sleep(self.heartbeat_s)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
