"""Client-side verification of an enclave `Quote` against a policy and pinned trust anchors.

`verify_quote` checks, in order, and raises the first failure (never returns False):

    1. simulated evidence is refused unless `policy.allow_simulated` (SimulatedNotAllowed);
    2. the quote answers the nonce this client sent (NonceMismatch);
    3. the input the client sent and the output it received hash to the quoted input and result
       digests (BindingMismatch);
    4. the code+model measurement is allowed (MeasurementNotAllowed);
    5. the quote's report data is SHA-512(nonce, measurement, input digest, result digest)
       (BindingMismatch);
    6. the platform evidence verifies against the pinned anchors and the policy, with
       `expected_report_data` set to that binding (see `tee.snp`, `tee.tdx`, `tee.simulated`);
    7. the nonce is consumed from the client's `NonceStore` (ReplayedNonce / StaleNonce).

The result (`VerifiedQuote`) keeps `simulated` and `platform`, so callers can show them.
"""

from __future__ import annotations

import dataclasses
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from tee.errors import (
    BadChain,
    BindingMismatch,
    MeasurementNotAllowed,
    NonceMismatch,
    SimulatedNotAllowed,
)
from tee.measurement import input_digest, report_data, result_digest
from tee.policy import NonceStore, Policy
from tee.quote import Platform, Quote
from tee.simulated import SimulatedClaims, verify_simulated_evidence
from tee.snp import SnpClaims, SnpTrust, parse_cert_table, verify_snp_report
from tee.tdx import TdxClaims, verify_tdx_quote

__all__ = ["TrustAnchors", "VerifiedQuote", "verify_quote"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TrustAnchors:
    """Pinned roots. Anything not pinned here cannot be accepted."""

    snp: tuple[SnpTrust, ...] = ()  # AMD ASK+ARK per product (ask_ark_<product>.pem)
    tdx_root: x509.Certificate | None = None  # Intel SGX Root CA
    simulated_keys: tuple[ec.EllipticCurvePublicKey, ...] = ()  # INSECURE local platform keys
    crls: tuple[x509.CertificateRevocationList, ...] = ()  # AMD/Intel CRLs, not fetched here


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedQuote:
    """A quote that passed every check: what the client may now rely on."""

    platform: Platform
    simulated: bool  # True: the protocol checked out, but nothing was protected
    provider: str
    nonce: bytes
    measurement: bytes  # code+model
    input_digest: bytes
    result_digest: bytes
    claims: SnpClaims | TdxClaims | SimulatedClaims


def _verify_platform(
    quote: Quote, policy: Policy, trust: TrustAnchors, now: datetime
) -> SnpClaims | TdxClaims | SimulatedClaims:
    if quote.platform is Platform.SIMULATED:
        return verify_simulated_evidence(
            quote.evidence, keys=trust.simulated_keys, policy=policy, now=now
        )
    if quote.platform is Platform.SEV_SNP:
        table = parse_cert_table(quote.auxblob)
        if table.vcek is None:
            raise BadChain("no VCEK certificate came with the SEV-SNP report")
        return verify_snp_report(
            quote.evidence,
            vcek=table.vcek,
            ask=table.ask,
            trust=trust.snp,
            policy=policy,
            now=now,
            crls=trust.crls,
        )
    if trust.tdx_root is None:
        raise BadChain("no Intel SGX root is pinned")
    return verify_tdx_quote(
        quote.evidence, root=trust.tdx_root, policy=policy, now=now, crls=trust.crls
    )


def verify_quote(
    quote: Quote,
    *,
    input: bytes,
    output: bytes,
    nonce: bytes,
    policy: Policy,
    trust: TrustAnchors,
    nonce_store: NonceStore,
    now: datetime | None = None,
) -> VerifiedQuote:
    """Verify that allowed code on an attested platform turned `input` into `output` for `nonce`.

    Args:
        quote: The quote that came with the output.
        input: The input bytes the enclave was to run on, as the client computes them.
        output: The output bytes the client received.
        nonce: The nonce the client sent (drawn from `nonce_store.issue()`).
        policy: The acceptance rules; `expected_report_data` is set here from the binding.
        trust: Pinned roots and, for development only, simulated platform keys.
        nonce_store: Consumes the nonce on success; refuses replays and unknown nonces.
        now: Verification time for certificates and timestamps (default: the current time).
    """
    if quote.simulated and not policy.allow_simulated:
        raise SimulatedNotAllowed("the quote is SIMULATED and policy.allow_simulated=False")
    if not hmac.compare_digest(quote.nonce, nonce):
        raise NonceMismatch("the quote was made for another nonce")
    din = input_digest(input)
    if not hmac.compare_digest(din, quote.input_digest):
        raise BindingMismatch("the enclave ran on another input than the one the client sent")
    digest = result_digest(output)
    if not hmac.compare_digest(digest, quote.result_digest):
        raise BindingMismatch("the output does not match the quoted result digest")
    allowed = policy.allowed_code_measurements
    if allowed is not None and not any(hmac.compare_digest(quote.measurement, m) for m in allowed):
        raise MeasurementNotAllowed(
            f"code+model measurement {quote.measurement.hex()} is not in the allow list"
        )
    binding = report_data(nonce, quote.measurement, din, digest)
    if not hmac.compare_digest(binding, quote.report_data):
        raise BindingMismatch("the quote's report data does not bind nonce, code, input and result")
    when = now if now is not None else datetime.now(UTC)
    claims = _verify_platform(
        quote, dataclasses.replace(policy, expected_report_data=binding), trust, when
    )
    if isinstance(claims, SimulatedClaims) and not hmac.compare_digest(
        claims.measurement, quote.measurement
    ):
        raise BindingMismatch("the simulated statement names another measurement")
    nonce_store.consume(nonce)
    return VerifiedQuote(
        platform=quote.platform,
        simulated=quote.simulated,
        provider=quote.provider,
        nonce=nonce,
        measurement=quote.measurement,
        input_digest=din,
        result_digest=digest,
        claims=claims,
    )
