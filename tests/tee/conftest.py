"""Public attestation vectors (read in place from ../shared, never copied) and their anchors;
a simulated enclave running the test app, shared by the modules that need one."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from tee import Policy, SimulatedEnclave, SnpTrust
from tee._x509 import load_certificates

APP = "tests.tee.enclave_apps:process_id"  # answers model | input | its process id
MODEL = b"model-bytes-v1"

VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "vectors" / "attestation"

# Fixed verification times inside each file's validity window (as the source projects do).
SNP_NOW = datetime(2023, 6, 1, tzinfo=UTC)  # VCEK 2022-09-24 .. 2029-09-24, ASK/ARK .. 2045
TDX_V4_NOW = datetime(2023, 6, 20, tzinfo=UTC)  # PCK 2022-09-20 ..; pckcrl 2023-06-08 .. 07-08
TDX_V5_NOW = datetime(2026, 6, 1, tzinfo=UTC)  # PCK 2026-01-27 .. 2033-01-27


def vector(relative: str) -> bytes:
    path = VECTORS / relative
    if not path.is_file():
        pytest.skip(f"public attestation vector {path} is absent (see shared/vectors/attestation)")
    return path.read_bytes()


@pytest.fixture(scope="session")
def snp_report() -> bytes:
    return vector("sev-snp/attestation.bin")


@pytest.fixture(scope="session")
def vcek() -> x509.Certificate:
    return load_certificates(vector("sev-snp/vcek.testcer"))[0]


@pytest.fixture(scope="session")
def milan() -> SnpTrust:
    return SnpTrust.from_pem(vector("sev-snp/ask_ark_milan.pem"))


@pytest.fixture(scope="session")
def genoa() -> SnpTrust:
    return SnpTrust.from_pem(vector("sev-snp/ask_ark_genoa.pem"))


@pytest.fixture(scope="session")
def turin() -> SnpTrust:
    return SnpTrust.from_pem(vector("sev-snp/ask_ark_turin_vcek.pem"))


@pytest.fixture(scope="session")
def tdx_v4() -> bytes:
    return vector("tdx/tdx_prod_quote_SPR_E4.dat")


@pytest.fixture(scope="session")
def tdx_v5() -> bytes:
    return vector("tdx/quote_v5_sample.dat")


@pytest.fixture(scope="session")
def intel_root() -> x509.Certificate:
    return load_certificates(vector("tdx/trusted_root.pem"))[0]


@pytest.fixture(scope="session")
def intel_crls() -> tuple[x509.CertificateRevocationList, ...]:
    return (
        x509.load_der_x509_crl(vector("tdx/rootcrl.der")),
        x509.load_der_x509_crl(vector("tdx/pckcrl")),
    )


@pytest.fixture(scope="module")
def enclave() -> Iterator[SimulatedEnclave]:
    """A SIMULATED enclave process with `APP` loaded on `MODEL` (one per test module)."""
    with SimulatedEnclave(timeout_s=60) as enc:
        enc.load(APP, MODEL)
        yield enc


def simulated_policy(enclave: SimulatedEnclave, **kw: object) -> Policy:
    """Accept simulated evidence for `enclave`'s measurement only; `kw` overrides fields."""
    base = Policy(
        allowed_launch_measurements=None,
        allowed_code_measurements=frozenset({enclave.measurement}),
        allow_simulated=True,
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]
