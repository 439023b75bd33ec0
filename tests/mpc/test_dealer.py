"""Batched dealer preprocessing: one dealer round trip per computation instead of one per
triple, with the same results, and a loud failure when the computation is not the planned one."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from mpc.launch import run_parties

X = torch.linspace(-3.0, 3.0, 32).reshape(4, 8)
Y = torch.linspace(2.0, -1.0, 32).reshape(4, 8)
W = torch.linspace(-0.5, 0.5, 24).reshape(8, 3)


def _compute(crypten: Any, x: torch.Tensor, y: torch.Tensor) -> Any:
    from mpc.approx import gelu

    a = crypten.cryptensor(x, src=0)
    b = crypten.cryptensor(y, src=1)
    w = crypten.cryptensor(W, src=0)
    h = gelu(a * b)  # (4, 8): triples, comparisons, wraps, B2A
    return (h.matmul(w) > 0.1).get_plain_text(), h.matmul(w).get_plain_text()


def _session(rank: int, mismatch: bool, max_bytes: int | None = None) -> dict[str, Any]:
    from mpc.backends import crypten_dealer as dealer
    from mpc.backends.crypten import load

    crypten = load()
    out: dict[str, Any] = {}
    zeros = torch.zeros_like(X)
    if rank == 0:
        with dealer.record_plan(crypten) as plan:
            _compute(crypten, zeros, zeros)  # placeholder inputs of the real shapes
        client = crypten.mpc.provider.ttp_provider.TTPClient.get()
        before = client.online_requests
        out["queued"] = dealer.prefetch(crypten, plan, max_bytes=max_bytes)
        out["plan_bytes"], out["chunks"] = plan.share_bytes, len(plan.chunks(max_bytes))
        if mismatch:
            _compute(crypten, torch.zeros(2, 8), torch.zeros(2, 8))  # not the planned shapes
        out["bits"], out["values"] = _compute(crypten, X, Y)
        out["online_requests"] = client.online_requests - before
        out["round_trips"] = client.prefetch_round_trips
        out["pending"] = dealer.pending(crypten)
        out["plan_length"] = len(plan)
    else:
        _compute(crypten, zeros, zeros)
        out["bits"], out["values"] = _compute(crypten, X, Y)
    return out


def _reference() -> torch.Tensor:
    return torch.nn.functional.gelu(X * Y) @ W


@pytest.mark.parametrize("max_bytes", [None, 512], ids=["one-round-trip", "chunks-of-512-bytes"])
def test_prefetched_dealer_makes_no_online_round_trips(max_bytes: int | None) -> None:
    party0, party1 = run_parties(
        _session, world_size=2, ttp=True, args=(False, max_bytes), timeout_s=180
    )
    assert party0["plan_length"] > 10
    assert party0["queued"] == party0["plan_length"]
    assert party0["online_requests"] == 0
    assert party0["plan_bytes"] > 4 * 512  # the sizes were recorded with the plan
    if max_bytes is None:
        assert party0["round_trips"] == party0["chunks"] == 1
    else:  # one dealer round trip per chunk, each fetched when the queue ran dry
        assert party0["round_trips"] == party0["chunks"] >= 4
    assert party0["pending"] == 0
    for party in (party0, party1):
        torch.testing.assert_close(party["values"], _reference(), atol=0.05, rtol=0)
        ref_bits = (_reference() > 0.1).float()
        agree = (party["bits"] == ref_bits) | ((_reference() - 0.1).abs() < 0.05)
        assert bool(agree.all())


def test_a_computation_that_was_not_planned_fails_loudly() -> None:
    from mpc.backends.crypten_dealer import DealerPlanMismatch

    with pytest.raises(DealerPlanMismatch, match="is not the planned"):
        run_parties(_session, world_size=2, ttp=True, args=(True,), timeout_s=180)


def test_a_plan_splits_into_bounded_chunks_and_survives_pickling() -> None:
    import pickle

    from mpc.backends.crypten_dealer import DealerPlan

    entries = [("additive", None, ((n,), (n,), "mul"), {}) for n in (10, 100, 5, 5)]
    plan = DealerPlan(entries, sizes=[10, 100, 5, 5])
    assert plan.share_bytes == 8 * 120
    assert plan.chunks(None) == [entries]
    # 100 elements alone exceed 80 bytes: a chunk of its own; 5 + 5 fit together.
    assert plan.chunks(80) == [entries[:1], entries[1:2], entries[2:]]
    assert plan.chunks(8 * 120) == [entries]
    # the worker sends its plan to the node through a multiprocessing pipe (pickle)
    copy = pickle.loads(pickle.dumps(plan))  # noqa: S301 - bytes this test just made
    assert copy == plan and copy.sizes == plan.sizes
    assert DealerPlan(entries).chunks(80) == [entries]  # no sizes: one piece
