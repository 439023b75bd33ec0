"""Evidence objects that leave an enclave: the platform, the quote and the attested result.

A `Quote` is an envelope: the request binding (nonce, code+model measurement, input and result
digests and the 64-byte `report_data` derived from them, see `tee.measurement`) plus the
platform's own evidence bytes, which a verifier checks against pinned roots:

    Platform.SIMULATED  evidence = a statement signed by a locally generated ECDSA P-384 key.
                        INSECURE: no hardware root of trust; for development and tests only.
    Platform.SEV_SNP    evidence = the 1184-byte ATTESTATION_REPORT; auxblob = the host's
                        certificate table (VCEK, ASK, ARK), as configfs-tsm returns them.
    Platform.TDX        evidence = the DCAP quote (v4 or v5) with its PCK chain embedded.

`simulated` is a field of every quote and result so that no layer above can lose it.
"""

from __future__ import annotations

import base64
import enum
import json
from dataclasses import dataclass
from typing import Any

from tee.errors import MalformedEvidence
from tee.measurement import input_digest, report_data, result_digest

__all__ = ["AttestedResult", "Platform", "Quote"]

_BLOBS = ("nonce", "measurement", "input_digest", "result_digest", "report_data", "evidence")


class Platform(enum.Enum):
    """Where a quote comes from, and so what it can prove."""

    SIMULATED = "simulated"  # no security: a software key on the same host; protocol only
    SEV_SNP = "sev-snp"  # AMD SEV-SNP guest; trusts AMD's ARK, the PSP firmware and the CPU
    TDX = "tdx"  # Intel TDX guest; trusts Intel's SGX root, the TDX module, QE and CPU


@dataclass(frozen=True, slots=True, kw_only=True)
class Quote:
    """A platform quote over the request binding. Verify it with `tee.verify_quote`."""

    platform: Platform
    simulated: bool  # True iff platform is SIMULATED: such a quote proves nothing
    provider: str  # configfs-tsm provider ("sev_guest", "tdx_guest") or "simulated"
    nonce: bytes  # the client's fresh nonce
    measurement: bytes  # code+model measurement, 48 bytes
    input_digest: bytes  # SHA-384 of the input the enclave ran on, 48 bytes
    result_digest: bytes  # SHA-384 of the output, 48 bytes
    report_data: bytes  # 64 bytes the platform signed
    evidence: bytes  # platform evidence, see the module docstring
    auxblob: bytes = b""  # SEV-SNP certificate table from the host; empty otherwise

    def __post_init__(self) -> None:
        if self.simulated != (self.platform is Platform.SIMULATED):
            raise MalformedEvidence(
                f"quote says simulated={self.simulated} but platform={self.platform.value}"
            )

    @classmethod
    def for_output(
        cls,
        *,
        platform: Platform,
        provider: str,
        nonce: bytes,
        measurement: bytes,
        input: bytes,
        output: bytes,
        evidence: bytes,
        auxblob: bytes = b"",
    ) -> Quote:
        """Assemble the envelope for `input` -> `output`: the digests and the report data the
        platform evidence must bind."""
        din, dout = input_digest(input), result_digest(output)
        return cls(
            platform=platform,
            simulated=platform is Platform.SIMULATED,
            provider=provider,
            nonce=nonce,
            measurement=measurement,
            input_digest=din,
            result_digest=dout,
            report_data=report_data(nonce, measurement, din, dout),
            evidence=evidence,
            auxblob=auxblob,
        )

    def to_json(self) -> str:
        """A JSON encoding (bytes as base64) for transport; `from_json` parses it back."""
        fields: dict[str, Any] = {
            "platform": self.platform.value,
            "simulated": self.simulated,
            "provider": self.provider,
        }
        for name in _BLOBS + ("auxblob",):
            fields[name] = base64.b64encode(getattr(self, name)).decode()
        return json.dumps(fields, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Quote:
        """Parse `to_json` output; raises MalformedEvidence on anything else."""
        try:
            obj = json.loads(text)
            blobs = {name: base64.b64decode(obj[name], validate=True) for name in _BLOBS}
            return cls(
                platform=Platform(obj["platform"]),
                simulated=bool(obj["simulated"]),
                provider=str(obj["provider"]),
                auxblob=base64.b64decode(obj.get("auxblob", ""), validate=True),
                **blobs,
            )
        except (ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, MalformedEvidence):
                raise
            raise MalformedEvidence(f"not a quote: {exc}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class AttestedResult:
    """What `Enclave.run` returns: the output and a quote binding it to the request."""

    output: bytes
    quote: Quote

    @property
    def simulated(self) -> bool:
        return self.quote.simulated

    @property
    def platform(self) -> Platform:
        return self.quote.platform
