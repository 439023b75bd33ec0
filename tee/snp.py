"""AMD SEV-SNP attestation reports: parsing and verification against AMD's pinned roots.

Ref:    AMD SEV-SNP Firmware ABI Specification (56860), "ATTESTATION_REPORT Structure" and
        "Signature Format"; GHCB spec (56421) 4.1.8.1 for the certificate table; AMD VCEK
        certificate spec (57230) for the VCEK extensions. Learned from google/go-sev-guest.
Threat: the host/hypervisor is the adversary: it controls the report's transport and the
        certificates it hands over, so both are checked here. Trusted: AMD's ARK (pinned from
        an ``ask_ark_<product>.pem`` file), the AMD-SP firmware at the reported TCB, the CPU.
Checks: 1. structure: size 1184, version 2..5, signature algorithm 1 (ECDSA P-384 SHA-384);
        2. chain VCEK -> ASK -> ARK, every link RSASSA-PSS with SHA-384, ARK self-signed and
           byte-identical to the pinned ARK, validity at `now`, CRLs when given;
        3. the report signature: ECDSA P-384 over bytes 0x000..0x29F, r and s little-endian
           (72 bytes each) at 0x2A0, by the VCEK's key;
        4. the VCEK's TCB extensions equal REPORTED_TCB and its hwID equals CHIP_ID;
        5. policy: debug bit, launch measurement allow list, minimum TCB, REPORT_DATA.
Limits: VLEK-signed reports are refused (no VLEK-signed vector to test them against); AMD's KDS
        is not contacted, so TCB recovery and CRL freshness are whatever the caller passes in.
"""

from __future__ import annotations

import hmac
import struct
import uuid
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
from tee.tcb import SnpTcb

__all__ = [
    "SnpCertTable",
    "SnpClaims",
    "SnpReport",
    "SnpTrust",
    "build_cert_table",
    "parse_cert_table",
    "verify_snp_report",
]

REPORT_SIZE = 0x4A0  # 1184 bytes
_SIGNED_END = 0x2A0  # the signature covers bytes [0, 0x2A0)
_SIG_COMPONENT = 72  # bytes of r and of s, little-endian, zero-padded
_POLICY_DEBUG = 1 << 19
_POLICY_MIGRATE_MA = 1 << 18
_SIGNING_KEY_VCEK, _SIGNING_KEY_VLEK = 0, 1
_AMD_OID = "1.3.6.1.4.1.3704.1."
_VCEK_TCB_OIDS = {  # extension OID -> SnpTcb field
    _AMD_OID + "3.1": "bootloader",
    _AMD_OID + "3.2": "tee",
    _AMD_OID + "3.3": "snp",
    _AMD_OID + "3.8": "microcode",
    _AMD_OID + "3.9": "fmc",
}
_OID_PRODUCT, _OID_HWID = _AMD_OID + "2", _AMD_OID + "4"
_PSS_ONLY = frozenset({SignatureAlgorithmOID.RSASSA_PSS})

# GHCB spec 4.1.8.1: certificate table GUIDs (RFC 4122 byte order).
GUID_VCEK = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
GUID_ASK = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
GUID_ARK = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")


