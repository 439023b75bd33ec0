"""gRPC channels and server ports: mutual TLS by default, plaintext only on loopback.

Every channel between nodes, and between clients and nodes, is mTLS with certificates issued
by the mesh CA (`secure-infer certs`). Plaintext exists only behind an explicit
`insecure_dev=True` (`--insecure-dev`), and only for loopback addresses.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

import grpc
import grpc.aio
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # per gRPC message; larger tensors are streamed
STREAM_CHUNK_BYTES = 4 * 1024 * 1024  # tensor bytes per ForwardStream chunk
_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
_SERVER_OPTIONS = [
    *_OPTIONS,
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.so_reuseport", 0),
]


class InsecureNotAllowed(ValueError):
    """Plaintext was requested for an address that is not loopback."""


def common_names(cert: x509.Certificate) -> list[str]:
    """The CNs of a certificate's subject (a node's or a client's name in the mesh)."""
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def caller_names(context: grpc.aio.ServicerContext) -> tuple[str, ...]:
    """The CNs of the calling peer's mesh certificate (mTLS); empty without one. A tuple: the
    services keep it as the owner of what the caller opens and compare it on later calls."""
    pems = context.auth_context().get("x509_pem_cert") or []
    return tuple(common_names(x509.load_pem_x509_certificate(pems[0]))) if pems else ()


def admission_key(context: grpc.aio.ServicerContext) -> tuple[str, ...]:
    """Whose share of a node's queues and sessions a call counts against: the CNs of its
    certificate, or on an insecure-dev mesh (no certificates) its connection's address."""
    return caller_names(context) or (f"peer {context.peer()}",)


def node_names(cert: x509.Certificate) -> list[str]:
    """The CNs of a certificate if it is a node certificate (serverAuth usage), else []."""
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return []
    if ExtendedKeyUsageOID.SERVER_AUTH not in usages:
        return []
    return common_names(cert)


def is_loopback(address: str) -> bool:
    """Whether a "host:port" address names this machine's loopback interface."""
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    """PEM material for one party of the mesh, or none with insecure_dev on loopback."""

    root_ca: bytes | None = None  # PEM of the mesh CA
    private_key: bytes | None = None  # PEM of this party's key
    certificate: bytes | None = None  # PEM of this party's certificate
    insecure_dev: bool = False  # plaintext channels; loopback only

    def __post_init__(self) -> None:
        if not self.insecure_dev and not (self.root_ca and self.private_key and self.certificate):
            raise ValueError(
                "mTLS needs the mesh CA, a key and a certificate (secure-infer certs issue); "
                "use insecure_dev only for loopback development"
            )

    def check_address(self, address: str) -> None:
        if self.insecure_dev and not is_loopback(address):
            raise InsecureNotAllowed(
                f"--insecure-dev allows plaintext only on loopback, not {address}"
            )


def add_port(server: grpc.aio.Server | grpc.Server, address: str, creds: Credentials) -> int:
    """Bind the server; returns the port actually bound (address may end in ":0")."""
    creds.check_address(address)
    if creds.insecure_dev:
        logger.warning("INSECURE: serving plaintext gRPC on %s (--insecure-dev)", address)
        return server.add_insecure_port(address)
    assert creds.private_key and creds.certificate  # noqa: S101 - checked in __post_init__
    server_creds = grpc.ssl_server_credentials(
        [(creds.private_key, creds.certificate)],
        root_certificates=creds.root_ca,
        require_client_auth=True,
    )
    return server.add_secure_port(address, server_creds)


def new_sync_server(workers: int = 4) -> grpc.Server:
    """A blocking gRPC server with the mesh's message-size limits."""
    from concurrent import futures

    return grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=_SERVER_OPTIONS)


def add_sync_port(server: grpc.Server, address: str, creds: Credentials) -> int:
    """`add_port` for a blocking (thread-pool) server."""
    return add_port(server, address, creds)  # type: ignore[arg-type]


def new_server() -> grpc.aio.Server:
    return grpc.aio.server(options=_SERVER_OPTIONS)


def _channel_args(address: str, creds: Credentials) -> grpc.ChannelCredentials | None:
    creds.check_address(address)
    if creds.insecure_dev:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=creds.root_ca,
        private_key=creds.private_key,
        certificate_chain=creds.certificate,
    )


def aio_channel(
    address: str, creds: Credentials, *, max_receive_bytes: int = MAX_MESSAGE_BYTES
) -> grpc.aio.Channel:
    """An asyncio channel to a peer (used inside node daemons); replies larger than
    `max_receive_bytes` are refused (RESOURCE_EXHAUSTED)."""
    options = [o for o in _OPTIONS if o[0] != "grpc.max_receive_message_length"]
    options.append(("grpc.max_receive_message_length", max_receive_bytes))
    channel_creds = _channel_args(address, creds)
    if channel_creds is None:
        return grpc.aio.insecure_channel(address, options=options)
    return grpc.aio.secure_channel(address, channel_creds, options=options)


def sync_channel(address: str, creds: Credentials, expect_name: str = "") -> grpc.Channel:
    """A blocking channel to a node (used by the client SDK and the CLI).

    With ``expect_name`` the TLS handshake succeeds only if the server's certificate carries
    that node name as a SAN (node certificates do): the client then knows it reached the node
    whose record it planned with, not whatever answers at the address.
    """
    channel_creds = _channel_args(address, creds)
    if channel_creds is None:
        return grpc.insecure_channel(address, options=_OPTIONS)
    options = list(_OPTIONS)
    if expect_name:
        options.append(("grpc.ssl_target_name_override", expect_name))
    return grpc.secure_channel(address, channel_creds, options=options)
