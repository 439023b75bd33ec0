"""Public key infrastructure (PKI) for the secure-infer mesh.

Every node and client in the mesh has a certificate signed by one mesh
certificate authority (CA). Every gRPC channel between them uses mutual TLS:
the server proves who it is to the client, and the client proves who it is to
the server. Both sides accept only certificates signed by the mesh CA.

Trust model:

* The CA operator is fully trusted. Whoever holds ``ca.key`` can issue a
  certificate for any name, so they can admit any node or client to the mesh,
  including one that pretends to be an existing node. No other part of the
  mesh can limit this.
* So ``ca.key`` must stay private. Keep it offline, or at least on a machine
  that does not run a node. Copy only ``ca.crt`` (which is public) and each
  party's own ``<name>.crt``/``<name>.key`` to the machines that need them.
* A leaf key (``<name>.key``) lets its holder act as that node or client. It is
  written with file mode ``0o600`` and must not be shared.

Nodes get both the ``serverAuth`` and ``clientAuth`` extended key usages,
because they serve requests and also dial their peers. Clients get
``clientAuth`` only, so a client certificate cannot be used to serve as a node.

Every key is an ECDSA P-256 key, and every signature uses SHA-256. This module
uses only the ``cryptography`` package. It writes PEM files that
``grpc.ssl_server_credentials`` and ``grpc.ssl_channel_credentials`` accept;
see :meth:`TLSMaterial.read`.

Files in a PKI directory:

* ``ca.crt`` and ``ca.key``: the mesh CA, created by :func:`init_ca`.
* ``<name>.crt`` and ``<name>.key``: a leaf (node or client), created by
  :func:`issue`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CertError",
    "TLSMaterial",
    "init_ca",
    "issue",
    "material",
    "verify_leaf",
]

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_DNS_LABEL_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_CLOCK_SKEW = dt.timedelta(minutes=5)
_KEY_MODE = 0o600
_CERT_MODE = 0o644
_DEFAULT_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")


class CertError(Exception):
    """Raised for every problem with mesh certificates or their files.

    The message says what was expected and what was found. It never contains
    key material.
    """


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSMaterial:
    """Paths of the PEM files that one node or client needs for mutual TLS.

    Attributes:
        ca_cert: PEM certificate of the mesh CA.
        cert: PEM certificate of this node or client (the leaf).
        key: PEM private key of the leaf (PKCS8, unencrypted, file mode 0o600).
    """

    ca_cert: Path
    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """Read the three PEM files.

        Returns:
            ``(ca_pem, key_pem, cert_pem)``. This is the order of the
            ``root_certificates``, ``private_key`` and ``certificate_chain``
            arguments of ``grpc.ssl_channel_credentials``. For
            ``grpc.ssl_server_credentials``, pass ``[(key_pem, cert_pem)]``
            and ``root_certificates=ca_pem``.

        Raises:
            CertError: If a file is missing or cannot be read.
        """
        return (
            _read_file(self.ca_cert, "CA certificate"),
            _read_file(self.key, "private key"),
            _read_file(self.cert, "certificate"),
        )


def init_ca(
    directory: Path,
    *,
    name: str = "secure-infer mesh CA",
    valid_days: int = 3650,
    overwrite: bool = False,
) -> Path:
    """Create the mesh CA: ``ca.key`` (mode 0o600) and ``ca.crt`` in ``directory``.

    The CA certificate is self-signed. Its extensions are
    ``BasicConstraints(ca=True, path_length=0)`` (critical),
    ``KeyUsage(key_cert_sign, crl_sign)`` (critical) and
    ``SubjectKeyIdentifier``.

    Args:
        directory: Where to write the files. Created with mode 0o700 if it
            does not exist.
        name: Common name (CN) of the CA, 1 to 64 characters.
        valid_days: How many days the CA certificate is valid. Must be
            positive.
        overwrite: Replace an existing CA. Every certificate the old CA issued
            stops being trusted by parties that get the new ``ca.crt``.

    Returns:
        The path of ``ca.crt``.

    Raises:
        CertError: If ``ca.key`` or ``ca.crt`` exists and ``overwrite`` is
            false, if an argument is invalid, or if a file cannot be written.
    """
    directory = Path(directory)
    _check_valid_days(valid_days)
    subject = _name_with_cn(name, what="CA name")
    key_path = directory / CA_KEY_FILE
    cert_path = directory / CA_CERT_FILE
    if not overwrite:
        for path in (key_path, cert_path):
            if path.exists():
                raise CertError(
                    f"expected no existing CA in {directory}, found {path}; "
                    "pass overwrite=True to replace the CA"
                )
    _make_directory(directory)

    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_file(key_path, _key_pem(key), mode=_KEY_MODE, overwrite=overwrite)
    _write_file(
        cert_path,
        cert.public_bytes(serialization.Encoding.PEM),
        mode=_CERT_MODE,
        overwrite=overwrite,
    )
    return cert_path


def issue(
    directory: Path,
    name: str,
    *,
    role: Literal["node", "client"],
    hosts: Sequence[str] = _DEFAULT_HOSTS,
    valid_days: int = 365,
    overwrite: bool = False,
) -> TLSMaterial:
    """Issue ``{name}.key`` (mode 0o600) and ``{name}.crt``, signed by the CA in ``directory``.

    The certificate has CN ``name`` and one subject alternative name (SAN) per
    entry of ``hosts``: an ``IPAddress`` if the entry parses as an IP address,
    else a ``DNSName``. A node certificate also carries ``DNSName(name)``, so a
    client can require that the server it reaches is the node it planned to
    reach (gRPC's target-name override). A client certificate carries only
    ``hosts``; if ``hosts`` is empty it has no SAN extension.

    Other extensions: ``BasicConstraints(ca=False)`` (critical),
    ``KeyUsage(digital_signature, key_agreement)`` (critical),
    ``ExtendedKeyUsage`` (``serverAuth`` and ``clientAuth`` for a node,
    ``clientAuth`` only for a client), ``SubjectKeyIdentifier`` and
    ``AuthorityKeyIdentifier``.

    The certificate never outlives the CA: its end of validity is the earlier
    of ``valid_days`` from now and the CA's end of validity.

    Args:
        directory: Directory that holds ``ca.crt`` and ``ca.key``. The new
            files are written there too.
        name: Name of the node or client. Must match
            ``^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`` and must not be ``ca``. A node's
            name must not be ``localhost`` (or end in ``.localhost``) nor an IP
            address: every node certificate may carry those as SANs, so a client
            requiring that name would accept any node.
        role: ``"node"`` or ``"client"``.
        hosts: Host names and IP addresses the certificate is valid for. Each must be an
            IP address or a DNS name of dot-separated labels (letters, digits, ``-``, ``_``);
            wildcards such as ``*.mesh`` are refused: on a node certificate one would pass
            a client's per-node name check for every node name it matches.
        valid_days: How many days the certificate is valid. Must be positive.
        overwrite: Replace an existing ``{name}.key``/``{name}.crt``.

    Returns:
        The paths of ``ca.crt``, ``{name}.crt`` and ``{name}.key``.

    Raises:
        CertError: If the name, role, hosts or ``valid_days`` is invalid, if
            the CA is missing, unreadable, not a CA or expired, if the leaf
            files exist and ``overwrite`` is false, or if a file cannot be
            written.
    """
    directory = Path(directory)
    _check_name(name)
    _check_valid_days(valid_days)
    if role == "node":
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    elif role == "client":
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    else:
        raise CertError(f"expected role 'node' or 'client', found {role!r}")
    if role == "node":
        from decentralized.identity import reserved_node_name

        reserved = reserved_node_name(name)
        if reserved is not None:
            raise CertError(
                f"expected a node name that is not a host every node certificate carries: "
                f"{reserved} (a client could not tell that node from any other)"
            )
    if role == "node":
        try:
            _check_dns_name(name)
        except CertError as exc:
            raise CertError(
                f"expected a node name that is a valid DNS name (every node certificate carries "
                f"it as a SAN): {exc}"
            ) from None
    if role == "node" and not isinstance(hosts, str) and name not in hosts:
        hosts = [name, *hosts]
    sans = _subject_alt_names(hosts)

    out = TLSMaterial(
        ca_cert=directory / CA_CERT_FILE,
        cert=directory / f"{name}.crt",
        key=directory / f"{name}.key",
    )
    if not overwrite:
        for path in (out.key, out.cert):
            if path.exists():
                raise CertError(
                    f"expected no existing files for {name!r}, found {path}; "
                    "pass overwrite=True to replace them"
                )
    ca_cert, ca_key = _load_ca(directory)

    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    not_after = min(now + dt.timedelta(days=valid_days), ca_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name_with_cn(name, what="name"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(now - _CLOCK_SKEW, ca_cert.not_valid_before_utc))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_identifier(ca_cert), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())

    _write_file(out.key, _key_pem(key), mode=_KEY_MODE, overwrite=overwrite)
    _write_file(
        out.cert,
        cert.public_bytes(serialization.Encoding.PEM),
        mode=_CERT_MODE,
        overwrite=overwrite,
    )
    return out


def material(directory: Path, name: str) -> TLSMaterial:
    """Locate the existing files of ``name`` in ``directory``.

    Args:
        directory: Directory that holds ``ca.crt``, ``{name}.crt`` and
            ``{name}.key``.
        name: Name of the node or client, as given to :func:`issue`.

    Returns:
        The paths of the three files. Their contents are not checked; use
        :func:`verify_leaf` for that.

    Raises:
        CertError: If ``name`` is invalid or one of the files does not exist.
            The message names the missing file.
    """
    directory = Path(directory)
    _check_name(name)
    found = TLSMaterial(
        ca_cert=directory / CA_CERT_FILE,
        cert=directory / f"{name}.crt",
        key=directory / f"{name}.key",
    )
    for path, what in (
        (found.ca_cert, "CA certificate"),
        (found.cert, f"certificate of {name!r}"),
        (found.key, f"private key of {name!r}"),
    ):
        if not path.is_file():
            raise CertError(f"expected {what} at {path}, found no such file")
    return found


def verify_leaf(material: TLSMaterial) -> x509.Certificate:
    """Check that a leaf certificate is usable with its CA and key.

    Checks that the leaf is signed directly by the CA, that the CA and the leaf
    are both within their validity periods now (UTC), and that the private key
    belongs to the leaf certificate.

    Args:
        material: Paths of the CA certificate, the leaf certificate and the
            leaf key.

    Returns:
        The leaf certificate.

    Raises:
        CertError: If a file is missing or unreadable, or if any check fails.
    """
    ca_pem, key_pem, cert_pem = material.read()
    ca = _parse_cert(ca_pem, material.ca_cert)
    leaf = _parse_cert(cert_pem, material.cert)
    key = _parse_key(key_pem, material.key)

    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise CertError(
            f"expected {material.cert} to be signed by the CA in {material.ca_cert} "
            f"({ca.subject.rfc4514_string()}), found issuer "
            f"{leaf.issuer.rfc4514_string()} and {type(exc).__name__}: {exc}"
        ) from None

    now = _now()
    _check_validity(ca, material.ca_cert, now)
    _check_validity(leaf, material.cert, now)

    if _spki(key.public_key()) != _spki(leaf.public_key()):
        raise CertError(
            f"expected the private key in {material.key} to match the public key of "
            f"{material.cert}, found a different key"
        )
    return leaf


# --------------------------------------------------------------------------- helpers


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _check_name(name: str) -> None:
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
        raise CertError(
            f"expected a name matching ^[A-Za-z0-9][A-Za-z0-9_.-]{{0,62}}$, found {name!r}"
        )
    if name.lower() == "ca":
        raise CertError(f"expected a name other than 'ca' (reserved for the CA), found {name!r}")


def _check_valid_days(valid_days: int) -> None:
    if isinstance(valid_days, bool) or not isinstance(valid_days, int) or valid_days < 1:
        raise CertError(f"expected valid_days to be a positive integer, found {valid_days!r}")


def _name_with_cn(cn: str, *, what: str) -> x509.Name:
    if not isinstance(cn, str) or not 1 <= len(cn) <= 64:
        raise CertError(f"expected {what} of 1 to 64 characters, found {cn!r}")
    try:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    except ValueError as exc:
        raise CertError(f"expected a valid {what}, found {cn!r}: {exc}") from None


def _subject_alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    if isinstance(hosts, str):
        raise CertError(f"expected a sequence of host names, found the string {hosts!r}")
    sans: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in hosts:
        if not isinstance(host, str) or not host or host != host.strip():
            raise CertError(f"expected a host name or IP address, found {host!r}")
        if host in seen:
            continue
        seen.add(host)
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        _check_dns_name(host)
        sans.append(x509.DNSName(host))
    return sans


def _check_dns_name(host: str) -> None:
    """A SAN host must be a plain DNS name: no wildcard, no empty or malformed label.

    A wildcard such as ``*.mesh`` would make a node certificate pass a client's per-node name
    check (gRPC's target-name override) for every node named ``<x>.mesh``.
    """
    if "*" in host:
        raise CertError(
            f"expected a host name without wildcards, found {host!r}: a wildcard SAN would let "
            "this certificate pass the client's name check for every node name it matches"
        )
    if not host.isascii() or len(host) > 253:
        raise CertError(
            f"expected an ASCII DNS name of at most 253 characters or an IP address, found {host!r}"
        )
    bad = [label for label in host.split(".") if _DNS_LABEL_RE.fullmatch(label) is None]
    if bad:
        raise CertError(
            f"expected a DNS name (dot-separated labels of 1 to 63 letters, digits, '-' or '_', "
            f"not starting or ending with '-') or an IP address, found {host!r} "
            f"(bad label {bad[0]!r})"
        )


def _authority_key_identifier(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(_ca_public_key(ca_cert))
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)


def _ca_public_key(ca_cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    public_key = ca_cert.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise CertError(f"expected an ECDSA CA key, found {type(public_key).__name__}")
    return public_key


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path = directory / CA_CERT_FILE
    key_path = directory / CA_KEY_FILE
    for path, what in ((cert_path, "CA certificate"), (key_path, "CA private key")):
        if not path.is_file():
            raise CertError(f"expected {what} at {path}, found no such file; run init_ca first")
    ca_cert = _parse_cert(_read_file(cert_path, "CA certificate"), cert_path)
    ca_key = _parse_key(_read_file(key_path, "CA private key"), key_path)

    if _spki(ca_key.public_key()) != _spki(ca_cert.public_key()):
        raise CertError(
            f"expected the key in {key_path} to match the CA certificate {cert_path}, "
            "found a different key"
        )
    try:
        constraints = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise CertError(
            f"expected {cert_path} to be a CA certificate (BasicConstraints ca=True), "
            "found a certificate that is not a CA"
        )
    _check_validity(ca_cert, cert_path, _now())
    return ca_cert, ca_key


def _check_validity(cert: x509.Certificate, path: Path, now: dt.datetime) -> None:
    start = cert.not_valid_before_utc
    end = cert.not_valid_after_utc
    if now < start:
        raise CertError(
            f"expected {path} to be valid now ({now.isoformat()}), "
            f"found it is not valid before {start.isoformat()}"
        )
    if now > end:
        raise CertError(
            f"expected {path} to be valid now ({now.isoformat()}), "
            f"found it expired at {end.isoformat()}"
        )


def _parse_cert(pem: bytes, path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise CertError(
            f"expected a PEM certificate in {path}, found data that does not parse as one"
        ) from None


def _parse_key(pem: bytes, path: Path) -> ec.EllipticCurvePrivateKey:
    # Never put the exception text or the data in the message: it could echo key bytes.
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise CertError(
            f"expected an unencrypted PEM private key in {path}, found an encrypted key"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise CertError(
            f"expected a PEM private key in {path}, found data that does not parse as one"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"expected an ECDSA private key in {path}, found a {type(key).__name__}")
    return key


def _spki(public_key: object) -> bytes:
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise CertError(f"expected an ECDSA public key, found {type(public_key).__name__}")
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _read_file(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise CertError(f"expected {what} at {path}, found no such file") from None
    except OSError as exc:
        raise CertError(
            f"expected a readable {what} at {path}, found {type(exc).__name__}: "
            f"{exc.strerror or exc}"
        ) from None


def _make_directory(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CertError(
            f"expected to create directory {directory}, found {type(exc).__name__}: "
            f"{exc.strerror or exc}"
        ) from None
    if not directory.is_dir():
        raise CertError(f"expected {directory} to be a directory, found something else")


def _write_file(path: Path, data: bytes, *, mode: int, overwrite: bool) -> None:
    """Write ``data`` to ``path`` so that readers see either nothing or all of it.

    The data goes to a temporary file in the same directory, created with
    ``mode`` (so a key is never readable by others, not even while empty), and
    is then moved into place. Without ``overwrite`` the move fails if ``path``
    has appeared in the meantime.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)  # exact mode, whatever the umask
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    except FileExistsError:
        raise CertError(
            f"expected no existing file at {path}, found one; pass overwrite=True to replace it"
        ) from None
    except OSError as exc:
        raise CertError(
            f"expected to write {path}, found {type(exc).__name__}: {exc.strerror or exc}"
        ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
