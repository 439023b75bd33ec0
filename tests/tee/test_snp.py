"""AMD SEV-SNP report verification on go-sev-guest's public vectors, and every negative case."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from tee import (
    BadChain,
    BadSignature,
    BindingMismatch,
    DebugNotAllowed,
    Expired,
    MalformedEvidence,
    MeasurementNotAllowed,
    Policy,
    PolicyViolation,
    SnpTcb,
    SnpTrust,
    TCBTooLow,
    verify_snp_report,
)
from tee.snp import GUID_ARK, GUID_ASK, GUID_VCEK, SnpReport, build_cert_table, parse_cert_table

from .conftest import SNP_NOW
from .forge import fake_amd_chain, flip_bit, issue, sign_snp_report

MEASUREMENT = bytes.fromhex(
    "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b"
    "6bdf8a9ece31a5a608eb0cf2e4872b01"
)
REPORT_DATA = bytes.fromhex("0102030405") + bytes(59)
# The vector's guest runs with policy 0xb0000: bit 19 (DEBUG) is set, so accepting it needs
# allow_debug=True; the default policy refuses it (test_debug_guest_refused_by_default).
VECTOR_POLICY = Policy(
    allowed_launch_measurements=frozenset({MEASUREMENT}),
    allowed_code_measurements=None,
    expected_report_data=REPORT_DATA,
    allow_debug=True,
    min_snp_tcb=SnpTcb(bootloader=2, tee=0, snp=5, microcode=68),
)


def _verify(report: bytes, vcek: x509.Certificate, trust: list[SnpTrust], **kw: object):
    args = {"policy": VECTOR_POLICY, "now": SNP_NOW} | kw
    return verify_snp_report(report, vcek=vcek, trust=trust, **args)  # type: ignore[arg-type]


def test_public_vector_verifies(snp_report, vcek, milan, genoa, turin) -> None:
    claims = _verify(snp_report, vcek, [genoa, milan, turin])
    assert claims.product == "Milan" and claims.version == 2
    assert claims.measurement == MEASUREMENT and claims.report_data == REPORT_DATA
    assert claims.reported_tcb == SnpTcb(bootloader=2, tee=0, snp=5, microcode=68)
    assert claims.debug and claims.vmpl == 0 and not claims.simulated


def test_report_fields_parse_at_spec_offsets(snp_report) -> None:
    report = SnpReport.parse(snp_report)
    assert report.policy == 0xB0000 and report.signature_algo == 1 and report.signing_key == 0
    assert report.chip_id.hex().startswith("3ac3fe21") and report.launch_tcb == report.reported_tcb


@pytest.mark.parametrize(
    ("offset", "what"),
    [(0x090, "measurement"), (0x050, "report data"), (0x008, "policy"), (0x180, "reported TCB")],
)
def test_flipped_bit_in_body_is_bad_signature(snp_report, vcek, milan, offset, what) -> None:
    with pytest.raises(BadSignature):
        _verify(flip_bit(snp_report, offset), vcek, [milan])


@pytest.mark.parametrize("offset", [0x2A0, 0x2A0 + 71, 0x2E8 + 3])
def test_flipped_bit_in_signature_is_bad_signature(snp_report, vcek, milan, offset) -> None:
    with pytest.raises(BadSignature):
        _verify(flip_bit(snp_report, offset, 5), vcek, [milan])


def test_genoa_roots_for_a_milan_vcek(snp_report, vcek, genoa, turin) -> None:
    with pytest.raises(BadChain, match="no pinned AMD root"):
        _verify(snp_report, vcek, [genoa, turin])


def test_genoa_ask_offered_for_a_milan_vcek(snp_report, vcek, milan, genoa) -> None:
    with pytest.raises(BadChain):
        _verify(snp_report, vcek, [milan], ask=genoa.ask)


def test_self_made_ca_is_rejected_and_accepted_only_when_pinned(snp_report, vcek, milan) -> None:
    ark, ask, fake_vcek = fake_amd_chain(vcek, milan.ask, milan.ark)
    forged = sign_snp_report(snp_report, fake_vcek.key)  # type: ignore[arg-type]
    with pytest.raises(BadChain):  # our ASK is not signed by AMD's pinned ARK
        _verify(forged, fake_vcek.cert, [milan], ask=ask.cert)
    with pytest.raises(BadChain):  # the pinned ASK did not sign our VCEK
        _verify(forged, fake_vcek.cert, [milan])
    # Control: the same forgery passes when its own root is pinned, so the refusals above are
    # the pinning at work and not some other defect of the forgery.
    pinned_fake = SnpTrust(product="Milan", ask=ask.cert, ark=ark.cert)
    assert _verify(forged, fake_vcek.cert, [pinned_fake]).measurement == MEASUREMENT


def test_real_vcek_cannot_vouch_for_another_key(snp_report, vcek, milan) -> None:
    _, _, fake_vcek = fake_amd_chain(vcek, milan.ask, milan.ark)
    forged = sign_snp_report(snp_report, fake_vcek.key)  # type: ignore[arg-type]
    with pytest.raises(BadSignature):
        _verify(forged, vcek, [milan])


def test_vcek_hwid_must_match_chip_id(snp_report, vcek, milan) -> None:
    ark, ask, fake_vcek = fake_amd_chain(vcek, milan.ask, milan.ark)
    report = flip_bit(snp_report, 0x1A0)  # another chip
    forged = sign_snp_report(report, fake_vcek.key)  # type: ignore[arg-type]
    with pytest.raises(BadChain, match="hwID"):
        _verify(forged, fake_vcek.cert, [SnpTrust(product="Milan", ask=ask.cert, ark=ark.cert)])


def test_vcek_tcb_must_match_reported_tcb(snp_report, vcek, milan) -> None:
    ark, ask, fake_vcek = fake_amd_chain(vcek, milan.ask, milan.ark)
    report = snp_report[:0x186] + bytes([6]) + snp_report[0x187:]  # claim SNP SPL 6, VCEK says 5
    forged = sign_snp_report(report, fake_vcek.key)  # type: ignore[arg-type]
    with pytest.raises(BadChain, match="issued for TCB"):
        _verify(forged, fake_vcek.cert, [SnpTrust(product="Milan", ask=ask.cert, ark=ark.cert)])


def test_expired_vcek(snp_report, vcek, milan) -> None:
    after = vcek.not_valid_after_utc + timedelta(seconds=1)
    with pytest.raises(Expired):
        _verify(snp_report, vcek, [milan], now=after)
    with pytest.raises(Expired):
        _verify(snp_report, vcek, [milan], now=vcek.not_valid_before_utc - timedelta(days=1))


def test_real_current_time(snp_report, vcek, milan) -> None:
    """At the real time the chain passes until the VCEK's notAfter (2029-09-24), then fails."""
    now = datetime.now(UTC)
    if now > vcek.not_valid_after_utc:
        with pytest.raises(Expired):
            _verify(snp_report, vcek, [milan], now=now)
    else:
        assert _verify(snp_report, vcek, [milan], now=now).product == "Milan"


