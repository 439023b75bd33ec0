"""Node identity: an Ed25519 key kept on disk, and signed node records.

A node's id is derived from its public key (first 16 bytes of SHA-256, hex), so a record cannot
claim another node's id without its key. Records are checked where they cross the trust
boundary (`verify_record`): signature, derived id, timestamps, and the node name.

Node names. A client opens a forward requiring the server's certificate to carry the record's
name as a SAN (gRPC's target-name override), and node certificates carry `localhost`,
`127.0.0.1` and `::1` SANs by default (`secure-infer certs issue`). A record named `localhost`
or an IP address would therefore be answered by **any** node certificate: one operator could
claim as many distinct replicas as it liked. Such names (`reserved_node_name`) are refused for
node certificates and for records.
"""

from __future__ import annotations

import ipaddress
import os
import time
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from decentralized.errors import PeerMisbehaved
from decentralized.v1 import common_pb2
from verification.consensus.receipts import node_id_of  # one definition; receipts check it too

__all__ = ["MAX_CLOCK_SKEW_MS", "Identity", "node_id_of", "reserved_node_name", "verify_record"]

MAX_CLOCK_SKEW_MS = 30_000  # records signed further in the future than this are refused


def reserved_node_name(name: str) -> str | None:
    """Why `name` cannot be a node's name (it is one every node certificate may carry as a
    SAN: `localhost`, a `.localhost` name, or an IP address such as `127.0.0.1`), or None."""
    host = name.strip().rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return f"{name!r} is a loopback host name, which node certificates carry by default"
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return f"{name!r} is an IP address, which node certificates carry as SANs"


class Identity:
    """An Ed25519 signing key and the node id derived from it."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public_key = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.node_id = node_id_of(self.public_key)

    @classmethod
    def load_or_create(cls, path: Path) -> Identity:
        """Read the PEM key at path, or create one (mode 0o600) on first start."""
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError(f"{path}: expected an Ed25519 private key")
            return cls(key)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        return cls(key)

    def sign_bytes(self, data: bytes) -> bytes:
        """Ed25519 signature of data (forward receipts; see verification.consensus.receipts)."""
        return self._key.sign(data)

    def sign(self, record: common_pb2.NodeRecord) -> common_pb2.SignedNodeRecord:
        """Stamp the record with this identity and sign its deterministic serialization."""
        record.node_id = self.node_id
        record.public_key = self.public_key
        data = record.SerializeToString(deterministic=True)
        return common_pb2.SignedNodeRecord(record=data, signature=self._key.sign(data))


def verify_record(
    signed: common_pb2.SignedNodeRecord, *, now_ms: int | None = None
) -> common_pb2.NodeRecord:
    """Check a peer's signed record and return it; raises PeerMisbehaved, never returns False."""
    record = common_pb2.NodeRecord()
    try:
        record.ParseFromString(signed.record)
    except Exception as exc:  # protobuf raises DecodeError, a bare Exception subclass
        raise PeerMisbehaved(f"node record does not parse: {exc}") from None
    if len(record.public_key) != 32:
        raise PeerMisbehaved(f"node record public key has {len(record.public_key)} bytes, not 32")
    try:
        Ed25519PublicKey.from_public_bytes(record.public_key).verify(
            signed.signature, signed.record
        )
    except InvalidSignature:
        raise PeerMisbehaved(f"bad signature on the record of node {record.node_id!r}") from None
    if record.node_id != node_id_of(record.public_key):
        raise PeerMisbehaved(f"node id {record.node_id!r} does not match its public key")
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if record.timestamp_ms > now + MAX_CLOCK_SKEW_MS:
        raise PeerMisbehaved(f"record of node {record.node_id} is signed in the future")
    reserved = reserved_node_name(record.name)
    if reserved is not None:
        raise PeerMisbehaved(f"record of node {record.node_id} is refused: {reserved}")
    for span in record.spans:
        if span.end <= span.start:
            raise PeerMisbehaved(f"record of node {record.node_id} has an empty span")
    return record
