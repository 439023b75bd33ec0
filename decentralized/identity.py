"""Node identity: an Ed25519 key kept on disk, and signed node records.

A node's id is derived from its public key (first 16 bytes of SHA-256, hex), so a record cannot
claim another node's id without its key. Records are checked where they cross the trust
boundary (`verify_record`): signature, derived id, timestamps, and the node name.

Names. On a mesh with TLS every signed record carries its node's certificate from the mesh CA
and a signature by that certificate's key over the record's Ed25519 key (`Identity.bind`); a
receiver that knows the CA (`MeshCA`) refuses a record whose certificate does not chain to it,
has expired, is not a node certificate, does not name the record's node, or did not sign its
key. So a record names a node only if the holder of that name's certificate made it: an
admitted node can no longer gossip records under names of its own making, or under another
node's name with keys of its own. (An insecure-dev mesh has no certificates: names there are
claims.)

Node names. A client opens a forward requiring the server's certificate to carry the record's
name as a SAN (gRPC's target-name override), and node certificates carry `localhost`,
`127.0.0.1` and `::1` SANs by default (`secure-infer certs issue`). A record named `localhost`
or an IP address would therefore be answered by **any** node certificate: one operator could
claim as many distinct replicas as it liked. Such names (`reserved_node_name`) are refused for
node certificates and for records.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from decentralized.errors import PeerMisbehaved
from decentralized.transport import Credentials, node_names
from decentralized.v1 import common_pb2
from verification.consensus.receipts import node_id_of  # one definition; receipts check it too

__all__ = [
    "MAX_CLOCK_SKEW_MS",
    "Identity",
    "MeshCA",
    "node_id_of",
    "reserved_node_name",
    "verify_record",
]

MAX_CLOCK_SKEW_MS = 30_000  # records signed further in the future than this are refused
MAX_CERTIFICATE_BYTES = 8 * 1024  # a node certificate in a record (DER)
# What a node's certificate key signs to bind its Ed25519 record key to the certificate.
KEY_BINDING_CONTEXT = b"secure-infer node record key v1\x00"


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
        self._certificate = b""  # DER of the node's mesh certificate, once bound
        self._key_binding = b""

    def bind(self, creds: Credentials) -> None:
        """Carry the node's mesh certificate in every record signed from now on, with its
        key's signature over this identity's public key (what receivers check the record's
        name against). Nothing to bind on an insecure-dev mesh."""
        if creds.insecure_dev or creds.certificate is None or creds.private_key is None:
            return
        cert = x509.load_pem_x509_certificate(creds.certificate)
        key = serialization.load_pem_private_key(creds.private_key, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("a node's TLS key must be an EC key (secure-infer certs issue)")
        der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
            raise ValueError("the node's TLS key does not match its certificate")
        self._certificate = cert.public_bytes(serialization.Encoding.DER)
        self._key_binding = key.sign(
            KEY_BINDING_CONTEXT + self.public_key, ec.ECDSA(hashes.SHA256())
        )

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
        return common_pb2.SignedNodeRecord(
            record=data,
            signature=self._key.sign(data),
            certificate=self._certificate,
            key_binding=self._key_binding,
        )


class MeshCA:
    """The mesh CA that record certificates must chain to: the certificates of the CA file
    (`secure-infer certs init` makes one; a file holding several, as during a CA rotation,
    trusts each, as TLS does); node certificates are issued directly by one of them. Checks
    are cached by the certificate, binding, key and name they covered, so a heartbeat's
    re-signed record costs a look-up, not two ECDSA verifications."""

    _CACHE = 4096

    def __init__(self, root_pem: bytes) -> None:
        self.roots = x509.load_pem_x509_certificates(root_pem)
        self._checked: OrderedDict[bytes, dt.datetime] = OrderedDict()  # -> not valid after
        self._lock = threading.Lock()  # records are verified on executor threads too

    @classmethod
    def of(cls, creds: Credentials) -> MeshCA | None:
        """The CA of a TLS mesh's credentials; None on an insecure-dev mesh (no names proved)."""
        if creds.insecure_dev or creds.root_ca is None:
            return None
        return cls(creds.root_ca)

    def check(self, signed: common_pb2.SignedNodeRecord, record: common_pb2.NodeRecord) -> None:
        """Raise PeerMisbehaved unless the record's certificate proves its name and key."""
        who = f"record of node {record.name!r} ({record.node_id[:8]})"
        if not signed.certificate or not signed.key_binding:
            raise PeerMisbehaved(f"{who} carries no mesh certificate (needed on a TLS mesh)")
        if len(signed.certificate) > MAX_CERTIFICATE_BYTES or len(signed.key_binding) > 256:
            raise PeerMisbehaved(f"{who}: certificate or key binding too large")
        parts = (signed.certificate, signed.key_binding, record.public_key, record.name.encode())
        digest = hashlib.sha256(b"".join(len(p).to_bytes(4, "big") + p for p in parts)).digest()
        now = dt.datetime.now(dt.UTC)
        with self._lock:
            expires = self._checked.get(digest)
            if expires is not None:
                self._checked.move_to_end(digest)
        if expires is not None and now <= expires:
            return
        expires = self._verify(signed, record, who, now)
        with self._lock:
            self._checked[digest] = expires
            while len(self._checked) > self._CACHE:
                self._checked.popitem(last=False)

    def _verify(
        self,
        signed: common_pb2.SignedNodeRecord,
        record: common_pb2.NodeRecord,
        who: str,
        now: dt.datetime,
    ) -> dt.datetime:
        try:
            cert = x509.load_der_x509_certificate(signed.certificate)
        except ValueError as exc:
            raise PeerMisbehaved(f"{who}: its certificate does not parse ({exc})") from None
        if not any(_issued_by(cert, root) for root in self.roots):
            raise PeerMisbehaved(f"{who}: its certificate is not one of the mesh CA")
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise PeerMisbehaved(
                f"{who}: its certificate is not valid now (valid "
                f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d})"
            )
        names = node_names(cert)
        if not names:
            raise PeerMisbehaved(f"{who}: its certificate is not a node certificate")
        if record.name not in names:
            raise PeerMisbehaved(f"{who}: its certificate names {names}, not {record.name!r}")
        key = cert.public_key()
        try:
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise InvalidSignature
            key.verify(
                signed.key_binding,
                KEY_BINDING_CONTEXT + record.public_key,
                ec.ECDSA(hashes.SHA256()),
            )
        except InvalidSignature:
            raise PeerMisbehaved(
                f"{who}: its certificate's key did not sign the record's key"
            ) from None
        return cert.not_valid_after_utc


def _issued_by(cert: x509.Certificate, root: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def verify_record(
    signed: common_pb2.SignedNodeRecord, *, ca: MeshCA | None, now_ms: int | None = None
) -> common_pb2.NodeRecord:
    """Check a peer's signed record and return it; raises PeerMisbehaved, never returns False.
    `ca`: the mesh CA whose certificate must prove the record's name (`MeshCA.of(creds)`);
    None only on an insecure-dev mesh, where names are not proved."""
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
    if ca is not None:
        ca.check(signed, record)
    return record