@dataclass(frozen=True, slots=True)
class SnpReport:
    """The fields of an ATTESTATION_REPORT this package uses (offsets from the ABI spec)."""

    raw: bytes
    version: int  # 0x000
    guest_svn: int  # 0x004
    policy: int  # 0x008, bit 19 = DEBUG allowed
    vmpl: int  # 0x030
    signature_algo: int  # 0x034, 1 = ECDSA P-384 with SHA-384
    current_tcb: int  # 0x038
    signing_key: int  # 0x048 bits 4:2, 0 = VCEK, 1 = VLEK, 7 = none
    mask_chip_id: bool  # 0x048 bit 1
    report_data: bytes  # 0x050, 64 bytes
    measurement: bytes  # 0x090, 48 bytes
    host_data: bytes  # 0x0C0, 32 bytes
    reported_tcb: int  # 0x180
    chip_id: bytes  # 0x1A0, 64 bytes
    committed_tcb: int  # 0x1E0
    launch_tcb: int  # 0x1F0
    signature_r: int  # 0x2A0, little-endian 72 bytes
    signature_s: int  # 0x2E8, little-endian 72 bytes

    @property
    def debug(self) -> bool:
        return bool(self.policy & _POLICY_DEBUG)

    @classmethod
    def parse(cls, raw: bytes) -> SnpReport:
        """Parse a 1184-byte report; raises MalformedEvidence on a wrong size or version."""
        if len(raw) != REPORT_SIZE:
            raise MalformedEvidence(f"SEV-SNP report must be {REPORT_SIZE} bytes, got {len(raw)}")
        version, guest_svn, policy = struct.unpack_from("<IIQ", raw, 0x000)
        if not 2 <= version <= 5:
            raise MalformedEvidence(f"unsupported SEV-SNP report version {version}")
        vmpl, algo, current_tcb, _platform_info, flags = struct.unpack_from("<IIQQI", raw, 0x030)
        sig = raw[_SIGNED_END:]
        return cls(
            raw=raw,
            version=version,
            guest_svn=guest_svn,
            policy=policy,
            vmpl=vmpl,
            signature_algo=algo,
            current_tcb=current_tcb,
            signing_key=(flags >> 2) & 0x7,
            mask_chip_id=bool(flags & 0x2),
            report_data=raw[0x050:0x090],
            measurement=raw[0x090:0x0C0],
            host_data=raw[0x0C0:0x0E0],
            reported_tcb=struct.unpack_from("<Q", raw, 0x180)[0],
            chip_id=raw[0x1A0:0x1E0],
            committed_tcb=struct.unpack_from("<Q", raw, 0x1E0)[0],
            launch_tcb=struct.unpack_from("<Q", raw, 0x1F0)[0],
            signature_r=int.from_bytes(sig[:_SIG_COMPONENT], "little"),
            signature_s=int.from_bytes(sig[_SIG_COMPONENT : 2 * _SIG_COMPONENT], "little"),
        )


@dataclass(frozen=True, slots=True)
class SnpCertTable:
    """Certificates the host returned with an extended report (configfs-tsm `auxblob`)."""

    vcek: x509.Certificate | None
    ask: x509.Certificate | None
    ark: x509.Certificate | None


def parse_cert_table(blob: bytes) -> SnpCertTable:
    """Parse a GHCB certificate table: entries (GUID, offset u32, length u32), zero-terminated."""
    found: dict[uuid.UUID, x509.Certificate] = {}
    pos = 0
    while True:
        if pos + 24 > len(blob):
            raise MalformedEvidence("certificate table is not terminated by a zero entry")
        guid_bytes, offset, length = struct.unpack_from("<16sII", blob, pos)
        pos += 24
        if guid_bytes == bytes(16):
            break
        if offset + length > len(blob) or offset < pos:
            raise MalformedEvidence("certificate table entry points outside the blob")
        guid = uuid.UUID(bytes=guid_bytes)
        if guid in (GUID_VCEK, GUID_ASK, GUID_ARK):
            found[guid] = load_certificates(blob[offset : offset + length])[0]
    return SnpCertTable(found.get(GUID_VCEK), found.get(GUID_ASK), found.get(GUID_ARK))


def build_cert_table(entries: Sequence[tuple[uuid.UUID, bytes]]) -> bytes:
    """Encode (GUID, DER) pairs as a GHCB certificate table (what a host or test provides)."""
    header = (len(entries) + 1) * 24
    table, payload = b"", b""
    for guid, der in entries:
        table += struct.pack("<16sII", guid.bytes, header + len(payload), len(der))
        payload += der
    return table + bytes(24) + payload


