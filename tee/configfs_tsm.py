"""Hardware quotes through Linux configfs-tsm (`/sys/kernel/config/tsm/report`, Linux 6.7+).

Inside an AMD SEV-SNP guest (provider ``sev_guest``) or an Intel TDX guest (``tdx_guest``), the
kernel turns 64 bytes of `inblob` into signed evidence:

    1. mkdir a fresh report directory under the tsm root;
    2. write the 64-byte report data to ``inblob``;
    3. read ``outblob`` (the SNP ATTESTATION_REPORT or the TDX quote), ``provider`` and
       ``auxblob`` (SNP: the host's certificate table; absent/empty for TDX);
    4. check ``generation`` did not move (another writer raced us), then rmdir.

Threat: what the evidence proves is that of the platform (see `tee.snp`, `tee.tdx`): the
        whole confidential VM is the TEE; the enclave process is only a process inside it.
Limits: this backend is untested on real hardware here (no confidential guest on the build
        machines); its parsing and binding are tested with the public vectors.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from tee.errors import EnclaveError, UnsupportedPlatform
from tee.measurement import REPORT_DATA_SIZE
from tee.quote import Platform

__all__ = [
    "TSM_REPORT_ROOT",
    "TsmReport",
    "get_report",
    "platform_for_provider",
    "tsm_available",
]

TSM_REPORT_ROOT = Path("/sys/kernel/config/tsm/report")
_PROVIDERS = {"sev_guest": Platform.SEV_SNP, "tdx_guest": Platform.TDX}


@dataclass(frozen=True, slots=True)
class TsmReport:
    """The files of one configfs-tsm report directory."""

    provider: str
    outblob: bytes
    auxblob: bytes


def tsm_available(root: Path = TSM_REPORT_ROOT) -> bool:
    """True when the configfs-tsm report interface exists and this process may use it."""
    return root.is_dir() and os.access(root, os.W_OK | os.X_OK)


def platform_for_provider(provider: str) -> Platform:
    """The platform a configfs-tsm provider name stands for; raises for unknown providers."""
    try:
        return _PROVIDERS[provider]
    except KeyError:
        raise UnsupportedPlatform(
            f"configfs-tsm provider {provider!r} is not supported", reason="unknown-provider"
        ) from None


def _read_generation(path: Path) -> int:
    return int(path.joinpath("generation").read_text().strip())


def get_report(report_data: bytes, *, root: Path = TSM_REPORT_ROOT) -> TsmReport:
    """Ask the kernel for evidence over `report_data` (64 bytes) through configfs-tsm."""
    if len(report_data) != REPORT_DATA_SIZE:
        raise ValueError(f"report data must be {REPORT_DATA_SIZE} bytes")
    if not tsm_available(root):
        raise UnsupportedPlatform(f"{root} is not available", reason="no-configfs-tsm")
    entry = root / f"secure-infer-{uuid.uuid4().hex}"
    entry.mkdir()
    try:
        entry.joinpath("inblob").write_bytes(report_data)
        before = _read_generation(entry)
        outblob = entry.joinpath("outblob").read_bytes()
        provider = entry.joinpath("provider").read_text().strip()
        aux_path = entry.joinpath("auxblob")
        auxblob = aux_path.read_bytes() if aux_path.exists() else b""
        if _read_generation(entry) != before:
            raise EnclaveError("configfs-tsm report was rewritten concurrently; retry")
    finally:
        entry.rmdir()
    platform_for_provider(provider)
    return TsmReport(provider=provider, outblob=outblob, auxblob=auxblob)
