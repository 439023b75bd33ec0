"""A node keeps party 0's dealer plans by public shapes, offers them to the next session of the
same shapes only, forgets one that failed, and keeps at most `MAX_DEALER_PLANS`; and it keeps one
warm spare worker process for the next session."""

from __future__ import annotations

import dataclasses

import numpy as np

from decentralized import mpc_service, mpc_worker
from mpc.backends.crypten_dealer import DealerPlan


def _job(rank: int = 0, tokens: int = 8, **fields: object) -> mpc_worker.Job:
    base: dict[str, object] = {
        "session_id": "plan-session-000001",
        "rank": rank,
        "model": "all-MiniLM-L6-v2",
        "threat_model": "input_private",
        "attention_mask": np.ones((1, tokens), dtype=np.int64),
        "rank_names": ("a", "b", "c"),
        "peer_timeout_s": 10.0,
        "listen_host": "127.0.0.1",
        "hidden_size": 384,
        "vocab_size": 30522,
    }
    base.update(fields)
    return mpc_worker.Job(**base)  # type: ignore[arg-type]


def _plan(n: int) -> DealerPlan:
    return DealerPlan([("additive", None, ((n,), (n,), "mul"), {})], sizes=[n])


def _host() -> mpc_service.MPCHost:
    return mpc_service.MPCHost("a", (), None, "127.0.0.1")  # type: ignore[arg-type]


def test_the_plan_key_is_the_public_shapes_not_the_mask_values() -> None:
    padded = _job(attention_mask=np.array([[1, 1, 1, 0, 0, 0, 0, 0]], dtype=np.int64))
    assert padded.plan_key() == _job().plan_key()
    assert _job(tokens=9).plan_key() != _job().plan_key()
    assert _job(threat_model="weights_private").plan_key() != _job().plan_key()


def test_a_recorded_plan_is_kept_offered_and_forgotten_when_its_session_fails() -> None:
    host = _host()
    job = _job()
    reply = {"ok": True, "dealer_plan": _plan(4), "dealer": {"online_requests": 1}}
    host._learn(job, reply)
    assert "dealer_plan" not in reply  # never forwarded to the client
    assert host._plans[job.plan_key()] == _plan(4)
    host._learn(_job(rank=1), {"ok": True, "dealer_plan": _plan(5)})  # only party 0's count
    assert host._plans[job.plan_key()] == _plan(4)
    used = dataclasses.replace(job, dealer_plan=host._plans[job.plan_key()])
    host._learn(used, {"error": "DealerPlanMismatch: ..."})
    assert job.plan_key() not in host._plans


def test_at_most_max_dealer_plans_are_kept_least_recently_used_out() -> None:
    host = _host()
    for tokens in range(1, mpc_service.MAX_DEALER_PLANS + 2):
        host._learn(_job(tokens=tokens), {"ok": True, "dealer_plan": _plan(tokens)})
    assert len(host._plans) == mpc_service.MAX_DEALER_PLANS
    assert _job(tokens=1).plan_key() not in host._plans
    assert _job(tokens=2).plan_key() in host._plans


def test_a_node_keeps_one_warm_spare_worker_and_ends_it_on_close() -> None:
    host = mpc_service.MPCHost(
        "a",
        ("all-MiniLM-L6-v2",),
        None,  # type: ignore[arg-type] - the spare gets credentials only with a job
        "127.0.0.1",
    )
    try:
        assert host._spare is not None
        process = host._spare[0]
        assert process.is_alive()
        assert _host()._spare is None  # a node without MPC models keeps none
    finally:
        host.close()
    assert not process.is_alive() and host._spare is None
