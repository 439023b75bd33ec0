"""Report-data binding, nonce store, quote envelope, configfs-tsm parsing path, and layering."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

import tee
from tee import (
    BadChain,
    BadSignature,
    BindingMismatch,
    ConfigfsTsmEnclave,
    MalformedEvidence,
    NonceStore,
    Platform,
    Policy,
    Quote,
    ReplayedNonce,
    StaleNonce,
    TrustAnchors,
    UnsupportedPlatform,
    tsm_available,
    verify_quote,
)
from tee._encoding import encode
from tee.configfs_tsm import TsmReport, get_report, platform_for_provider
from tee.measurement import CodeRef, report_data
from tee.snp import GUID_ASK, GUID_VCEK, build_cert_table

from .conftest import SNP_NOW, TDX_V4_NOW
from .forge import flip_bit

ROOT = Path(__file__).resolve().parents[2]
NONCE, MEASUREMENT, DIGEST = b"n" * 32, b"m" * 48, b"r" * 48
INPUT = b"i" * 48  # an input digest


def test_report_data_is_sha512_of_the_length_prefixed_fields() -> None:
    expected = hashlib.sha512(
        encode(b"secure-infer/tee/report-data/v2", NONCE, MEASUREMENT, INPUT, DIGEST)
    ).digest()
    assert report_data(NONCE, MEASUREMENT, INPUT, DIGEST) == expected and len(expected) == 64
    changed = {
        report_data(b"N" * 32, MEASUREMENT, INPUT, DIGEST),
        report_data(NONCE, b"M" * 48, INPUT, DIGEST),
        report_data(NONCE, MEASUREMENT, b"I" * 48, DIGEST),
        report_data(NONCE, MEASUREMENT, INPUT, b"R" * 48),
        report_data(NONCE, MEASUREMENT, DIGEST, INPUT),  # input and output swapped
        report_data(NONCE + b"x", MEASUREMENT, INPUT, DIGEST),
    }
    assert expected not in changed and len(changed) == 6


@pytest.mark.parametrize(
    ("nonce", "measurement", "input_", "digest"),
    [
        (b"short", MEASUREMENT, INPUT, DIGEST),
        (NONCE, b"m" * 47, INPUT, DIGEST),
        (NONCE, MEASUREMENT, b"i", DIGEST),
        (NONCE, MEASUREMENT, INPUT, b"r"),
    ],
)
def test_report_data_rejects_bad_sizes(
    nonce: bytes, measurement: bytes, input_: bytes, digest: bytes
) -> None:
    with pytest.raises(ValueError, match="must be"):
        report_data(nonce, measurement, input_, digest)


@pytest.mark.parametrize("entry", ["os", "os:", ":f", "a b:c", "pkg.mod:fn()", "1pkg:fn"])
def test_code_ref_rejects_non_entry_points(entry: str) -> None:
    with pytest.raises(ValueError, match="entry point"):
        CodeRef.parse(entry)


def test_nonce_store_single_use_and_expiry() -> None:
    clock = [0.0]
    store = NonceStore(ttl_s=10, clock=lambda: clock[0])
    first, second = store.issue(), store.issue()
    assert first != second and len(first) == 32
    store.consume(first)
    with pytest.raises(ReplayedNonce):
        store.consume(first)
    clock[0] = 11.0
    with pytest.raises(StaleNonce):
        store.consume(second)
    with pytest.raises(StaleNonce):
        store.consume(b"x" * 32)
    limited = NonceStore(max_outstanding=1)
    limited.issue()
    with pytest.raises(RuntimeError):
        limited.issue()


def test_quote_refuses_inconsistent_simulated_flag_and_garbage_json() -> None:
    with pytest.raises(MalformedEvidence):
        Quote(
            platform=Platform.SEV_SNP,
            simulated=True,
            provider="x",
            nonce=NONCE,
            measurement=MEASUREMENT,
            input_digest=INPUT,
            result_digest=DIGEST,
            report_data=bytes(64),
            evidence=b"",
        )
    for text in ("{}", "[]", "not json", '{"platform": "sgx"}'):
        with pytest.raises(MalformedEvidence):
            Quote.from_json(text)


def _policy() -> Policy:
    return Policy(
        allowed_launch_measurements=None, allowed_code_measurements=None, allow_debug=True
    )


def _tsm_quote(report: TsmReport, output: bytes) -> Quote:
    """The envelope `ConfigfsTsmEnclave.run` builds from a configfs-tsm report."""
    return Quote.for_output(
        platform=platform_for_provider(report.provider),
        provider=report.provider,
        nonce=NONCE,
        measurement=MEASUREMENT,
        input=b"in",
        output=output,
        evidence=report.outblob,
        auxblob=report.auxblob,
    )


def test_snp_tsm_report_parses_and_reaches_the_binding_check(snp_report, vcek, milan) -> None:
    """A real SNP report + cert table through the configfs-tsm path: chain and signature pass,
    and the binding check refuses it because its REPORT_DATA is not our nonce binding."""
    aux = build_cert_table(
        [
            (GUID_VCEK, vcek.public_bytes(Encoding.DER)),
            (GUID_ASK, milan.ask.public_bytes(Encoding.DER)),
        ]
    )
    trust = TrustAnchors(snp=(milan,))
    quote = _tsm_quote(TsmReport(provider="sev_guest", outblob=snp_report, auxblob=aux), b"out")
    assert quote.platform is Platform.SEV_SNP and not quote.simulated
    kw = {
        "input": b"in",
        "output": b"out",
        "nonce": NONCE,
        "policy": _policy(),
        "trust": trust,
        "now": SNP_NOW,
    }
    with pytest.raises(BindingMismatch, match="REPORT_DATA"):
        verify_quote(quote, nonce_store=NonceStore(), **kw)  # type: ignore[arg-type]
    tampered = _tsm_quote(
        TsmReport(provider="sev_guest", outblob=flip_bit(snp_report, 0x2A0), auxblob=aux), b"out"
    )
    with pytest.raises(BadSignature):
        verify_quote(tampered, nonce_store=NonceStore(), **kw)  # type: ignore[arg-type]
    no_vcek = _tsm_quote(
        TsmReport(provider="sev_guest", outblob=snp_report, auxblob=bytes(24)), b"out"
    )
    with pytest.raises(BadChain, match="VCEK"):
        verify_quote(no_vcek, nonce_store=NonceStore(), **kw)  # type: ignore[arg-type]


def test_tdx_tsm_report_parses_and_reaches_the_binding_check(tdx_v4, intel_root) -> None:
    quote = _tsm_quote(TsmReport(provider="tdx_guest", outblob=tdx_v4, auxblob=b""), b"out")
    assert quote.platform is Platform.TDX
    kw = {"input": b"in", "output": b"out", "nonce": NONCE, "policy": _policy(), "now": TDX_V4_NOW}
    with pytest.raises(BindingMismatch, match="REPORTDATA"):
        verify_quote(quote, trust=TrustAnchors(tdx_root=intel_root), nonce_store=NonceStore(), **kw)  # type: ignore[arg-type]
    with pytest.raises(BadChain, match="no Intel SGX root"):
        verify_quote(quote, trust=TrustAnchors(), nonce_store=NonceStore(), **kw)  # type: ignore[arg-type]


def test_unknown_tsm_provider() -> None:
    with pytest.raises(UnsupportedPlatform):
        platform_for_provider("arm_cca_guest")


@pytest.mark.skipif(tsm_available(), reason="configfs-tsm is present: the absent path is moot")
def test_configfs_tsm_absent_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedPlatform) as info:
        ConfigfsTsmEnclave()
    assert info.value.reason == "no-configfs-tsm"
    with pytest.raises(UnsupportedPlatform):
        get_report(bytes(64), root=tmp_path / "absent")
    with pytest.raises(ValueError, match="64 bytes"):
        get_report(b"short")


@pytest.mark.skipif(not tsm_available(), reason="no configfs-tsm here (not a confidential guest)")
def test_configfs_tsm_report_on_real_hardware() -> None:
    report = get_report(hashlib.sha512(b"secure-infer tee test").digest())
    assert platform_for_provider(report.provider) in (Platform.SEV_SNP, Platform.TDX)
    assert report.outblob


def _imports(package: Path) -> set[str]:
    found: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_tee_is_a_bottom_package() -> None:
    forbidden = {
        "grpc",
        "grpc_health",
        "decentralized",
        "secure_infer",
        "mpc",
        "verification",
        "pickle",
    }
    assert _imports(ROOT / "tee").isdisjoint(forbidden)


def test_public_surface_is_sorted_and_real() -> None:
    assert tee.__all__ == sorted(tee.__all__)
    assert all(hasattr(tee, name) for name in tee.__all__)
