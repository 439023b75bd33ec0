"""Membership: the table of signed peer records, gossip by heartbeat, and failure detection.

Nodes start from seed addresses, `Join` them, and then every `heartbeat_s` re-sign their own
record and send it to every known peer (and to seeds they have not reached yet); each reply
carries the callee's peer list, so records spread by gossip. A peer is live while its newest
record is younger than `dead_after_s`; a peer this node fails to reach `suspect_after` times
in a row is dropped locally until a fresher record of it arrives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import grpc.aio

from decentralized.errors import PeerMisbehaved
from decentralized.identity import verify_record
from decentralized.transport import Credentials, aio_channel
from decentralized.v1 import common_pb2, mesh_pb2, mesh_pb2_grpc

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Peer:
    record: common_pb2.NodeRecord
    signed: common_pb2.SignedNodeRecord
    failures: int = 0  # consecutive failed heartbeats from this node to the peer


class PeerTable:
    """Verified records of other nodes, keyed by node id. Not thread-safe: one event loop."""

    def __init__(self, self_id: str, *, dead_after_s: float, suspect_after: int = 2) -> None:
        self.self_id = self_id
        self.dead_after_s = dead_after_s
        self.suspect_after = suspect_after
        self._peers: dict[str, Peer] = {}

    def update(self, signed: common_pb2.SignedNodeRecord) -> bool:
        """Verify and merge a record; True when it was new or newer. Raises PeerMisbehaved."""
        record = verify_record(signed)
        if record.node_id == self.self_id:
            return False
        known = self._peers.get(record.node_id)
        if known is not None and known.record.timestamp_ms >= record.timestamp_ms:
            return False
        if known is None:
            logger.info(
                "peer joined: %s (%s) at %s", record.name, record.node_id[:8], record.address
            )
        self._peers[record.node_id] = Peer(record=record, signed=signed)
        return True

    def merge(self, records: list[common_pb2.SignedNodeRecord]) -> None:
        for signed in records:
            try:
                self.update(signed)
            except PeerMisbehaved as exc:
                logger.warning("dropped an invalid peer record: %s", exc)

    def is_live(self, peer: Peer, now_ms: int | None = None) -> bool:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        fresh = now - peer.record.timestamp_ms < self.dead_after_s * 1000
        return fresh and peer.failures < self.suspect_after

    def live(self) -> list[Peer]:
        return [p for p in self._peers.values() if self.is_live(p)]

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

    def _stub(self, address: str) -> mesh_pb2_grpc.MeshStub:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = aio_channel(address, self.creds)
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
                if exc.code() == grpc.StatusCode.PERMISSION_DENIED
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
        self.table.merge(list(reply.records))
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

    async def run(self) -> None:
        while True:
            await self.round()
            await asyncio.sleep(self.heartbeat_s)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