@dataclass(frozen=True, slots=True)
class SnpTrust:
    """Pinned AMD roots for one product line: the ARK (root) and its ASK, from AMD's PEM file."""

    product: str  # "Milan", "Genoa", "Turin"
    ask: x509.Certificate
    ark: x509.Certificate

    @classmethod
    def from_pem(cls, data: bytes) -> SnpTrust:
        """Load an ``ask_ark_<product>.pem`` (ASK first, then the self-signed ARK)."""
        certs = load_certificates(data)
        if len(certs) != 2 or certs[1].subject != certs[1].issuer:
            raise MalformedEvidence("expected an ASK then a self-signed ARK")
        cn = certs[1].subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
        if not isinstance(cn, str) or not cn.startswith("ARK-"):
            raise MalformedEvidence(f"root {cn!r} is not an AMD ARK")
        return cls(product=cn.removeprefix("ARK-"), ask=certs[0], ark=certs[1])


@dataclass(frozen=True, slots=True, kw_only=True)
class SnpClaims:
    """What a verified SEV-SNP report attests (only returned after every check passed)."""

    product: str
    version: int
    guest_svn: int
    policy: int
    debug: bool
    vmpl: int
    measurement: bytes
    report_data: bytes
    host_data: bytes
    chip_id: bytes
    reported_tcb: SnpTcb
    committed_tcb: SnpTcb
    launch_tcb: SnpTcb
    simulated: bool = False


def _der_value(raw: bytes, tag: int) -> bytes:
    """The content of a short DER TLV with `tag` (the VCEK's extensions are all short)."""
    if len(raw) < 2 or raw[0] != tag or raw[1] & 0x80 or raw[1] != len(raw) - 2:
        raise MalformedEvidence(f"VCEK extension is not a short DER value with tag {tag:#x}")
    return raw[2:]


def _vcek_extension(vcek: x509.Certificate, oid: str) -> bytes | None:
    for ext in vcek.extensions:
        if ext.oid.dotted_string == oid and isinstance(ext.value, x509.UnrecognizedExtension):
            return ext.value.value
    return None


def _vcek_product(vcek: x509.Certificate) -> str:
    raw = _vcek_extension(vcek, _OID_PRODUCT)
    if raw is None:
        raise BadChain("VCEK has no productName extension")
    return _der_value(raw, 0x16).decode("ascii").split("-")[0]  # IA5String "Milan-B0"


def _vcek_tcb(vcek: x509.Certificate) -> SnpTcb:
    spl: dict[str, int] = {}
    for oid, field in _VCEK_TCB_OIDS.items():
        raw = _vcek_extension(vcek, oid)
        if raw is not None:
            spl[field] = int.from_bytes(_der_value(raw, 0x02), "big", signed=True)
    missing = {"bootloader", "tee", "snp", "microcode"} - spl.keys()
    if missing:
        raise BadChain(f"VCEK lacks TCB extensions {sorted(missing)}")
    return SnpTcb(**spl)


def _vcek_hwid(vcek: x509.Certificate, product: str) -> bytes:
    """The chip id the VCEK was issued for, as the report's 64-byte CHIP_ID carries it.

    AMD encodes the hwID extension raw: 64 bytes, except on Turin, where the key server
    issues VCEKs for an 8-byte id and the report's CHIP_ID is those 8 bytes then 56 zeros."""
    raw = _vcek_extension(vcek, _OID_HWID)
    if raw is None:
        raise BadChain("VCEK has no hwID extension")
    if len(raw) == 8 and product == "Turin":
        return raw + bytes(56)
    return raw if len(raw) == 64 else _der_value(raw, 0x04)


