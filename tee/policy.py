"""What a verifier accepts (`Policy`) and how it keeps nonces fresh (`NonceStore`).

Freshness: the client draws a nonce from its `NonceStore` (`issue()`), sends it with the request,
and the verifier `consume()`s it after every other check passed. A nonce is accepted once, only
if this store issued it and within `ttl_s`: a replayed quote raises `ReplayedNonce`, an unknown or
expired one `StaleNonce`. SEV-SNP and TDX evidence carry no timestamp, so the nonce is their only
freshness; simulated quotes also carry a signed timestamp checked against `Policy.max_age_s`.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tee.errors import ReplayedNonce, StaleNonce
from tee.measurement import NONCE_SIZE
from tee.tcb import SnpTcb

__all__ = ["NonceStore", "Policy"]

# Why an empty launch allow list refuses everything (how the SDK refuses unpinned guests).
UNPINNED_LAUNCH = (
    "no launch measurement is pinned: hardware evidence from an unknown guest image proves "
    "nothing about the code it claims to run"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """The verifier's acceptance rules. Every allow list must be given explicitly.

    `None` for an allow list means "not pinned" and must be written out by the caller; an empty
    set refuses everything.
    """

    allowed_launch_measurements: frozenset[bytes] | None  # SNP MEASUREMENT / TDX MRTD (48 B)
    allowed_code_measurements: frozenset[bytes] | None  # enclave code+model measurement (48 B)
    expected_report_data: bytes | None = None  # exact 64-byte REPORT_DATA; set per request
    allow_debug: bool = False  # accept guests the host may debug (SNP policy bit 19, TD DEBUG)
    # accept guests the host may hand to a migration agent / migrate with their memory
    # (SNP policy bit 18 MIGRATE_MA, TD_ATTRIBUTES bit 29 MIGRATABLE): the launch measurement
    # does not cover these host choices
    allow_migration: bool = False
    allow_simulated: bool = False  # accept INSECURE simulated quotes (development only)
    min_snp_tcb: SnpTcb | None = None  # minimum reported TCB of an SEV-SNP guest
    snp_vmpl: int | None = None  # the VMPL the SNP report must have been requested at (0-3)
    min_tdx_tee_tcb_svn: bytes | None = None  # minimum TEE_TCB_SVN (16 B, component-wise)
    # TDX: MRTD measures only the TD's firmware; the kernel, initrd and command line are
    # extended into RTMR1 and RTMR2 (firmware configuration into RTMR0). Allowed values of
    # RTMR0 || RTMR1 || RTMR2 (144 B); RTMR3 is extended at run time and not pinned here.
    allowed_tdx_rtmrs: frozenset[bytes] | None = None
    # TDX: exact MRCONFIGID || MROWNER || MROWNERCONFIG (144 B), host-provided at launch
    expected_tdx_owner_fields: bytes | None = None
    max_age_s: float = 300.0  # seconds; oldest simulated quote timestamp accepted

    def __post_init__(self) -> None:
        if self.expected_report_data is not None and len(self.expected_report_data) != 64:
            raise ValueError("expected_report_data must be 64 bytes")
        if self.allowed_tdx_rtmrs is not None and any(
            len(r) != 144 for r in self.allowed_tdx_rtmrs
        ):
            raise ValueError("allowed_tdx_rtmrs values must be RTMR0 || RTMR1 || RTMR2 (144 bytes)")
        if (
            self.expected_tdx_owner_fields is not None
            and len(self.expected_tdx_owner_fields) != 144
        ):
            raise ValueError("expected_tdx_owner_fields must be 144 bytes")
        if self.snp_vmpl is not None and not 0 <= self.snp_vmpl <= 3:
            raise ValueError("snp_vmpl must be 0..3")
        if self.min_tdx_tee_tcb_svn is not None and len(self.min_tdx_tee_tcb_svn) != 16:
            raise ValueError("min_tdx_tee_tcb_svn must be 16 bytes")
        if self.max_age_s <= 0:
            raise ValueError("max_age_s must be positive")


class NonceStore:
    """Issues single-use nonces and refuses reuse (thread-safe, in memory, one process).

    Memory is bounded: entries are dropped once `ttl_s` has passed (after which the nonce is
    refused as stale anyway), and `issue()` refuses to hold more than `max_outstanding`.
    """

    def __init__(
        self,
        *,
        ttl_s: float = 300.0,
        max_outstanding: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s <= 0 or max_outstanding <= 0:
            raise ValueError("ttl_s and max_outstanding must be positive")
        self._ttl_s = ttl_s
        self._max = max_outstanding
        self._clock = clock
        self._issued: dict[bytes, float] = {}  # nonce -> expiry (clock seconds)
        self._consumed: dict[bytes, float] = {}  # nonce -> expiry, kept to name replays
        self._lock = threading.Lock()

    def _prune(self, now: float) -> None:
        for table in (self._issued, self._consumed):
            for nonce in [n for n, expiry in table.items() if expiry <= now]:
                del table[nonce]

    def issue(self) -> bytes:
        """A fresh 32-byte nonce from the OS CSPRNG, valid for `ttl_s` seconds."""
        with self._lock:
            now = self._clock()
            self._prune(now)
            if len(self._issued) >= self._max:
                raise RuntimeError(f"more than {self._max} nonces outstanding")
            nonce = secrets.token_bytes(NONCE_SIZE)
            self._issued[nonce] = now + self._ttl_s
            return nonce

    def consume(self, nonce: bytes) -> None:
        """Accept `nonce` once; raises ReplayedNonce on reuse, StaleNonce if unknown or expired."""
        with self._lock:
            now = self._clock()
            if nonce in self._consumed and self._consumed[nonce] > now:
                raise ReplayedNonce("nonce was already used by an earlier quote")
            expiry = self._issued.get(nonce)
            if expiry is None or expiry <= now:
                self._issued.pop(nonce, None)
                raise StaleNonce("nonce was not issued by this store or its lifetime ran out")
            del self._issued[nonce]
            self._consumed[nonce] = expiry
