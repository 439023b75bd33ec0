"""Self-made CAs and re-signed evidence for negative tests (an attacker's toolkit, test-only).

Each forgery is internally consistent (every signature verifies with the keys it embeds), so a
verifier that trusted embedded keys would accept it; only pinning the real root rejects it.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tee.tdx import TdxQuote

NOT_BEFORE = datetime(2020, 1, 1, tzinfo=UTC)
NOT_AFTER = datetime(2040, 1, 1, tzinfo=UTC)
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass
class Issued:
    cert: x509.Certificate
    key: PrivateKey


def issue(
    subject: x509.Name,
    key: PrivateKey,
    *,
    issuer: Issued | None = None,
    ca: bool,
    extensions: Sequence[x509.Extension[x509.ExtensionType]] = (),
    serial: int = 1000,
    path_length: int | None = None,
) -> Issued:
    """A certificate for `key`, signed by `issuer` (self-signed when None): RSA-PSS or ECDSA."""
    signer_key = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True
        )
    )
    for ext in extensions:
        builder = builder.add_extension(ext.value, critical=ext.critical)
    if isinstance(signer_key, rsa.RSAPrivateKey):
        cert = builder.sign(signer_key, hashes.SHA384(), rsa_padding=_PSS)
    else:
        cert = builder.sign(signer_key, hashes.SHA256())
    return Issued(cert, key)


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def fake_amd_chain(
    real_vcek: x509.Certificate, real_ask: x509.Certificate, real_ark: x509.Certificate
) -> tuple[Issued, Issued, Issued]:
    """ARK -> ASK -> VCEK with AMD's names and the real VCEK's extensions, under our keys."""
    ark = issue(real_ark.subject, rsa_key(), ca=True)
    ask = issue(real_ask.subject, rsa_key(), issuer=ark, ca=True)
    amd_exts = [
        e for e in real_vcek.extensions if e.oid.dotted_string.startswith("1.3.6.1.4.1.3704")
    ]
    vcek = issue(
        real_vcek.subject,
        ec.generate_private_key(ec.SECP384R1()),
        issuer=ask,
        ca=False,
        extensions=amd_exts,
    )
    return ark, ask, vcek


def sign_snp_report(report: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """Re-sign an SEV-SNP report's bytes 0..0x29F as the firmware would (r, s little-endian)."""
    r, s = decode_dss_signature(key.sign(report[:0x2A0], ec.ECDSA(hashes.SHA384())))
    signature = r.to_bytes(72, "little") + s.to_bytes(72, "little")
    return report[:0x2A0] + signature + bytes(0x200 - len(signature))


def fake_intel_chain(real_pem_chain: bytes) -> tuple[Issued, Issued, Issued]:
    """Root -> PCK CA -> PCK with Intel's names, under our P-256 keys."""
    leaf, inter, root = x509.load_pem_x509_certificates(real_pem_chain)
    fake_root = issue(root.subject, ec.generate_private_key(ec.SECP256R1()), ca=True)
    fake_ca = issue(
        inter.subject, ec.generate_private_key(ec.SECP256R1()), issuer=fake_root, ca=True
    )
    fake_pck = issue(
        leaf.subject, ec.generate_private_key(ec.SECP256R1()), issuer=fake_ca, ca=False
    )
    return fake_root, fake_ca, fake_pck


def _p256_sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def forge_tdx_quote(
    real: bytes,
    *,
    pck_key: ec.EllipticCurvePrivateKey,
    chain: Sequence[x509.Certificate],
    body: bytes | None = None,
    bind_attestation_key: bool = True,
) -> bytes:
    """A v4 quote with a new attestation key, certified by a QE report signed by `pck_key`."""
    parsed = TdxQuote.parse(real)
    signed = real[:48] + (parsed.body if body is None else body)
    att_key = ec.generate_private_key(ec.SECP256R1())
    att_raw = att_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)[1:]
    auth = parsed.qe_auth_data
    binding = hashlib.sha256(att_raw + auth).digest() if bind_attestation_key else bytes(32)
    qe_report = parsed.qe_report[:320] + binding + bytes(32)
    pem = b"".join(c.public_bytes(Encoding.PEM) for c in chain)
    outer = (
        qe_report
        + _p256_sign(pck_key, qe_report)
        + struct.pack("<H", len(auth))
        + auth
        + struct.pack("<HI", 5, len(pem))
        + pem
    )
    sig_data = _p256_sign(att_key, signed) + att_raw + struct.pack("<HI", 6, len(outer)) + outer
    return signed + struct.pack("<I", len(sig_data)) + sig_data


def flip_bit(data: bytes, offset: int, bit: int = 0) -> bytes:
    return data[:offset] + bytes([data[offset] ^ (1 << bit)]) + data[offset + 1 :]
