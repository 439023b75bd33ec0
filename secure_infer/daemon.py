"""The node daemon: `secure-infer node run`. Joins the mesh and serves its spans until signalled.

SIGTERM and SIGINT drain the node: it stops taking new work (clients fail over), finishes what
is in flight for up to `grace_s`, and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Any

import torch
from prometheus_client import start_http_server

from decentralized.identity import Identity
from decentralized.node import Node
from decentralized.transport import node_names
from secure_infer.certs import CertError, verify_leaf
from secure_infer.client import credentials
from secure_infer.config import NodeConfig

logger = logging.getLogger(__name__)


def _check_certificate(config: NodeConfig) -> None:
    """Refuse to start with a certificate that peers would reject: wrong CA, expired, wrong
    key, a client certificate, or a CN other than the node's name (records are bound to it)."""
    assert config.tls is not None  # noqa: S101 - caller checks
    names = node_names(verify_leaf(config.tls))
    if not names:
        raise CertError(f"{config.tls.cert} is not a node certificate (no serverAuth usage)")
    if config.settings.name not in names:
        raise CertError(
            f"node name {config.settings.name!r} must equal the CN of {config.tls.cert} "
            f"({names}): peers accept a node's record only from the certificate with its name"
        )


async def serve(
    config: NodeConfig, *, grace_s: float = 10.0, ready_file: str | None = None
) -> None:
    if config.insecure_dev:
        logger.warning(
            "INSECURE DEVELOPMENT MODE: plaintext gRPC on loopback, no peer authentication"
        )
    threads = int(os.environ.get("SECURE_INFER_THREADS", "0"))
    if threads > 0:
        torch.set_num_threads(threads)
    if config.tls is not None:
        _check_certificate(config)
    identity = Identity.load_or_create(config.data_dir / "identity.key")
    creds = credentials(config.tls, config.insecure_dev)
    node = Node(config.settings, identity, creds)
    # the metrics port is bound before the node starts, so that a busy or bad one fails fast
    # (before the spans are loaded) and leaves no gRPC server behind
    metrics = _start_metrics(config.metrics, node) if config.metrics else None
    try:
        port = await node.start()
        try:
            if ready_file:
                tmp = f"{ready_file}.tmp"
                with open(tmp, "w") as f:
                    f.write(f"{node.address}\n{identity.node_id}\n{port}\n")
                os.replace(tmp, ready_file)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
            logger.info("signal received: shutting down")
        finally:
            await node.stop(grace_s)
    finally:
        if metrics is not None:
            metrics.shutdown()


def _start_metrics(address: str, node: Node) -> Any:
    """Serve the node's Prometheus registry on "host:port" (checked by `config.load`)."""
    host, port = address.rsplit(":", 1)
    try:
        server, _ = start_http_server(
            int(port), addr=host.strip("[]"), registry=node.metrics.registry
        )
    except OSError as exc:
        raise OSError(f"could not serve metrics on {address}: {exc.strerror or exc}") from None
    logger.info("metrics on http://%s/metrics", address)
    return server