def _check_report_signature(report: SnpReport, vcek: x509.Certificate) -> None:
    key = vcek.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise BadChain("VCEK key is not ECDSA P-384")
    signature = encode_dss_signature(report.signature_r, report.signature_s)
    try:
        key.verify(signature, report.raw[:_SIGNED_END], ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise BadSignature("SEV-SNP report signature does not verify with the VCEK") from None


def _check_policy(report: SnpReport, tcb: SnpTcb, policy: Policy) -> None:
    if report.debug and not policy.allow_debug:
        raise DebugNotAllowed("guest policy allows debugging (bit 19) and policy forbids it")
    if report.policy & _POLICY_MIGRATE_MA and not policy.allow_migration:
        raise PolicyViolation(
            "guest policy allows a migration agent (bit 18, MIGRATE_MA), which can export the "
            "guest's memory, and policy forbids it"
        )
    if policy.snp_vmpl is not None and report.vmpl != policy.snp_vmpl:
        raise PolicyViolation(f"report was requested at VMPL {report.vmpl}, not {policy.snp_vmpl}")
    allowed = policy.allowed_launch_measurements
    if allowed is not None and not any(hmac.compare_digest(report.measurement, m) for m in allowed):
        raise MeasurementNotAllowed(
            f"launch measurement {report.measurement.hex()} is not in the allow list"
            + ("" if allowed else f" ({UNPINNED_LAUNCH})")
        )
    if policy.min_snp_tcb is not None and not tcb.at_least(policy.min_snp_tcb):
        raise TCBTooLow(f"reported TCB {tcb} is below the minimum {policy.min_snp_tcb}")
    expected = policy.expected_report_data
    if expected is not None and not hmac.compare_digest(report.report_data, expected):
        raise BindingMismatch("REPORT_DATA differs from the expected value")


def verify_snp_report(
    raw: bytes,
    *,
    vcek: x509.Certificate,
    trust: Sequence[SnpTrust],
    policy: Policy,
    now: datetime,
    ask: x509.Certificate | None = None,
    crls: Sequence[x509.CertificateRevocationList] = (),
) -> SnpClaims:
    """Verify an SEV-SNP report against pinned AMD roots; returns its claims or raises.

    Args:
        raw: The 1184-byte ATTESTATION_REPORT.
        vcek: The VCEK certificate (from the host's certificate table or AMD's KDS: untrusted).
        trust: Pinned roots per product; the one matching the VCEK's product is used.
        policy: The acceptance rules (debug, launch measurement, minimum TCB, REPORT_DATA).
        now: The verification time (timezone-aware) for certificate and CRL validity.
        ask: An ASK offered with the evidence; defaults to the pinned one. Either must chain.
        crls: AMD CRLs to check the ASK and VCEK against (not fetched here).
    """
    report = SnpReport.parse(raw)
    if report.signature_algo != 1:
        raise MalformedEvidence(f"signature algorithm {report.signature_algo} is not ECDSA P-384")
    if report.signing_key != _SIGNING_KEY_VCEK:
        raise MalformedEvidence(f"report is signed by key type {report.signing_key}, not a VCEK")
    product = _vcek_product(vcek)
    roots = [t for t in trust if t.product == product]
    if not roots:
        raise BadChain(f"no pinned AMD root for product {product!r}")
    pinned = roots[0]
    verify_chain(
        [vcek, ask or pinned.ask],
        root=pinned.ark,
        now=now,
        crls=crls,
        allowed_signature_oids=_PSS_ONLY,
    )
    _check_report_signature(report, vcek)
    reported = SnpTcb.from_u64(report.reported_tcb, product=product)
    if _vcek_tcb(vcek) != reported:
        raise BadChain(f"VCEK was issued for TCB {_vcek_tcb(vcek)}, report says {reported}")
    if not report.mask_chip_id and not hmac.compare_digest(
        _vcek_hwid(vcek, product), report.chip_id
    ):
        raise BadChain("VCEK hwID does not match the report's CHIP_ID")
    _check_policy(report, reported, policy)
    return SnpClaims(
        product=product,
        version=report.version,
        guest_svn=report.guest_svn,
        policy=report.policy,
        debug=report.debug,
        vmpl=report.vmpl,
        measurement=report.measurement,
        report_data=report.report_data,
        host_data=report.host_data,
        chip_id=report.chip_id,
        reported_tcb=reported,
        committed_tcb=SnpTcb.from_u64(report.committed_tcb, product=product),
        launch_tcb=SnpTcb.from_u64(report.launch_tcb, product=product),
    )
