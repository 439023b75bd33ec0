"""Intel TDX DCAP quote verification on go-tdx-guest's public vectors, and every negative case."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

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
    Revoked,
    TCBTooLow,
    verify_tdx_quote,
)
from tee.tdx import TdxQuote

from .conftest import TDX_V4_NOW, TDX_V5_NOW
from .forge import NOT_AFTER, NOT_BEFORE, fake_intel_chain, flip_bit, forge_tdx_quote, issue

MRTD_V4 = bytes.fromhex(
    "6363b8043668a3ad953278e10389574d326c6749fb78aa810ecd9336923db86f"
    "22fc00b8dcd404bc10d5e119d7215cbb"
)
REPORT_DATA_V4 = bytes.fromhex(
    "6c62dec1b8191749a31dab490be532a35944dea47caef1f980863993d9899545"
    "eb7406a38d1eed313b987a467dacead6f0c87a6d766c66f6f29f8acb281f1113"
)
POLICY = Policy(
    allowed_launch_measurements=frozenset({MRTD_V4}),
    allowed_code_measurements=None,
    expected_report_data=REPORT_DATA_V4,
    min_tdx_tee_tcb_svn=bytes.fromhex("03000400000000000000000000000000"),
)
_BODY = 48  # the TD quote body starts after the 48-byte header (v4)


def _verify(quote: bytes, root: x509.Certificate, **kw: object):
    args = {"policy": POLICY, "now": TDX_V4_NOW} | kw
    return verify_tdx_quote(quote, root=root, **args)  # type: ignore[arg-type]


def test_v4_vector_verifies_with_crls(tdx_v4, intel_root, intel_crls) -> None:
    claims = _verify(tdx_v4, intel_root, crls=intel_crls)
    assert claims.version == 4 and claims.mr_td == MRTD_V4 and claims.report_data == REPORT_DATA_V4
    assert not claims.debug and claims.qe_svn == 4 and "PCK Certificate" in claims.pck_subject
    assert claims.tee_tcb_svn.hex() == "03000400000000000000000000000000"


def test_v5_vector_verifies(tdx_v5, intel_root) -> None:
    policy = Policy(allowed_launch_measurements=None, allowed_code_measurements=None)
    claims = _verify(tdx_v5, intel_root, policy=policy, now=TDX_V5_NOW)
    assert claims.version == 5 and not claims.debug and len(claims.mr_td) == 48


@pytest.mark.parametrize(
    "offset",
    [_BODY + 136, _BODY + 520, _BODY + 120, _BODY + 0, 28],  # MRTD, REPORTDATA, attrs, SVN, header
)
def test_flipped_bit_in_quote_is_bad_signature(tdx_v4, intel_root, offset) -> None:
    with pytest.raises(BadSignature):
        _verify(flip_bit(tdx_v4, offset), intel_root)


def test_flipped_bit_in_quote_signature(tdx_v4, intel_root) -> None:
    with pytest.raises(BadSignature):
        _verify(flip_bit(tdx_v4, 632 + 4 + 10), intel_root)


def test_flipped_bit_in_qe_report(tdx_v4, intel_root) -> None:
    with pytest.raises(BadSignature, match="QE report"):
        _verify(flip_bit(tdx_v4, 632 + 4 + 134 + 100), intel_root)


def test_quote_checked_only_against_its_embedded_chain_is_rejected(tdx_v4, intel_root) -> None:
    parsed = TdxQuote.parse(tdx_v4)
    root, ca, pck = fake_intel_chain(parsed.pck_chain_pem)
    forged = forge_tdx_quote(tdx_v4, pck_key=pck.key, chain=[pck.cert, ca.cert, root.cert])  # type: ignore[arg-type]
    with pytest.raises(BadChain, match="not the pinned root"):
        _verify(forged, intel_root)
    without_root = forge_tdx_quote(tdx_v4, pck_key=pck.key, chain=[pck.cert, ca.cert])  # type: ignore[arg-type]
    with pytest.raises(BadChain):
        _verify(without_root, intel_root)
    # Control: every signature in the forgery is valid; pinning its root makes it pass.
    assert _verify(forged, root.cert, now=datetime(2030, 1, 1, tzinfo=UTC)).mr_td == MRTD_V4


def test_path_length_constraint(tdx_v4) -> None:
    parsed = TdxQuote.parse(tdx_v4)
    root, _, _ = fake_intel_chain(parsed.pck_chain_pem)
    p256 = ec.SECP256R1()
    ca = issue(
        x509.Name.from_rfc4514_string("CN=CA"),
        ec.generate_private_key(p256),
        issuer=root,
        ca=True,
        path_length=0,
    )
    sub = issue(
        x509.Name.from_rfc4514_string("CN=Sub"), ec.generate_private_key(p256), issuer=ca, ca=True
    )
    pck = issue(
        x509.Name.from_rfc4514_string("CN=PCK"), ec.generate_private_key(p256), issuer=sub, ca=False
    )
    forged = forge_tdx_quote(tdx_v4, pck_key=pck.key, chain=[pck.cert, sub.cert, ca.cert])  # type: ignore[arg-type]
    with pytest.raises(BadChain, match="allows 0"):
        _verify(forged, root.cert, now=datetime(2030, 1, 1, tzinfo=UTC))


def test_wrong_pinned_root(tdx_v4, milan) -> None:
    with pytest.raises(BadChain):
        _verify(tdx_v4, milan.ark)


def test_attestation_key_must_be_bound_by_qe_report(tdx_v4) -> None:
    parsed = TdxQuote.parse(tdx_v4)
    root, ca, pck = fake_intel_chain(parsed.pck_chain_pem)
    forged = forge_tdx_quote(
        tdx_v4,
        pck_key=pck.key,
        chain=[pck.cert, ca.cert],
        bind_attestation_key=False,  # type: ignore[arg-type]
    )
    with pytest.raises(BadChain, match="attestation key"):
        _verify(forged, root.cert, now=datetime(2030, 1, 1, tzinfo=UTC))


def test_expired_pck(tdx_v4, intel_root) -> None:
    pck = x509.load_pem_x509_certificates(TdxQuote.parse(tdx_v4).pck_chain_pem)[0]
    with pytest.raises(Expired):
        _verify(tdx_v4, intel_root, now=pck.not_valid_after_utc + timedelta(seconds=1))


def test_real_current_time(tdx_v4, intel_root) -> None:
    """At the real time the v4 chain passes until the PCK's notAfter (2029-09-20), then fails."""
    pck = x509.load_pem_x509_certificates(TdxQuote.parse(tdx_v4).pck_chain_pem)[0]
    now = datetime.now(UTC)
    if now > pck.not_valid_after_utc:
        with pytest.raises(Expired):
            _verify(tdx_v4, intel_root, now=now)
    else:
        assert _verify(tdx_v4, intel_root, now=now).version == 4


