"""Tests for secure_infer.certs: CA creation, leaf issue, checks and a real mTLS handshake."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secure_infer.certs import (
    CertError,
    TLSMaterial,
    init_ca,
    issue,
    material,
    verify_leaf,
)
from tests.conftest import expired_copy

TIMEOUT_S = 2.0


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A directory with a fresh mesh CA."""
    directory = tmp_path / "pki"
    init_ca(directory)
    return directory


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _eku(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


# ----------------------------------------------------------------------------- CA


def test_init_ca_creates_ca(tmp_path: Path) -> None:
    directory = tmp_path / "new" / "pki"
    ca_path = init_ca(directory, name="test CA")

    assert ca_path == directory / "ca.crt"
    assert _mode(directory / "ca.key") == 0o600
    ca = _load(ca_path)
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "test CA"
    assert ca.issuer == ca.subject
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(ca.public_key().curve, ec.SECP256R1)  # type: ignore[union-attr]
    assert ca.not_valid_before_utc.tzinfo is not None

    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    ca.verify_directly_issued_by(ca)  # self-signed


def test_init_ca_refuses_overwrite(pki: Path) -> None:
    before = (pki / "ca.key").read_bytes()
    with pytest.raises(CertError, match="overwrite"):
        init_ca(pki)
    assert (pki / "ca.key").read_bytes() == before

    init_ca(pki, overwrite=True)
    assert (pki / "ca.key").read_bytes() != before
    assert _mode(pki / "ca.key") == 0o600


@pytest.mark.parametrize("valid_days", [0, -1])
def test_init_ca_rejects_bad_valid_days(tmp_path: Path, valid_days: int) -> None:
    with pytest.raises(CertError, match="valid_days"):
        init_ca(tmp_path, valid_days=valid_days)


# ----------------------------------------------------------------------------- issue


def test_issue_node_and_client(pki: Path) -> None:
    node = issue(pki, "node-1", role="node")
    client = issue(pki, "client.a", role="client")

    assert node == TLSMaterial(
        ca_cert=pki / "ca.crt", cert=pki / "node-1.crt", key=pki / "node-1.key"
    )
    assert client.cert == pki / "client.a.crt"
    for m in (node, client):
        assert _mode(m.key) == 0o600
        leaf = verify_leaf(m)
        assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value in {
            "node-1",
            "client.a",
        }
        bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
        assert bc.critical and not bc.value.ca
        ku = leaf.extensions.get_extension_for_class(x509.KeyUsage)
        assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
        aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ca_ski = _load(pki / "ca.crt").extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        assert aki.key_identifier == ca_ski.value.digest
        key = serialization.load_pem_private_key(m.key.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert m.key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8

    ca_pem, key_pem, cert_pem = node.read()
    assert ca_pem == (pki / "ca.crt").read_bytes()
    assert key_pem == node.key.read_bytes()
    assert cert_pem == node.cert.read_bytes()


def test_sans(pki: Path) -> None:
    leaf = verify_leaf(issue(pki, "node-1", role="node"))
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = san.get_values_for_type(x509.IPAddress)
    dns = san.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in ips
    assert ipaddress.ip_address("::1") in ips
    assert dns == ["node-1", "localhost"]  # a node's name is a SAN: clients check it
    client = verify_leaf(issue(pki, "client-9", role="client"))
    san = client.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]

    leaf = verify_leaf(
        issue(pki, "node-2", role="node", hosts=["node-2", "10.0.0.7", "node-2.mesh"])
    )
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    assert san.get_values_for_type(x509.DNSName) == ["node-2", "node-2.mesh"]


def test_eku_differs_by_role(pki: Path) -> None:
    node = _load(issue(pki, "node-1", role="node").cert)
    client = _load(issue(pki, "client-1", role="client").cert)
    assert _eku(node) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert _eku(client) == {ExtendedKeyUsageOID.CLIENT_AUTH}


def test_issue_refuses_overwrite(pki: Path) -> None:
    first = issue(pki, "node-1", role="node")
    before = first.cert.read_bytes()
    with pytest.raises(CertError, match="overwrite"):
        issue(pki, "node-1", role="node")
    assert first.cert.read_bytes() == before

    second = issue(pki, "node-1", role="node", overwrite=True)
    assert second.cert.read_bytes() != before
    verify_leaf(second)


@pytest.mark.parametrize(
    "name",
    ["", "-node", ".hidden", "a/b", "../ca", "node 1", "x" * 64, "node\n", "ca", "CA", "nöde"],
)
def test_issue_rejects_bad_name(pki: Path, name: str) -> None:
    with pytest.raises(CertError, match="name"):
        issue(pki, name, role="node")
    assert sorted(p.name for p in pki.iterdir()) == ["ca.crt", "ca.key"]


def test_issue_accepts_longest_name(pki: Path) -> None:
    verify_leaf(issue(pki, "n" * 63, role="client"))


def test_issue_rejects_bad_role_and_hosts(pki: Path) -> None:
    with pytest.raises(CertError, match="role"):
        issue(pki, "node-1", role="server")  # type: ignore[arg-type]
    with pytest.raises(CertError, match="host"):
        issue(pki, "node-1", role="node", hosts="localhost")
    with pytest.raises(CertError, match="host"):
        issue(pki, "node-1", role="node", hosts=[""])


def test_issue_without_ca(tmp_path: Path) -> None:
    with pytest.raises(CertError, match="ca.crt"):
        issue(tmp_path, "node-1", role="node")


def test_issue_with_expired_ca(pki: Path) -> None:
    # Re-sign the CA certificate with the real CA key, but with validity in the past.
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = _load(pki / "ca.crt")
    expired = expired_copy(ca, issuer=ca, issuer_key=ca_key, public_key=ca_key.public_key())
    (pki / "ca.crt").write_bytes(expired.public_bytes(serialization.Encoding.PEM))

    with pytest.raises(CertError, match="expired"):
        issue(pki, "node-1", role="node")
    assert not (pki / "node-1.key").exists()


def test_leaf_does_not_outlive_ca(tmp_path: Path) -> None:
    init_ca(tmp_path, valid_days=10)
    leaf = verify_leaf(issue(tmp_path, "node-1", role="node", valid_days=365))
    assert leaf.not_valid_after_utc <= _load(tmp_path / "ca.crt").not_valid_after_utc


# ----------------------------------------------------------------------------- checks


def test_verify_leaf_rejects_other_ca(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    init_ca(ours)
    init_ca(theirs, name="rogue CA")
    rogue = issue(theirs, "node-1", role="node")

    mixed = TLSMaterial(ca_cert=ours / "ca.crt", cert=rogue.cert, key=rogue.key)
    with pytest.raises(CertError, match="signed by the CA"):
        verify_leaf(mixed)


def test_verify_leaf_rejects_other_ca_with_same_name(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    init_ca(ours)
    init_ca(theirs)  # same default CA name, different key
    rogue = issue(theirs, "node-1", role="node")

    with pytest.raises(CertError, match="signed by the CA"):
        verify_leaf(TLSMaterial(ca_cert=ours / "ca.crt", cert=rogue.cert, key=rogue.key))


def test_verify_leaf_rejects_wrong_key(pki: Path) -> None:
    a = issue(pki, "node-a", role="node")
    b = issue(pki, "node-b", role="node")
    with pytest.raises(CertError, match="different key") as info:
        verify_leaf(TLSMaterial(ca_cert=a.ca_cert, cert=a.cert, key=b.key))
    assert "PRIVATE KEY" not in str(info.value)
    assert b.key.read_text().splitlines()[1] not in str(info.value)


def test_verify_leaf_rejects_garbage_key_without_echoing_it(pki: Path) -> None:
    m = issue(pki, "node-1", role="node")
    secret = "-----BEGIN PRIVATE KEY-----\nU0VDUkVUU0VDUkVU\n-----END PRIVATE KEY-----\n"
    m.key.write_text(secret)
    with pytest.raises(CertError) as info:
        verify_leaf(m)
    assert "U0VDUkVUU0VDUkVU" not in str(info.value)
    assert str(m.key) in str(info.value)


def test_material_finds_files(pki: Path) -> None:
    issued = issue(pki, "node-1", role="node")
    assert material(pki, "node-1") == issued


@pytest.mark.parametrize("missing", ["ca.crt", "node-1.crt", "node-1.key"])
def test_material_missing_file(pki: Path, missing: str) -> None:
    issue(pki, "node-1", role="node")
    (pki / missing).unlink()
    with pytest.raises(CertError, match=missing.replace(".", r"\.")):
        material(pki, "node-1")


def test_read_missing_file(pki: Path) -> None:
    m = issue(pki, "node-1", role="node")
    m.key.unlink()
    with pytest.raises(CertError, match="node-1.key"):
        m.read()


# ----------------------------------------------------------------------------- real mTLS


@dataclass
class _ServerResult:
    peer_cn: str | None = None
    error: Exception | None = None
    done: threading.Event = field(default_factory=threading.Event)


def _server_context(m: TLSMaterial) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certfile=m.cert, keyfile=m.key)
    ctx.load_verify_locations(cafile=m.ca_cert)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _client_context(m: TLSMaterial) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies server cert and hostname
    ctx.load_cert_chain(certfile=m.cert, keyfile=m.key)
    ctx.load_verify_locations(cafile=m.ca_cert)
    return ctx


def _serve_once(sock: socket.socket, ctx: ssl.SSLContext, result: _ServerResult) -> None:
    try:
        with ctx.wrap_socket(sock, server_side=True) as tls:
            der = tls.getpeercert(binary_form=True)
            if der is not None:
                peer = x509.load_der_x509_certificate(der)
                cn = peer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
                result.peer_cn = cn if isinstance(cn, str) else None
            tls.sendall(b"ok")
    except (ssl.SSLError, OSError) as exc:  # reported to the test thread
        result.error = exc
    finally:
        result.done.set()


def _handshake(server: TLSMaterial, client: TLSMaterial) -> tuple[_ServerResult, bytes | Exception]:
    """Run one mutual-TLS handshake on a loopback socket; return both sides' outcomes."""
    result = _ServerResult()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT_S)
        port = listener.getsockname()[1]
        client_outcome: bytes | Exception
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as raw:
            conn, _ = listener.accept()
            conn.settimeout(TIMEOUT_S)
            thread = threading.Thread(
                target=_serve_once, args=(conn, _server_context(server), result), daemon=True
            )
            thread.start()
            try:
                with _client_context(client).wrap_socket(raw, server_hostname="localhost") as tls:
                    client_outcome = tls.recv(2)
            except (ssl.SSLError, OSError) as exc:
                client_outcome = exc
            thread.join(TIMEOUT_S)
            conn.close()
    assert result.done.is_set(), "server thread did not finish"
    return result, client_outcome


def test_mtls_handshake_succeeds(pki: Path) -> None:
    node = issue(pki, "node-1", role="node")
    client = issue(pki, "client-1", role="client")

    server_result, client_outcome = _handshake(node, client)

    assert server_result.error is None
    assert client_outcome == b"ok"
    assert server_result.peer_cn == "client-1"


def test_mtls_node_to_node(pki: Path) -> None:
    a = issue(pki, "node-a", role="node")
    b = issue(pki, "node-b", role="node")
    server_result, client_outcome = _handshake(a, b)
    assert server_result.error is None and client_outcome == b"ok"
    assert server_result.peer_cn == "node-b"


def test_mtls_rejects_client_from_other_ca(tmp_path: Path, pki: Path) -> None:
    node = issue(pki, "node-1", role="node")
    rogue_dir = tmp_path / "rogue"
    init_ca(rogue_dir)
    rogue = issue(rogue_dir, "client-1", role="client")
    # The rogue client trusts our CA (so it accepts the server) but its own cert is foreign.
    rogue_client = TLSMaterial(ca_cert=pki / "ca.crt", cert=rogue.cert, key=rogue.key)

    server_result, client_outcome = _handshake(node, rogue_client)

    assert isinstance(server_result.error, ssl.SSLError)
    assert server_result.peer_cn is None
    # With TLS 1.3 the client learns of the rejection on its first read: an alert or EOF.
    assert client_outcome != b"ok"


def test_mtls_client_cert_cannot_serve(pki: Path) -> None:
    # A client certificate lacks serverAuth, so a client cannot pose as a node.
    impostor = issue(pki, "client-x", role="client")
    client = issue(pki, "client-1", role="client")

    server_result, client_outcome = _handshake(impostor, client)

    assert isinstance(client_outcome, ssl.SSLError)
    assert server_result.peer_cn is None


@pytest.mark.parametrize(
    "name", ["localhost", "LocalHost", "db.localhost", "127.0.0.1", "10.0.0.7"]
)
def test_issue_refuses_node_names_every_node_certificate_carries(pki: Path, name: str) -> None:
    # A client requires the record's name as a SAN; these are SANs of every default node cert.
    with pytest.raises(CertError, match="not a host every node certificate carries"):
        issue(pki, name, role="node")
    assert sorted(p.name for p in pki.iterdir()) == ["ca.crt", "ca.key"]
    verify_leaf(issue(pki, name, role="client"))  # a client's name is never dialled


@pytest.mark.parametrize("host", ["*.mesh", "*", "node-*.mesh", "a.*.mesh", "*.10.0.0.7"])
@pytest.mark.parametrize("role", ["node", "client"])
def test_issue_refuses_wildcard_hosts(pki: Path, host: str, role: str) -> None:
    # On a node certificate `*.mesh` would pass the client's per-node name check (gRPC's
    # target-name override) for every node named `<x>.mesh`.
    with pytest.raises(CertError, match="without wildcards"):
        issue(pki, "evil", role=role, hosts=[host, "127.0.0.1"])  # type: ignore[arg-type]
    assert sorted(p.name for p in pki.iterdir()) == ["ca.crt", "ca.key"]


@pytest.mark.parametrize(
    "host",
    ["a..mesh", ".mesh", "mesh.", "-gpu.mesh", "gpu-.mesh", "gpu a", "gpu/a", "g:pu", "x" * 64],
)
def test_issue_refuses_hosts_that_are_not_dns_names(pki: Path, host: str) -> None:
    with pytest.raises(CertError, match="DNS name"):
        issue(pki, "node-1", role="node", hosts=[host])
    assert sorted(p.name for p in pki.iterdir()) == ["ca.crt", "ca.key"]


@pytest.mark.parametrize("name", ["node-", "node..a", "node.", "a.-b"])
def test_issue_refuses_node_names_that_are_not_dns_names(pki: Path, name: str) -> None:
    # A node's name becomes a SAN of its certificate, so it must be a DNS name too.
    with pytest.raises(CertError, match="valid DNS name"):
        issue(pki, name, role="node")
    assert sorted(p.name for p in pki.iterdir()) == ["ca.crt", "ca.key"]


def test_issue_accepts_dns_names_and_ips(pki: Path) -> None:
    hosts = ["gpu-a.mesh", "gpu_b.internal", "x" * 63, "10.0.0.7", "::1", "N1.Example.ORG"]
    leaf = verify_leaf(issue(pki, "node_1.mesh", role="node", hosts=hosts))
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [
        "node_1.mesh",
        "gpu-a.mesh",
        "gpu_b.internal",
        "x" * 63,
        "N1.Example.ORG",
    ]


def test_certs_cli_refuses_a_wildcard_host(pki: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from secure_infer import cli

    code = cli.main(["certs", "issue", "evil", "--dir", str(pki), "--host", "*.mesh"])
    assert code != 0
    assert "without wildcards" in capsys.readouterr().err
    assert sorted(p.name for p in pki.iterdir()) == ["ca.crt", "ca.key"]
