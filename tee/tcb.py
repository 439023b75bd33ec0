"""Trusted computing base versions: AMD SEV-SNP TCB_VERSION and Intel TDX TEE_TCB_SVN.

SEV-SNP packs its firmware security patch levels (SPLs) in a 64-bit TCB_VERSION whose layout
depends on the product (SEV-SNP ABI spec, "TCB_VERSION"; go-sev-guest `kds.DecomposeTCBVersion`):

    Milan, Genoa:  byte 0 bootloader, 1 TEE, 2-5 reserved, 6 SNP, 7 microcode
    Turin:         byte 0 FMC, 1 bootloader, 2 TEE, 3 SNP, 4-6 reserved, 7 microcode

A TCB is "at least" another when every component is (a partial order: AMD's KDS compares the same
way). TDX's TEE_TCB_SVN is 16 one-byte SVNs, compared component-wise too.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SnpTcb", "tdx_svn_at_least"]

_TURIN_PRODUCTS = ("Turin",)


@dataclass(frozen=True, slots=True, kw_only=True)
class SnpTcb:
    """The SPLs of one SEV-SNP TCB_VERSION (fmc is 0 before Turin)."""

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int = 0

    @classmethod
    def from_u64(cls, value: int, *, product: str) -> SnpTcb:
        """Decompose a little-endian TCB_VERSION read as an integer, for `product` ("Milan")."""
        b = value.to_bytes(8, "little")
        if product.startswith(_TURIN_PRODUCTS):
            return cls(fmc=b[0], bootloader=b[1], tee=b[2], snp=b[3], microcode=b[7])
        return cls(bootloader=b[0], tee=b[1], snp=b[6], microcode=b[7])

    def at_least(self, minimum: SnpTcb) -> bool:
        """True when every SPL is >= the minimum's."""
        return all(
            getattr(self, f) >= getattr(minimum, f)
            for f in ("bootloader", "tee", "snp", "microcode", "fmc")
        )


def tdx_svn_at_least(svn: bytes, minimum: bytes) -> bool:
    """Component-wise comparison of two 16-byte TEE_TCB_SVN values."""
    if len(svn) != 16 or len(minimum) != 16:
        raise ValueError("TEE_TCB_SVN values are 16 bytes")
    return all(a >= b for a, b in zip(svn, minimum, strict=True))
