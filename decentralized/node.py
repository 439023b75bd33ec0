"""A mesh node: gRPC server (Mesh, Shard, grpc.health.v1), gossip, and its compute thread.

`Node.start()` loads the spans, measures throughput, binds the port and starts gossip;
`Node.stop(grace_s)` marks the node NOT_SERVING and draining (new work gets UNAVAILABLE so the
client fails over), waits for in-flight RPCs up to `grace_s`, then closes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc.aio
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import Counter

from decentralized.classify_service import HEALTH_NAME as CLASSIFY_HEALTH
from decentralized.classify_service import ClassifyServicer, add_classify_servicer
from decentralized.he_service import add_he_servicer
from decentralized.identity import Identity, MeshCA
from decentralized.membership import MAX_RECORDS_PER_REPLY, Gossip, PeerTable
from decentralized.metrics import NodeMetrics
from decentralized.mpc_classifiers import HostedClassifier
from decentralized.mpc_service import MPCHost, MPCSessionServicer
from decentralized.service import MeshServicer, ShardServicer
from decentralized.shards import ShardHost
from decentralized.transport import Credentials, add_port, new_server
from decentralized.v1 import common_pb2, mesh_pb2, mesh_pb2_grpc, mpc_pb2_grpc, shard_pb2_grpc

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSettings:
    """Everything a node needs to run; built from TOML + flags by `secure_infer.config`."""

    name: str  # human-readable name, also the CN of the node certificate
    listen: str  # "host:port" to bind; port 0 picks a free one
    advertise: str = ""  # "host:port" peers dial; defaults to listen with the bound port
    seeds: tuple[str, ...] = ()  # addresses of nodes to join through
    spans: tuple[tuple[str, int, int], ...] = ()  # (model, start, end) served
    device: str = "auto"  # "auto" (cuda when present, else cpu), "cpu", "cuda", "cuda:N"
    heartbeat_s: float = 2.0  # seconds between gossip rounds
    dead_after_s: float = 8.0  # a peer whose newest record is older than this is dead
    max_sessions: int = 64  # KV-cache sessions held at once
    session_idle_s: float = 300.0  # idle seconds after which a session's cache is dropped
    max_tokens: int = 2048  # tokens per request / per session
    mpc_models: tuple[str, ...] = ()  # models run whole as an MPC party or dealer (MPCSession)
    mpc_max_sessions: int = 2  # MPC session ranks (one process each) at once
    classifiers: tuple[tuple[str, str], ...] = ()  # (name, directory) plaintext classifiers
    fides_verifiers: tuple[tuple[str, str], ...] = ()  # (name, Fides directory) in enclaves
    mpc_classifiers: tuple[tuple[str, str], ...] = ()  # (name, MPCViT checkpoint directory)
    enclave: str = "auto"  # "auto" (configfs-tsm if present, else SIMULATED), "simulated", ...
    fides_protocol: str = "distribution"  # or "verdicts": enclaves never reveal distributions
    fides_sealed: tuple[tuple[str, str], ...] = ()  # (name, owner CN): verifiers sent sealed
    # (verifier, client CN): a verifier listed here answers only those clients (docs/fides.md)
    fides_clients: tuple[tuple[str, str], ...] = ()
    version: str = "0"  # software version advertised in the record


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here")
    return torch.device(device)


def _total(counter: Counter) -> int:
    """Sum of a labelled Prometheus counter over all its label values."""
    return int(
        sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))
    )


class Node:
    def __init__(self, settings: NodeSettings, identity: Identity, creds: Credentials) -> None:
        self.settings = settings
        self.identity = identity
        self.creds = creds
        self.metrics = NodeMetrics()
        self.device = pick_device(settings.device)
        identity.bind(creds)  # its records carry the certificate that proves its name
        self.peers = PeerTable(
            identity.node_id, dead_after_s=settings.dead_after_s, ca=MeshCA.of(creds)
        )
        self.draining = False
        self.load = 0
        self.started = time.time()
        self.layers_per_s = 0.0
        self.address = settings.advertise or settings.listen
        self.host: ShardHost | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute")
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._gossip: Gossip | None = None
        self._gossip_task: asyncio.Task[None] | None = None
        self._peer_gauge_task: asyncio.Task[None] | None = None
        self._mpc: MPCHost | None = None
        self._classify: ClassifyServicer | None = None

    # -- records -------------------------------------------------------------------------
    def record(self) -> common_pb2.NodeRecord:
        host = self.host
        spans = [
            common_pb2.Span(model=m, start=s, end=e, weight_digest=d)
            for m, s, e, d in (host.spans() if host else [])
        ]
        return common_pb2.NodeRecord(
            address=self.address,
            name=self.settings.name,
            spans=spans,
            device=str(self.device),
            load=self.load,
            layers_per_s=self.layers_per_s,
            timestamp_ms=int(time.time() * 1000),
            version=self.settings.version,
            insecure_dev=self.creds.insecure_dev,
            mpc_models=[*self.settings.mpc_models, *(n for n, _ in self.settings.mpc_classifiers)],
            max_tokens=self.settings.max_tokens if spans else 0,
        )

    def signed_record(self) -> common_pb2.SignedNodeRecord:
        return self.identity.sign(self.record())

    def peer_list(self) -> mesh_pb2.PeerList:
        """This node's record and up to `MAX_RECORDS_PER_REPLY - 1` live peers' (what a
        receiving node reads of one reply)."""
        peers = self.peers.shareable(MAX_RECORDS_PER_REPLY - 1)
        return mesh_pb2.PeerList(records=[self.signed_record()] + [p.signed for p in peers])

    def info(self) -> mesh_pb2.NodeInfo:
        return mesh_pb2.NodeInfo(
            record=self.signed_record(),
            uptime_s=time.time() - self.started,
            peers=len(self.peers.live()),
            requests_total=_total(self.metrics.requests),
            errors_total=_total(self.metrics.errors),
            sessions=self.host.session_count if self.host else 0,
            draining=self.draining,
        )

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> int:
        """Load spans, bind, start gossip. Returns the bound port."""
        loop = asyncio.get_running_loop()
        s = self.settings
        self.host = await loop.run_in_executor(
            self._executor,
            lambda: ShardHost(
                list(s.spans),
                self.device,
                max_sessions=s.max_sessions,
                session_idle_s=s.session_idle_s,
                max_tokens=s.max_tokens,
            ),
        )
        assert self.host is not None  # noqa: S101
        self.layers_per_s = await loop.run_in_executor(self._executor, self.host.benchmark)
        server = new_server()
        mesh_pb2_grpc.add_MeshServicer_to_server(MeshServicer(self, self.peer_list), server)
        shard_pb2_grpc.add_ShardServicer_to_server(
            ShardServicer(self, self.host, self._executor), server
        )
        he_health = add_he_servicer(server, self)  # HE heads: docs/he.md
        services = ["", "decentralized.v1.Mesh", "decentralized.v1.Shard", he_health]
        if s.classifiers or s.fides_verifiers or s.fides_sealed:  # docs/fides.md
            self._classify = await loop.run_in_executor(
                self._executor,
                lambda: add_classify_servicer(
                    server,
                    self,
                    s.classifiers,
                    s.fides_verifiers,
                    s.enclave,
                    s.fides_protocol,
                    s.fides_sealed,
                    s.fides_clients,
                ),
            )
            services.append(CLASSIFY_HEALTH)
        if s.mpc_models or s.mpc_classifiers:
            hosted = await loop.run_in_executor(
                self._executor,
                lambda: tuple(
                    HostedClassifier.load(name, Path(directory) / "model")
                    for name, directory in s.mpc_classifiers
                ),
            )
            self._mpc = MPCHost(
                s.name,
                s.mpc_models,
                self.creds,
                s.listen.rsplit(":", 1)[0],
                advertise_host=s.advertise.rsplit(":", 1)[0] if s.advertise else "",
                max_sessions=s.mpc_max_sessions,
                classifiers=hosted,
            )
            mpc_pb2_grpc.add_MPCSessionServicer_to_server(
                MPCSessionServicer(self._mpc, self.metrics), server
            )
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        self._health = health_servicer
        port = self._bind(server)
        if not s.advertise:
            self.address = f"{s.listen.rsplit(':', 1)[0]}:{port}"
        await server.start()
        self._server = server
        for service in services:
            await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._gossip = Gossip(
            self.peers,
            self.signed_record,
            list(s.seeds),
            self.creds,
            heartbeat_s=s.heartbeat_s,
            own_address=self.address,
        )
        await self._gossip.round()  # join through the seeds before announcing readiness
        self._gossip_task = asyncio.create_task(self._gossip.run())
        self._peer_gauge_task = asyncio.create_task(self._update_gauges())
        logger.info(
            "node %s (%s) serving on %s, device %s, spans %s, %.0f layers/s",
            s.name,
            self.identity.node_id[:8],
            self.address,
            self.device,
            [f"{m}[{a},{b})" for m, a, b in s.spans],
            self.layers_per_s,
        )
        return port

    def _bind(self, server: grpc.aio.Server) -> int:
        """Bind the listen address; OSError (one line for the CLI) when that fails, after
        closing what `start` opened so far."""
        listen = self.settings.listen
        try:
            port = add_port(server, listen, self.creds)
        except RuntimeError:  # grpc: "Failed to bind to address ..." (port 0 in older gRPC)
            port = 0
        if port == 0:
            if self._mpc is not None:
                self._mpc.close()
            if self._classify is not None:
                self._classify.close()
            self._executor.shutdown(wait=False, cancel_futures=True)
            raise OSError(
                f"could not bind {listen}: the port is in use or the address is not available "
                "here (pick another --listen port)"
            )
        return port

    async def _update_gauges(self) -> None:
        while True:
            self.metrics.peers.set(len(self.peers.live()))
            await asyncio.sleep(1.0)

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    async def stop(self, grace_s: float = 10.0) -> None:
        """Drain: refuse new work, finish in-flight RPCs (up to grace_s), then close."""
        if self._server is None:
            return
        self.draining = True
        logger.info("draining: finishing in-flight work (up to %.0f s)", grace_s)
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        deadline = time.monotonic() + grace_s
        while self.load > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for task in (self._gossip_task, self._peer_gauge_task):
            if task is not None:
                task.cancel()
        if self._gossip is not None:
            await self._gossip.close()
        await self._server.stop(max(0.0, deadline - time.monotonic()))
        if self._mpc is not None:
            self._mpc.close()
        if self._classify is not None:
            self._classify.close()
        self._executor.shutdown(wait=True, cancel_futures=False)
        self._server = None
        logger.info("stopped")