def test_stale_crl_is_expired(tdx_v4, intel_root, intel_crls) -> None:
    """Intel's sample PCK CRL ran out on 2023-07-08: at the real time it no longer vouches."""
    with pytest.raises(Expired, match="CRL"):
        _verify(tdx_v4, intel_root, crls=intel_crls, now=datetime.now(UTC))


def test_revoked_pck(tdx_v4) -> None:
    parsed = TdxQuote.parse(tdx_v4)
    root, ca, pck = fake_intel_chain(parsed.pck_chain_pem)
    forged = forge_tdx_quote(tdx_v4, pck_key=pck.key, chain=[pck.cert, ca.cert])  # type: ignore[arg-type]
    revoked = x509.RevokedCertificateBuilder().serial_number(pck.cert.serial_number)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(NOT_BEFORE)
        .next_update(NOT_AFTER)
        .add_revoked_certificate(revoked.revocation_date(NOT_BEFORE).build())
        .sign(ca.key, hashes.SHA256())  # type: ignore[arg-type]
    )
    with pytest.raises(Revoked):
        _verify(forged, root.cert, crls=[crl], now=datetime(2030, 1, 1, tzinfo=UTC))


def test_crl_not_signed_by_its_issuer(tdx_v4, intel_root) -> None:
    _, _, pck = fake_intel_chain(TdxQuote.parse(tdx_v4).pck_chain_pem)
    real_ca = x509.load_pem_x509_certificates(TdxQuote.parse(tdx_v4).pck_chain_pem)[1]
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(real_ca.subject)
        .last_update(NOT_BEFORE)
        .next_update(NOT_AFTER)
        .sign(pck.key, hashes.SHA256())  # type: ignore[arg-type]
    )
    with pytest.raises(BadChain, match="CRL"):
        _verify(tdx_v4, intel_root, crls=[crl])


def test_debug_td_refused(tdx_v4) -> None:
    parsed = TdxQuote.parse(tdx_v4)
    root, ca, pck = fake_intel_chain(parsed.pck_chain_pem)
    body = flip_bit(parsed.body, 120)  # TD_ATTRIBUTES bit 0: DEBUG
    forged = forge_tdx_quote(tdx_v4, pck_key=pck.key, chain=[pck.cert, ca.cert], body=body)  # type: ignore[arg-type]
    later = datetime(2030, 1, 1, tzinfo=UTC)
    with pytest.raises(DebugNotAllowed):
        _verify(forged, root.cert, now=later)
    assert _verify(
        forged, root.cert, now=later, policy=dataclasses.replace(POLICY, allow_debug=True)
    ).debug


