"""The SDK's guest pins (`secure_infer.GuestPins`) on the public SEV-SNP and TDX vectors.

The hardware signs only the guest's launch state and the 64 bytes of REPORT_DATA its software
chooses; unless the guest image is pinned, any confidential guest can vouch for any enclave
measurement. So the SDK refuses hardware evidence by default, and on TDX needs RTMR0-2 as well
as MRTD (which measures only the TD's firmware).
"""

from __future__ import annotations

import dataclasses

import pytest

from secure_infer import GuestPins
from tee import MeasurementNotAllowed, Policy, verify_snp_report, verify_tdx_quote

from .conftest import SNP_NOW, TDX_V4_NOW
from .test_snp import MEASUREMENT, VECTOR_POLICY
from .test_tdx import MRTD_V4
from .test_tdx import POLICY as TDX_POLICY


def _snp(pins: GuestPins, snp_report, vcek, milan):
    policy = dataclasses.replace(VECTOR_POLICY, **pins.policy_fields())
    return verify_snp_report(snp_report, vcek=vcek, trust=[milan], policy=policy, now=SNP_NOW)


def _tdx(pins: GuestPins, tdx_v4, intel_root):
    policy = dataclasses.replace(TDX_POLICY, **pins.policy_fields())
    return verify_tdx_quote(tdx_v4, root=intel_root, policy=policy, now=TDX_V4_NOW)


def test_by_default_hardware_evidence_is_refused(snp_report, vcek, milan, tdx_v4, intel_root):
    pins = GuestPins()
    with pytest.raises(MeasurementNotAllowed, match="no launch measurement is pinned"):
        _snp(pins, snp_report, vcek, milan)
    with pytest.raises(MeasurementNotAllowed, match="no launch measurement is pinned"):
        _tdx(pins, tdx_v4, intel_root)
    assert "refused" in pins.describe()


def test_snp_needs_its_launch_measurement(snp_report, vcek, milan) -> None:
    pinned = GuestPins(launch_measurements=frozenset({MEASUREMENT}))
    assert _snp(pinned, snp_report, vcek, milan).measurement == MEASUREMENT
    with pytest.raises(MeasurementNotAllowed):
        _snp(GuestPins(launch_measurements=frozenset({bytes(48)})), snp_report, vcek, milan)


def test_tdx_needs_mrtd_and_rtmrs(tdx_v4, intel_root) -> None:
    mrtd_only = GuestPins(launch_measurements=frozenset({MRTD_V4}))
    with pytest.raises(MeasurementNotAllowed, match="RTMR0-2"):  # any kernel on that firmware
        _tdx(mrtd_only, tdx_v4, intel_root)
    any_guest = Policy(allowed_launch_measurements=None, allowed_code_measurements=None)
    rtmrs = b"".join(
        verify_tdx_quote(tdx_v4, root=intel_root, policy=any_guest, now=TDX_V4_NOW).rtmrs[:3]
    )
    both = dataclasses.replace(mrtd_only, tdx_rtmrs=frozenset({rtmrs}))
    assert _tdx(both, tdx_v4, intel_root).mr_td == MRTD_V4
    assert "RTMR0-2" in both.describe()


def test_unpinned_is_an_explicit_labelled_choice(snp_report, vcek, milan, tdx_v4, intel_root):
    pins = GuestPins(allow_unpinned=True)
    assert _snp(pins, snp_report, vcek, milan)
    assert _tdx(pins, tdx_v4, intel_root)
    assert "NOT pinned" in pins.describe()
    assert GuestPins().digest_parts() != pins.digest_parts()  # sessions are not shared
