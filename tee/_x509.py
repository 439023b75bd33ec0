"""Certificate-chain checks shared by the SEV-SNP and TDX verifiers (hazmat, internal).

Every failure here is a `BadChain` (or its `Expired`/`Revoked`), a certificate signature that
does not verify included; `BadSignature` is kept for the evidence's own signatures.
`verify_chain(chain, root=..., now=...)` accepts a leaf-first chain only if it ends at the
PINNED root: a self-signed certificate in the chain that is not byte-identical to the pinned
root is refused (that is how a quote "verified against its own embedded key" is caught).
For each link it checks the issuer name, the signature (RSA-PKCS1/RSA-PSS/ECDSA through
`cryptography`), that the issuer is a CA allowed to sign certificates, the validity period at
`now`, path-length constraints, the allowed signature algorithms, and, when CRLs are given,
revocation.

Limits: no name constraints or policy processing (neither AMD's nor Intel's chains use them),
and CRLs are only those passed in: nothing is fetched, so their freshness is the caller's.
"""

from __future__ import annotations

import hmac
import warnings
from collections.abc import Iterable, Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning

from tee.errors import BadChain, Expired, MalformedEvidence, Revoked

__all__ = ["load_certificates", "verify_chain"]


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Certificates from PEM (one or more) or a single DER certificate.

    AMD's VCEKs carry serial number 0, which RFC 5280 disallows; cryptography warns about it and
    we silence only that warning (the serial plays no part in SEV-SNP verification).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        try:
            if b"-----BEGIN CERTIFICATE-----" in data:
                return x509.load_pem_x509_certificates(data)
            return [x509.load_der_x509_certificate(data)]
        except ValueError as exc:
            raise MalformedEvidence(f"unparseable certificate: {exc}") from None


def _name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def _same(a: x509.Certificate, b: x509.Certificate) -> bool:
    return hmac.compare_digest(a.public_bytes(Encoding.DER), b.public_bytes(Encoding.DER))


def _check_validity(cert: x509.Certificate, now: datetime) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise Expired(
            f"certificate {_name(cert)!r} is valid {cert.not_valid_before_utc.isoformat()} .. "
            f"{cert.not_valid_after_utc.isoformat()}, not at {now.isoformat()}"
        )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False  # AMD's VCEKs carry no basicConstraints


def _check_can_sign_certs(issuer: x509.Certificate, cas_below: int) -> None:
    """`issuer` must be a CA allowed to sign certificates with `cas_below` CAs under it."""
    try:
        basic = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise BadChain(f"issuer {_name(issuer)!r} has no basicConstraints") from None
    if not basic.ca:
        raise BadChain(f"issuer {_name(issuer)!r} is not a CA")
    if basic.path_length is not None and cas_below > basic.path_length:
        raise BadChain(
            f"{_name(issuer)!r} allows {basic.path_length} CAs below it, not {cas_below}"
        )
    try:
        usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.key_cert_sign:
        raise BadChain(f"issuer {_name(issuer)!r} may not sign certificates")


def _check_signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    try:
        cert.verify_directly_issued_by(issuer)
    except InvalidSignature:
        raise BadChain(f"{_name(cert)!r} is not signed by {_name(issuer)!r}") from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise BadChain(f"{_name(cert)!r} is not issued by {_name(issuer)!r}: {exc}") from None


def _check_crls(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    crls: Iterable[x509.CertificateRevocationList],
    now: datetime,
) -> None:
    for crl in crls:
        if crl.issuer != issuer.subject:
            continue
        if not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
            raise BadChain(f"CRL claiming issuer {_name(issuer)!r} is not signed by it")
        next_update = crl.next_update_utc
        if crl.last_update_utc > now or (next_update is not None and next_update < now):
            raise Expired(
                f"CRL of {_name(issuer)!r} covers {crl.last_update_utc.isoformat()} .. "
                f"{next_update.isoformat() if next_update else 'open'}, not {now.isoformat()}"
            )
        if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            raise Revoked(f"certificate {_name(cert)!r} is revoked by its issuer's CRL")


def verify_chain(
    chain: Sequence[x509.Certificate],
    *,
    root: x509.Certificate,
    now: datetime,
    crls: Sequence[x509.CertificateRevocationList] = (),
    allowed_signature_oids: frozenset[x509.ObjectIdentifier] | None = None,
) -> None:
    """Check a leaf-first `chain` up to the pinned `root`; raises a BadChain/BadSignature subclass.

    The chain may or may not include the root itself. `allowed_signature_oids`, when given,
    restricts every signature algorithm on the path (e.g. RSASSA-PSS for AMD).
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    if not chain:
        raise BadChain("empty certificate chain")
    path = list(chain)
    if _same(path[-1], root):
        path.pop()
    for cert in path:
        if cert.subject == cert.issuer:
            raise BadChain(
                f"chain ends at self-issued {_name(cert)!r}, which is not the pinned root "
                f"{_name(root)!r}"
            )
    if path and _is_ca(path[0]):  # the leaf signs evidence, never certificates
        raise BadChain(f"the signing certificate {_name(path[0])!r} is a CA certificate")
    path.append(root)
    _check_signed_by(root, root)  # the pinned root is self-signed
    for cert in path:
        _check_validity(cert, now)
        if (
            allowed_signature_oids is not None
            and cert.signature_algorithm_oid not in allowed_signature_oids
        ):
            raise BadChain(
                f"{_name(cert)!r} is signed with {cert.signature_algorithm_oid.dotted_string}, "
                "which this platform never uses"
            )
    for below, (cert, issuer) in enumerate(zip(path, path[1:], strict=False)):
        _check_can_sign_certs(issuer, cas_below=below)  # path[1:below+1] are CAs under issuer
        _check_signed_by(cert, issuer)
        _check_crls(cert, issuer, crls, now)
