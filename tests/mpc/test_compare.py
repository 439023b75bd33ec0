"""Dealer-assisted two-party comparison (`mpc.backends.crypten_compare`): exact signs at every
magnitude below 2^40 (its domain), far fewer bytes than CrypTen's A2B comparison, and the same
results through CrypTen's own entry points (lt, relu, sign)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpc.backends import crypten as backend
from mpc.backends.crypten_compare import COMPARE_BITS, bit_planes, pack, unpack
from mpc.launch import run_parties

pytestmark = pytest.mark.multiparty

ELEMENTS = 100_000


def _values(seed: int, count: int, max_bits: int) -> torch.Tensor:
    """Signed values, magnitudes log-uniform below 2^max_bits, plus the domain's edges."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, max_bits, size=count)
    mantissa = rng.integers(0, 2**62, size=count, dtype=np.int64) >> (62 - bits)
    signs = rng.choice(np.array([-1, 1], dtype=np.int64), size=count)
    out = mantissa * signs
    top = 2**max_bits
    out[:6] = [0, -1, 1, -top + 1, top - 1, -(top // 2)]
    return torch.from_numpy(out)


def test_packing_round_trips() -> None:
    bits = torch.randint(0, 2, (3, 130))
    words = pack(bits)
    assert words.shape == (3, 3)
    assert torch.equal(unpack(words, 130), bits)
    v = torch.tensor([5, -1, 2**62 + 3])  # planes of any int64
    planes = bit_planes(v, 63)
    assert torch.equal(unpack(planes, 3)[:, 0], (torch.tensor(5) >> torch.arange(63)) & 1)
    assert torch.equal(unpack(planes, 3)[:, 1], torch.ones(63, dtype=torch.long))


def _compare(rank: int, count: int) -> dict[str, object]:
    crypten = backend.load()
    from mpc.backends import crypten_compare

    out: dict[str, object] = {"active": crypten_compare.dealer_comparison_active(crypten)}
    crypten.cfg.communicator.verbose = True  # count bytes on the gloo communicator too
    values = _values(11, count, COMPARE_BITS)
    x = crypten.cryptensor(torch.zeros(count), src=0)
    x._tensor.share = crypten.mpc.primitives.arithmetic.ArithmeticSharedTensor(
        values, precision=0, src=0
    ).share
    comm = crypten.communicator.get()
    before = comm.get_communication_stats()["bytes"]
    out["ltz"] = x._ltz().get_plain_text()
    out["bytes_ours"] = comm.get_communication_stats()["bytes"] - before
    # CrypTen's entry points on real fixed-point values, ours vs CrypTen's own protocol.
    y = crypten.cryptensor(_grid(), src=0)
    out["lt"] = (y < 0.25).get_plain_text()
    out["relu"] = y.relu().get_plain_text()
    out["sign"] = y.sign().get_plain_text()
    crypten_compare.set_enabled(False)
    try:
        small = x[:2000]
        before = comm.get_communication_stats()["bytes"]
        out["ltz_crypten"] = small._ltz().get_plain_text()
        out["bytes_crypten_2000"] = comm.get_communication_stats()["bytes"] - before
    finally:
        crypten_compare.set_enabled(True)
    before = comm.get_communication_stats()["bytes"]
    x[:2000]._ltz()
    out["bytes_ours_2000"] = comm.get_communication_stats()["bytes"] - before
    return out


def _grid() -> torch.Tensor:
    """-50 .. 50 in steps of 0.1, rounded to the fixed-point grid (0 is exactly 0)."""
    return torch.arange(-500, 501) / 10


@pytest.fixture(scope="module")
def run() -> dict[str, object]:
    results = run_parties(_compare, world_size=2, ttp=True, args=(ELEMENTS,), timeout_s=240.0)
    assert results[0]["active"] and results[1]["active"]
    return results[0]


def test_every_sign_is_exact_in_the_domain(run: dict[str, object]) -> None:
    values = _values(11, ELEMENTS, COMPARE_BITS)
    got = run["ltz"]
    want = (values < 0).to(got.dtype)  # type: ignore[union-attr]
    assert torch.equal(got, want), f"{int((got != want).sum())} wrong signs"  # type: ignore[operator]


def test_crypten_entry_points_give_the_same_answers(run: dict[str, object]) -> None:
    y = _grid()
    assert torch.equal(run["lt"].float(), (y < 0.25).float())  # type: ignore[union-attr]
    assert torch.allclose(run["relu"], y.relu(), atol=1e-4)  # type: ignore[arg-type]
    assert torch.equal(run["sign"].float(), torch.where(y < 0, -1.0, 1.0))  # type: ignore[union-attr]
    control = (_values(11, ELEMENTS, COMPARE_BITS)[:2000] < 0).float()
    assert torch.equal(run["ltz_crypten"].float(), control)  # type: ignore[union-attr]


def test_uses_several_times_fewer_bytes_than_crypten(run: dict[str, object]) -> None:
    ours = int(run["bytes_ours_2000"]) / 2000  # type: ignore[call-overload]
    theirs = int(run["bytes_crypten_2000"]) / 2000  # type: ignore[call-overload]
    print(f"bytes per element (CrypTen's counter): ours {ours:.1f}, CrypTen's A2B {theirs:.1f}")
    assert theirs / ours > 4, (ours, theirs)