def test_debug_guest_refused_by_default(snp_report, vcek, milan) -> None:
    with pytest.raises(DebugNotAllowed):
        _verify(
            snp_report, vcek, [milan], policy=dataclasses.replace(VECTOR_POLICY, allow_debug=False)
        )


def test_measurement_not_in_allow_list(snp_report, vcek, milan) -> None:
    policy = dataclasses.replace(VECTOR_POLICY, allowed_launch_measurements=frozenset({bytes(48)}))
    with pytest.raises(MeasurementNotAllowed):
        _verify(snp_report, vcek, [milan], policy=policy)


@pytest.mark.parametrize("field", ["bootloader", "snp", "microcode"])
def test_tcb_below_minimum(snp_report, vcek, milan, field) -> None:
    minimum = dataclasses.replace(VECTOR_POLICY.min_snp_tcb, **{field: 200})  # type: ignore[type-var]
    with pytest.raises(TCBTooLow):
        _verify(
            snp_report,
            vcek,
            [milan],
            policy=dataclasses.replace(VECTOR_POLICY, min_snp_tcb=minimum),
        )


def test_wrong_report_data(snp_report, vcek, milan) -> None:
    policy = dataclasses.replace(VECTOR_POLICY, expected_report_data=bytes(64))
    with pytest.raises(BindingMismatch):
        _verify(snp_report, vcek, [milan], policy=policy)


@pytest.mark.parametrize("cut", [0, 1183, 1185])
def test_wrong_size_is_malformed(snp_report, vcek, milan, cut) -> None:
    data = (snp_report + b"\0")[:cut]
    with pytest.raises(MalformedEvidence):
        _verify(data, vcek, [milan])


def test_unsupported_version_is_malformed(snp_report, vcek, milan) -> None:
    with pytest.raises(MalformedEvidence):
        _verify(bytes([9]) + snp_report[1:], vcek, [milan])


def test_cert_table_round_trip_with_real_certificates(vcek, milan) -> None:
    blob = build_cert_table(
        [
            (GUID_VCEK, vcek.public_bytes(Encoding.DER)),
            (GUID_ASK, milan.ask.public_bytes(Encoding.DER)),
            (GUID_ARK, milan.ark.public_bytes(Encoding.DER)),
            (uuid.uuid4(), b"other"),
        ]
    )
    table = parse_cert_table(blob)
    assert table.vcek == vcek and table.ask == milan.ask and table.ark == milan.ark
    with pytest.raises(MalformedEvidence):
        parse_cert_table(blob[:30])


def _forged_under_pinned_fake(snp_report, vcek, milan, report: bytes):
    """`report` re-signed by a VCEK of a self-made chain that the caller then pins (so that
    only the policy under test decides)."""
    ark, ask, fake_vcek = fake_amd_chain(vcek, milan.ask, milan.ark)
    forged = sign_snp_report(report, fake_vcek.key)  # type: ignore[arg-type]
    return forged, fake_vcek.cert, [SnpTrust(product="Milan", ask=ask.cert, ark=ark.cert)]


