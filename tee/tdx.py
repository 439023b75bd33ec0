"""Intel TDX DCAP quotes (v4, and v5 bodies): parsing and verification to Intel's pinned root.

Ref:    Intel TDX DCAP Quoting Library API (quote format v4 appendix; v5 for TDX 1.5), Intel SGX
        PCK certificate/CRL specification. Learned from google/go-tdx-guest and
        Phala-Network/dcap-qvl.
Threat: the host is the adversary and delivers the quote; the quote carries its own attestation
        key and PCK chain, so trusting them alone is forgeable: everything is tied to the pinned
        Intel SGX Root CA. Trusted: that root, the PCK platform/processor CA, Intel's TD Quoting
        Enclave (identity pinned below), the TDX module and the CPU at the reported SVNs.
Checks: 1. header: version 4 or 5, attestation key type 2 (ECDSA P-256), TEE type 0x81 (TDX),
           Intel's QE vendor id; v5 body type 2 (TDX 1.0) or 3 (TDX 1.5);
        2. certification data type 6 (QE report) wrapping type 5 (PCK chain, PEM);
        3. PCK chain leaf -> intermediate -> pinned root (ECDSA-SHA256 only), validity at
           `now`, CRLs when given;
        4. the QE report's ECDSA-P256 signature by the PCK key, and QE identity (MRSIGNER,
           ISVPRODID, attributes and MISCSELECT under their masks);
        5. QE REPORTDATA[0:32] == SHA-256(attestation key || QE auth data), [32:64] zero;
        6. the quote signature (ECDSA-P256, r||s big-endian) by the attestation key over the
           header and body;
        7. policy: TD DEBUG attribute, MRTD allow list, minimum TEE_TCB_SVN, REPORTDATA.
Limits: TCB info and QE identity collateral are not fetched or signature-checked (their signing
        chain is not available offline), so the TCB *status* (UpToDate, OutOfDate, revoked
        FMSPC) is not evaluated: use `Policy.min_tdx_tee_tcb_svn` and CRLs passed in. Bytes
        after the declared signature data are not signed and are ignored.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import SignatureAlgorithmOID

from tee._x509 import load_certificates, verify_chain
from tee.errors import (
    BadChain,
    BadSignature,
    BindingMismatch,
    DebugNotAllowed,
    MalformedEvidence,
    MeasurementNotAllowed,
    PolicyViolation,
    TCBTooLow,
)
from tee.policy import UNPINNED_LAUNCH, Policy
from tee.tcb import tdx_svn_at_least

__all__ = ["TdxClaims", "TdxQuote", "verify_tdx_quote"]

_HEADER_SIZE = 48
_BODY_SIZES = {2: 584, 3: 648}  # v5 body type -> size (TDX 1.0 / TDX 1.5); v4 is type 2
_ATT_KEY_ECDSA_P256 = 2
_TEE_TYPE_TDX = 0x81
_CERT_QE_REPORT, _CERT_PCK_CHAIN = 6, 5
_QE_REPORT_SIZE = 384
_INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
# Intel's TD_QE identity (PCS enclave identity "TD_QE" v2, as in go-tdx-guest's
# sample_qeIdentity_response): the QE that certifies attestation keys must be Intel's.
_TD_QE_MRSIGNER = bytes.fromhex("dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5")
_TD_QE_ISVPRODID = 2
_TD_QE_ATTRIBUTES = bytes.fromhex("11000000000000000000000000000000")
_TD_QE_ATTRIBUTES_MASK = bytes.fromhex("fbffffffffffffff0000000000000000")
_TD_QE_MISCSELECT, _TD_QE_MISCSELECT_MASK = 0x00000000, 0xFFFFFFFF
_TD_ATTR_DEBUG = 0x1  # bit 0 of TD_ATTRIBUTES (TUD.DEBUG)
_TD_ATTR_MIGRATABLE_BYTE3 = 0x20  # bit 29 of TD_ATTRIBUTES (MIGRATABLE), in byte 3
_ECDSA_SHA256_ONLY = frozenset({SignatureAlgorithmOID.ECDSA_WITH_SHA256})


def _p256_key(raw: bytes) -> ec.EllipticCurvePublicKey:
    """An uncompressed P-256 public key given as x||y (64 bytes), as quotes encode it."""
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)
    except ValueError:
        raise MalformedEvidence("attestation key is not a point on P-256") from None


def _verify_p256(key: ec.EllipticCurvePublicKey, signature: bytes, data: bytes, what: str) -> None:
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    try:
        key.verify(der, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise BadSignature(f"{what} signature does not verify") from None


@dataclass(frozen=True, slots=True)
class TdxQuote:
    """A parsed TDX quote: the signed region, the TD body fields and the signature data."""

    version: int
    signed: bytes  # header + (v5 body descriptor) + body: what the attestation key signed
    body: bytes  # TD quote body, 584 or 648 bytes
    qe_vendor_id: bytes
    signature: bytes  # 64 bytes r||s, big-endian
    attestation_key: bytes  # 64 bytes x||y
    qe_report: bytes  # 384-byte SGX report body of the Quoting Enclave
    qe_report_signature: bytes  # 64 bytes r||s by the PCK key
    qe_auth_data: bytes
    pck_chain_pem: bytes

    @classmethod
    def parse(cls, raw: bytes) -> TdxQuote:
        """Parse a v4 or v5 quote; raises MalformedEvidence on anything else."""
        try:
            return cls._parse(raw)
        except struct.error:
            raise MalformedEvidence("TDX quote is truncated") from None

    @classmethod
    def _parse(cls, raw: bytes) -> TdxQuote:
        version, key_type, tee_type = struct.unpack_from("<HHI", raw, 0)
        if version not in (4, 5):
            raise MalformedEvidence(f"unsupported TDX quote version {version}")
        if key_type != _ATT_KEY_ECDSA_P256 or tee_type != _TEE_TYPE_TDX:
            raise MalformedEvidence(
                f"not an ECDSA-P256 TDX quote (key {key_type}, tee {tee_type:#x})"
            )
        if version == 4:
            body_type, body_start = 2, _HEADER_SIZE
        else:
            body_type, body_size = struct.unpack_from("<HI", raw, _HEADER_SIZE)
            body_start = _HEADER_SIZE + 6
            if _BODY_SIZES.get(body_type) != body_size:
                raise MalformedEvidence(f"unsupported v5 body type {body_type} of {body_size} B")
        end = body_start + _BODY_SIZES[body_type]
        (sig_len,) = struct.unpack_from("<I", raw, end)
        sig = raw[end + 4 : end + 4 + sig_len]
        if len(sig) != sig_len:
            raise MalformedEvidence("TDX quote signature data is truncated")
        cert_type, cert_size = struct.unpack_from("<HI", sig, 128)
        outer = sig[134 : 134 + cert_size]
        if cert_type != _CERT_QE_REPORT or len(outer) != cert_size:
            raise MalformedEvidence(f"certification data type {cert_type} is not a QE report (6)")
        (auth_len,) = struct.unpack_from("<H", outer, _QE_REPORT_SIZE + 64)
        auth_end = _QE_REPORT_SIZE + 66 + auth_len
        inner_type, inner_size = struct.unpack_from("<HI", outer, auth_end)
        chain = outer[auth_end + 6 : auth_end + 6 + inner_size]
        if inner_type != _CERT_PCK_CHAIN or len(chain) != inner_size:
            raise MalformedEvidence(f"QE certification data type {inner_type} is not a PCK chain")
        return cls(
            version=version,
            signed=raw[:end],
            body=raw[body_start:end],
            qe_vendor_id=raw[12:28],
            signature=sig[:64],
            attestation_key=sig[64:128],
            qe_report=outer[:_QE_REPORT_SIZE],
            qe_report_signature=outer[_QE_REPORT_SIZE : _QE_REPORT_SIZE + 64],
            qe_auth_data=outer[_QE_REPORT_SIZE + 66 : auth_end],
            pck_chain_pem=chain,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class TdxClaims:
    """What a verified TDX quote attests (only returned after every check passed)."""

    version: int
    tee_tcb_svn: bytes  # 16 B
    mr_seam: bytes  # 48 B, TDX module measurement
    mr_signer_seam: bytes
    td_attributes: bytes  # 8 B
    xfam: bytes
    mr_td: bytes  # 48 B, initial TD measurement (the launch measurement)
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes  # 64 B
    debug: bool
    qe_svn: int
    pck_subject: str
    simulated: bool = False

    @classmethod
    def from_body(cls, quote: TdxQuote, *, pck: x509.Certificate) -> TdxClaims:
        b = quote.body
        return cls(
            version=quote.version,
            tee_tcb_svn=b[0:16],
            mr_seam=b[16:64],
            mr_signer_seam=b[64:112],
            td_attributes=b[120:128],
            xfam=b[128:136],
            mr_td=b[136:184],
            mr_config_id=b[184:232],
            mr_owner=b[232:280],
            mr_owner_config=b[280:328],
            rtmrs=(b[328:376], b[376:424], b[424:472], b[472:520]),
            report_data=b[520:584],
            debug=bool(b[120] & _TD_ATTR_DEBUG),
            qe_svn=struct.unpack_from("<H", quote.qe_report, 258)[0],
            pck_subject=pck.subject.rfc4514_string(),
        )


def _check_qe_identity(qe_report: bytes) -> None:
    misc = struct.unpack_from("<I", qe_report, 16)[0]
    attributes = bytes(a & m for a, m in zip(qe_report[48:64], _TD_QE_ATTRIBUTES_MASK, strict=True))
    if (
        not hmac.compare_digest(qe_report[128:160], _TD_QE_MRSIGNER)
        or struct.unpack_from("<H", qe_report, 256)[0] != _TD_QE_ISVPRODID
        or misc & _TD_QE_MISCSELECT_MASK != _TD_QE_MISCSELECT
        or attributes != _TD_QE_ATTRIBUTES
    ):
        raise BadChain("the quoting enclave is not Intel's TD QE")


def _check_policy(claims: TdxClaims, policy: Policy) -> None:
    if claims.debug and not policy.allow_debug:
        raise DebugNotAllowed("TD attributes allow debugging and policy forbids it")
    if claims.td_attributes[3] & _TD_ATTR_MIGRATABLE_BYTE3 and not policy.allow_migration:
        raise PolicyViolation("TD_ATTRIBUTES.MIGRATABLE is set and policy forbids migration")
    allowed = policy.allowed_launch_measurements
    if allowed is not None and not any(hmac.compare_digest(claims.mr_td, m) for m in allowed):
        raise MeasurementNotAllowed(
            f"MRTD {claims.mr_td.hex()} is not in the allow list"
            + ("" if allowed else f" ({UNPINNED_LAUNCH})")
        )
    rtmrs = b"".join(claims.rtmrs[:3])
    pinned = policy.allowed_tdx_rtmrs
    if pinned is not None and not any(hmac.compare_digest(rtmrs, r) for r in pinned):
        raise MeasurementNotAllowed(
            f"RTMR0-2 {rtmrs.hex()} are not in the allow list (the TD's kernel, initrd and "
            "command line are measured there, not in MRTD)"
        )
    owner = policy.expected_tdx_owner_fields
    fields = claims.mr_config_id + claims.mr_owner + claims.mr_owner_config
    if owner is not None and not hmac.compare_digest(fields, owner):
        raise PolicyViolation("MRCONFIGID || MROWNER || MROWNERCONFIG differ from the expected")
    minimum = policy.min_tdx_tee_tcb_svn
    if minimum is not None and not tdx_svn_at_least(claims.tee_tcb_svn, minimum):
        raise TCBTooLow(f"TEE_TCB_SVN {claims.tee_tcb_svn.hex()} is below {minimum.hex()}")
    expected = policy.expected_report_data
    if expected is not None and not hmac.compare_digest(claims.report_data, expected):
        raise BindingMismatch("REPORTDATA differs from the expected value")


def verify_tdx_quote(
    raw: bytes,
    *,
    root: x509.Certificate,
    policy: Policy,
    now: datetime,
    crls: Sequence[x509.CertificateRevocationList] = (),
) -> TdxClaims:
    """Verify a TDX DCAP quote against the pinned Intel SGX root; returns its claims or raises.

    Args:
        raw: The quote bytes (configfs-tsm `outblob` on a TD).
        root: The pinned Intel SGX Root CA certificate (e.g. from Intel's `trusted_root.pem`).
        policy: The acceptance rules (debug, MRTD, minimum TEE_TCB_SVN, REPORTDATA).
        now: The verification time (timezone-aware) for certificate and CRL validity.
        crls: PCK and root CRLs (DER as Intel PCS serves them), checked when given.
    """
    quote = TdxQuote.parse(raw)
    if not hmac.compare_digest(quote.qe_vendor_id, _INTEL_QE_VENDOR_ID):
        raise MalformedEvidence(f"QE vendor {quote.qe_vendor_id.hex()} is not Intel")
    chain = load_certificates(quote.pck_chain_pem)
    verify_chain(chain, root=root, now=now, crls=crls, allowed_signature_oids=_ECDSA_SHA256_ONLY)
    pck_key = chain[0].public_key()
    if not isinstance(pck_key, ec.EllipticCurvePublicKey) or pck_key.curve.name != "secp256r1":
        raise BadChain("PCK key is not ECDSA P-256")
    _verify_p256(pck_key, quote.qe_report_signature, quote.qe_report, "QE report")
    _check_qe_identity(quote.qe_report)
    expected = hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest() + bytes(32)
    if not hmac.compare_digest(quote.qe_report[320:384], expected):
        raise BadChain("the attestation key is not certified by the QE report")
    _verify_p256(_p256_key(quote.attestation_key), quote.signature, quote.signed, "TDX quote")
    claims = TdxClaims.from_body(quote, pck=chain[0])
    _check_policy(claims, policy)
    return claims