def test_mrtd_not_in_allow_list(tdx_v4, intel_root) -> None:
    policy = dataclasses.replace(POLICY, allowed_launch_measurements=frozenset({bytes(48)}))
    with pytest.raises(MeasurementNotAllowed):
        _verify(tdx_v4, intel_root, policy=policy)


def test_tee_tcb_svn_below_minimum(tdx_v4, intel_root) -> None:
    policy = dataclasses.replace(POLICY, min_tdx_tee_tcb_svn=bytes.fromhex("03000500" + "00" * 12))
    with pytest.raises(TCBTooLow):
        _verify(tdx_v4, intel_root, policy=policy)


def test_wrong_report_data(tdx_v4, intel_root) -> None:
    with pytest.raises(BindingMismatch):
        _verify(
            tdx_v4, intel_root, policy=dataclasses.replace(POLICY, expected_report_data=bytes(64))
        )


@pytest.mark.parametrize("cut", [0, 10, 48, 640, 1000, 4000])
def test_truncated_quote_is_malformed(tdx_v4, intel_root, cut) -> None:
    with pytest.raises(MalformedEvidence):
        _verify(tdx_v4[:cut], intel_root)


def test_unsupported_version_is_malformed(tdx_v4, intel_root) -> None:
    with pytest.raises(MalformedEvidence, match="version"):
        _verify(b"\x03" + tdx_v4[1:], intel_root)


def test_a_migratable_td_is_refused(tdx_v4) -> None:
    parsed = TdxQuote.parse(tdx_v4)
    assert not parsed.body[123] & 0x20
    root, ca, pck = fake_intel_chain(parsed.pck_chain_pem)
    body = flip_bit(parsed.body, 123, 5)  # TD_ATTRIBUTES bit 29: MIGRATABLE
    forged = forge_tdx_quote(tdx_v4, pck_key=pck.key, chain=[pck.cert, ca.cert], body=body)  # type: ignore[arg-type]
    later = datetime(2030, 1, 1, tzinfo=UTC)
    with pytest.raises(PolicyViolation, match="MIGRATABLE"):
        _verify(forged, root.cert, now=later)
    allowed = dataclasses.replace(POLICY, allow_migration=True)
    assert _verify(forged, root.cert, now=later, policy=allowed).td_attributes[3] & 0x20


def test_the_tds_kernel_is_pinned_by_its_rtmrs_not_by_mrtd(tdx_v4, intel_root) -> None:
    claims = _verify(tdx_v4, intel_root)
    rtmrs = b"".join(claims.rtmrs[:3])
    pinned = dataclasses.replace(POLICY, allowed_tdx_rtmrs=frozenset({rtmrs}))
    assert _verify(tdx_v4, intel_root, policy=pinned).mr_td == MRTD_V4
    # Same MRTD (firmware), another kernel or command line: refused once RTMRs are pinned.
    other = dataclasses.replace(POLICY, allowed_tdx_rtmrs=frozenset({bytes(144)}))
    with pytest.raises(MeasurementNotAllowed, match="RTMR0-2"):
        _verify(tdx_v4, intel_root, policy=other)
    with pytest.raises(ValueError, match="144"):
        dataclasses.replace(POLICY, allowed_tdx_rtmrs=frozenset({bytes(48)}))


def test_the_owner_fields_can_be_required(tdx_v4, intel_root) -> None:
    claims = _verify(tdx_v4, intel_root)
    fields = claims.mr_config_id + claims.mr_owner + claims.mr_owner_config
    assert _verify(
        tdx_v4, intel_root, policy=dataclasses.replace(POLICY, expected_tdx_owner_fields=fields)
    )
    wrong = dataclasses.replace(POLICY, expected_tdx_owner_fields=b"\x01" + fields[1:])
    with pytest.raises(PolicyViolation, match="MROWNER"):
        _verify(tdx_v4, intel_root, policy=wrong)


def test_no_pinned_mrtd_refuses_with_a_reason(tdx_v4, intel_root) -> None:
    policy = dataclasses.replace(POLICY, allowed_launch_measurements=frozenset())
    with pytest.raises(MeasurementNotAllowed, match="no launch measurement is pinned"):
        _verify(tdx_v4, intel_root, policy=policy)