def test_a_guest_the_host_may_hand_to_a_migration_agent_is_refused(snp_report, vcek, milan) -> None:
    assert not SnpReport.parse(snp_report).policy & (1 << 18)
    report = flip_bit(snp_report, 0x08 + 2, 2)  # guest policy bit 18: MIGRATE_MA
    forged, fake, trust = _forged_under_pinned_fake(snp_report, vcek, milan, report)
    with pytest.raises(PolicyViolation, match="migration agent"):
        _verify(forged, fake, trust)
    allowed = dataclasses.replace(VECTOR_POLICY, allow_migration=True)
    assert _verify(forged, fake, trust, policy=allowed).policy & (1 << 18)


def test_the_report_vmpl_can_be_pinned(snp_report, vcek, milan) -> None:
    vmpl = SnpReport.parse(snp_report).vmpl
    assert _verify(
        snp_report, vcek, [milan], policy=dataclasses.replace(VECTOR_POLICY, snp_vmpl=vmpl)
    )
    with pytest.raises(PolicyViolation, match="VMPL"):
        _verify(
            snp_report,
            vcek,
            [milan],
            policy=dataclasses.replace(VECTOR_POLICY, snp_vmpl=(vmpl + 1) % 4),
        )


def test_no_pinned_launch_measurement_refuses_with_a_reason(snp_report, vcek, milan) -> None:
    policy = dataclasses.replace(VECTOR_POLICY, allowed_launch_measurements=frozenset())
    with pytest.raises(MeasurementNotAllowed, match="no launch measurement is pinned"):
        _verify(snp_report, vcek, [milan], policy=policy)


def test_a_turin_vcek_names_its_chip_with_8_bytes(snp_report, vcek, milan) -> None:
    """AMD's key server issues Turin VCEKs for an 8-byte hwID; the report's CHIP_ID is those 8
    bytes then 56 zeros. (A self-made Turin chain, pinned: only the hwID rule decides.)"""
    ark, ask, _ = fake_amd_chain(vcek, milan.ask, milan.ark)
    chip = bytes(range(1, 9))
    report = snp_report[:0x1A0] + chip + bytes(56) + snp_report[0x1E0:]
    tcb = SnpTcb.from_u64(SnpReport.parse(report).reported_tcb, product="Turin")
    spl = {"3.1": tcb.bootloader, "3.2": tcb.tee, "3.3": tcb.snp, "3.8": tcb.microcode}

    def turin_vcek(hwid: bytes):
        def ext(oid: str, value: bytes) -> x509.Extension:
            ident = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1." + oid)
            return x509.Extension(ident, False, x509.UnrecognizedExtension(ident, value))

        exts = [ext("2", b"\x16\x08Turin-B0"), ext("4", hwid), ext("3.9", bytes([2, 1, tcb.fmc]))]
        exts += [ext(oid, bytes([2, 1, v])) for oid, v in spl.items()]
        key = ec.generate_private_key(ec.SECP384R1())
        return issue(vcek.subject, key, issuer=ask, ca=False, extensions=exts)

    trust = [SnpTrust(product="Turin", ask=ask.cert, ark=ark.cert)]
    policy = dataclasses.replace(VECTOR_POLICY, min_snp_tcb=None)  # Milan's minimum
    good = turin_vcek(chip)
    signed = sign_snp_report(report, good.key)  # type: ignore[arg-type]
    assert _verify(signed, good.cert, trust, policy=policy).product == "Turin"
    other = turin_vcek(bytes(range(2, 10)))  # another chip's VCEK
    with pytest.raises(BadChain, match="hwID"):
        _verify(sign_snp_report(report, other.key), other.cert, trust, policy=policy)  # type: ignore[arg-type]
    unpadded = report[:0x1A8] + b"\x01" + report[0x1A9:]  # the 8 bytes, then not zeros
    with pytest.raises(BadChain, match="hwID"):
        _verify(sign_snp_report(unpadded, good.key), good.cert, trust, policy=policy)  # type: ignore[arg-type]


def test_a_ca_certificate_cannot_sign_a_report(snp_report, vcek, milan) -> None:
    ark, ask, fake_vcek = fake_amd_chain(vcek, milan.ask, milan.ark)
    amd = [e for e in vcek.extensions if e.oid.dotted_string.startswith("1.3.6.1.4.1.3704")]
    ca_vcek = issue(vcek.subject, fake_vcek.key, issuer=ask, ca=True, extensions=amd)
    forged = sign_snp_report(snp_report, fake_vcek.key)  # type: ignore[arg-type]
    trust = [SnpTrust(product="Milan", ask=ask.cert, ark=ark.cert)]
    assert _verify(forged, fake_vcek.cert, trust)  # control: the same key as a leaf passes
    with pytest.raises(BadChain, match="is a CA certificate"):
        _verify(forged, ca_vcek.cert, trust)
