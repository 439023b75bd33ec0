from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from decentralized.errors import PeerMisbehaved
from decentralized.identity import (
    Identity,
    MeshCA,
    node_id_of,
    reserved_node_name,
    verify_record,
)
from decentralized.transport import Credentials
from decentralized.v1 import common_pb2
from tests.conftest import expired_copy


def _record(name: str = "n", **kw: object) -> common_pb2.NodeRecord:
    return common_pb2.NodeRecord(
        address="127.0.0.1:1",
        name=name,
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
    rec = verify_record(ident.sign(_record()), ca=None)
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
        verify_record(signed, ca=None)


def test_record_claiming_another_id_is_rejected(tmp_path: Path) -> None:
    mallory = Identity.load_or_create(tmp_path / "m")
    victim = Identity.load_or_create(tmp_path / "v")
    rec = _record()
    rec.node_id = victim.node_id
    rec.public_key = mallory.public_key
    data = rec.SerializeToString(deterministic=True)
    signed = common_pb2.SignedNodeRecord(record=data, signature=mallory._key.sign(data))
    with pytest.raises(PeerMisbehaved, match="does not match its public key"):
        verify_record(signed, ca=None)


def test_future_and_garbage_records_are_rejected(tmp_path: Path) -> None:
    ident = Identity.load_or_create(tmp_path / "k")
    future = _record()
    future.timestamp_ms = int(time.time() * 1000) + 3_600_000
    with pytest.raises(PeerMisbehaved, match="future"):
        verify_record(ident.sign(future), ca=None)
    with pytest.raises(PeerMisbehaved):
        verify_record(common_pb2.SignedNodeRecord(record=b"\xff\xff\xff", signature=b"x"), ca=None)
    empty = _record()
    empty.spans[0].end = 0
    with pytest.raises(PeerMisbehaved, match="empty span"):
        verify_record(ident.sign(empty), ca=None)


@pytest.mark.parametrize("name", ["localhost", "localhost.", "a.LOCALHOST", "127.0.0.1", "::1"])
def test_a_record_named_like_a_default_san_is_refused(tmp_path: Path, name: str) -> None:
    # Any node certificate carries localhost / 127.0.0.1 / ::1: the name would bind nothing.
    ident = Identity.load_or_create(tmp_path / "k")
    with pytest.raises(PeerMisbehaved, match="is refused.*(loopback host name|IP address)"):
        verify_record(ident.sign(_named(name)), ca=None)
    assert reserved_node_name("node-1") is None and reserved_node_name("localhost-1") is None


def _named(name: str) -> common_pb2.NodeRecord:
    rec = _record()
    rec.name = name
    return rec


# -- names proved by the mesh CA ----------------------------------------------------------


def _creds(directory: Path, name: str, role: str = "node") -> Credentials:
    from secure_infer import certs

    if not (directory / "ca.crt").exists():
        certs.init_ca(directory)
    certs.issue(directory, name, role=role)  # type: ignore[arg-type]
    ca, key, cert = certs.material(directory, name).read()
    return Credentials(root_ca=ca, private_key=key, certificate=cert)


def _bound(directory: Path, name: str, role: str = "node", **kw: object) -> tuple:
    ident = Identity(Ed25519PrivateKey.generate())
    creds = _creds(directory, name, role)
    ident.bind(creds)
    return ident, creds, ident.sign(_record(name=kw.pop("record_name", name), **kw))


def test_a_record_bound_to_its_node_certificate_verifies(tmp_path: Path) -> None:
    ident, creds, signed = _bound(tmp_path, "node-x")
    ca = MeshCA.of(creds)
    assert ca is not None and MeshCA.of(Credentials(insecure_dev=True)) is None
    assert verify_record(signed, ca=ca).node_id == ident.node_id
    assert verify_record(signed, ca=ca).name == "node-x"  # again, from the cache


def test_records_whose_certificate_does_not_prove_their_name_are_refused(
    tmp_path: Path,
) -> None:
    ident, creds, good = _bound(tmp_path, "node-x")
    ca = MeshCA.of(creds)
    assert ca is not None
    verify_record(good, ca=ca)  # cached: the cases below must not pass through the cache

    unbound = Identity(Ed25519PrivateKey.generate()).sign(_record(name="node-x"))
    other_name = ident.sign(_record(name="node-y"))  # node-x's certificate, another name
    _, _, client_cert = _bound(tmp_path, "alice", role="client")
    _, _, foreign = _bound(tmp_path / "other-ca", "node-x")
    # node-x's certificate and binding on a record signed by a key it never vouched for
    stranger = Identity(Ed25519PrivateKey.generate()).sign(_record(name="node-x"))
    stranger.certificate, stranger.key_binding = good.certificate, good.key_binding
    flipped = common_pb2.SignedNodeRecord()
    flipped.CopyFrom(good)
    flipped.key_binding = good.key_binding[:-1] + bytes([good.key_binding[-1] ^ 1])
    garbage = common_pb2.SignedNodeRecord()
    garbage.CopyFrom(good)
    garbage.certificate = b"\x30\x03\x02\x01\x00"
    cases = [
        (unbound, "carries no mesh certificate"),
        (other_name, "names ['node-x'], not 'node-y'"),
        (client_cert, "not a node certificate"),
        (foreign, "not one of the mesh CA"),
        (stranger, "did not sign the record's key"),
        (flipped, "did not sign the record's key"),
        (garbage, "does not parse"),
    ]
    for signed, message in cases:
        with pytest.raises(PeerMisbehaved, match=re.escape(message)):
            verify_record(signed, ca=ca)
    assert verify_record(unbound, ca=None).name == "node-x"  # insecure-dev: a claim only


def test_an_expired_node_certificate_is_refused(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ident, creds, _ = _bound(tmp_path, "node-x")
    ca_key = serialization.load_pem_private_key((tmp_path / "ca.key").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(creds.root_ca or b"")
    real = x509.load_pem_x509_certificate(creds.certificate or b"")
    key = serialization.load_pem_private_key(creds.private_key or b"", None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    expired = expired_copy(real, issuer=ca_cert, issuer_key=ca_key, public_key=key.public_key())
    ident.bind(
        Credentials(
            root_ca=creds.root_ca,
            private_key=creds.private_key,
            certificate=expired.public_bytes(serialization.Encoding.PEM),
        )
    )
    ca = MeshCA.of(creds)
    with pytest.raises(PeerMisbehaved, match="not valid now"):
        verify_record(ident.sign(_record(name="node-x")), ca=ca)


def test_binding_needs_the_certificates_own_key(tmp_path: Path) -> None:
    x = _creds(tmp_path, "node-x")
    y = _creds(tmp_path, "node-y")
    mixed = Credentials(root_ca=x.root_ca, private_key=y.private_key, certificate=x.certificate)
    with pytest.raises(ValueError, match="does not match its certificate"):
        Identity(Ed25519PrivateKey.generate()).bind(mixed)


def test_a_ca_file_of_several_certificates_trusts_each(tmp_path: Path) -> None:
    """During a CA rotation the CA file holds the old and the new CA, and TLS trusts both:
    records of nodes of either verify (not only of the file's first certificate)."""
    _, old_creds, old_node = _bound(tmp_path / "old", "node-x")
    _, new_creds, new_node = _bound(tmp_path / "new", "node-y")
    _, _, stranger = _bound(tmp_path / "third", "node-z")
    bundle = MeshCA((old_creds.root_ca or b"") + (new_creds.root_ca or b""))
    assert verify_record(old_node, ca=bundle).name == "node-x"
    assert verify_record(new_node, ca=bundle).name == "node-y"
    with pytest.raises(PeerMisbehaved, match="not one of the mesh CA"):
        verify_record(stranger, ca=bundle)
