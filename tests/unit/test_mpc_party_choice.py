"""How the MPC client draws its parties and checks the bound the parties report."""

from __future__ import annotations

import collections

import grpc
import pytest
import torch

from decentralized.client import MeshClient
from decentralized.errors import MeshError
from decentralized.mpc_client import _assess, _bound, _pick
from decentralized.transport import Credentials
from decentralized.v1 import common_pb2
from mpc.errors import GarbageOutput


def _records(name: str, keys: int) -> list[common_pb2.NodeRecord]:
    return [common_pb2.NodeRecord(name=name, node_id=f"{name}-{i}") for i in range(keys)]


def test_parties_are_three_distinct_names_however_many_keys_one_announces() -> None:
    """One operator can sign any number of records under its certificate name; drawing
    records would let it fill the draw. Names are drawn, so each name counts once."""
    honest = [r for i in range(6) for r in _records(f"honest{i}", 1)]
    pool = honest + _records("evil0", 20) + _records("evil1", 20)
    both_parties = 0
    draws = 3000
    for _ in range(draws):
        picked = _pick(pool, None)
        assert len({r.name for r in picked}) == 3
        both_parties += {picked[0].name, picked[1].name} == {"evil0", "evil1"}
    # by names: P(the two colluders in the two party seats) = 2 / (8 * 7) = 3.6 %
    assert both_parties / draws < 0.06
    counts = collections.Counter(r.name for _ in range(500) for r in _pick(pool, None))
    assert counts["evil0"] < 2 * counts["honest0"] + 50  # not 20x as the keys would give


def test_pinned_parties_are_the_ones_named() -> None:
    pool = _records("a", 1) + _records("b", 1) + _records("c", 1) + _records("d", 1)
    assert [r.name for r in _pick(pool, ("c", "a", "b"))] == ["c", "a", "b"]


@pytest.mark.parametrize(
    ("bounds", "threat_model"),
    [
        ((float("nan"), 5.0), "input_private"),
        ((5.0, float("nan")), "input_private"),
        ((float("inf"), 5.0), "weights_private"),
        ((0.0, 5.0), "input_private"),
        ((-1.0, 5.0), "weights_private"),
    ],
)
def test_a_bound_that_is_not_a_positive_number_is_a_deviating_party(
    bounds: tuple[float, float], threat_model: str
) -> None:
    with pytest.raises(GarbageOutput, match="output bound"):
        _bound(bounds, threat_model)


def test_the_bound_is_party_0_s_under_weights_private_else_the_smaller() -> None:
    assert _bound((5.0, 3.0), "input_private") == 3.0
    assert _bound((5.0, 3.0), "weights_private") == 5.0
    assert _bound((5.0, float("nan")), "weights_private") == 5.0  # party 1 knows no weights


def _failure(code: grpc.StatusCode, text: str) -> MeshError:
    err = MeshError(text)
    err.code = code
    return err


ABORTED = grpc.StatusCode.ABORTED


def test_what_the_client_saw_itself_is_blamed_and_the_rest_are_consequences() -> None:
    blame = _assess(
        {
            0: _failure(grpc.StatusCode.UNAVAILABLE, "party 0 node-a: connection refused"),
            1: _failure(ABORTED, "rank 1 on node-b: rank 0 sent nothing on 'x' within 5 s"),
        }
    )
    assert blame.ban == {0} and blame.exclude == {0} and not blame.disputes


def test_a_single_accusation_is_a_dispute_not_a_ban() -> None:
    """A deviating party can write "rank 1 sent nothing" about an honest peer; the honest
    peer, left waiting, writes the same about it. Nobody can tell who lies: neither is banned,
    both are left out of this request's next attempts."""
    blame = _assess(
        {
            0: _failure(ABORTED, "rank 0 on evil: rank 1 sent nothing on 'p2p' within 5 s"),
            1: _failure(ABORTED, "rank 1 on honest: rank 0 sent nothing on 'p2p' within 5 s"),
        }
    )
    assert blame.ban == set() and blame.exclude == {0, 1}
    assert set(blame.disputes) == {(0, 1), (1, 0)}


def test_a_rank_both_others_accuse_is_banned() -> None:
    """At most one of the three deviates (the model's own assumption), so two accusers
    cannot both lie."""
    blame = _assess(
        {
            0: _failure(ABORTED, "rank 0 on a: rank 1 sent nothing on 'p2p' within 5 s"),
            2: _failure(ABORTED, "rank 2 on c: rank 1 (127.0.0.1:9): UNAVAILABLE: reset"),
            1: _failure(ABORTED, "rank 1 on b: rank 0 sent nothing on 'p2p' within 5 s"),
        }
    )
    assert blame.ban == {1}
    assert blame.exclude == {0, 1}  # 1 accused 0 alone: a dispute
    assert blame.disputes == ((1, 0),)


def test_a_busy_node_is_skipped_not_banned_and_a_lone_failure_is_its_own() -> None:
    busy = _assess({2: _failure(grpc.StatusCode.RESOURCE_EXHAUSTED, "runs 2 ranks already")})
    assert busy.ban == set() and busy.exclude == {2}
    own = _assess({1: _failure(ABORTED, "rank 1 on b: the session rank's process died")})
    assert own.ban == {1} and own.exclude == {1}


def test_a_node_in_disputes_with_several_peers_is_the_likely_liar() -> None:
    mesh = MeshClient(["127.0.0.1:1"], Credentials(insecure_dev=True), ban_s=60.0)
    assert mesh.dispute("liar", "honest-1") == set()
    assert mesh.dispute("liar", "honest-1") == set()  # the same pair again counts once
    assert mesh.dispute("honest-2", "liar") == {"liar"}
    assert mesh.dispute("honest-3", "honest-1") == {"liar", "honest-1"}  # two peers each
    expired = MeshClient(["127.0.0.1:1"], Credentials(insecure_dev=True), ban_s=0.0)
    expired.dispute("liar", "honest-1")
    assert expired.dispute("liar", "honest-2") == set()  # the first one has expired


def test_a_peer_named_in_any_error_text_is_accused_not_the_one_that_reports_it() -> None:
    """An honest rank that received a malformed message fails; the text names the sender
    (`from rank 1`), so the receiver is not taken for failing on its own."""
    blame = _assess(
        {0: _failure(ABORTED, "rank 0 on a: MalformedMessage: from rank 1: bad tensor magic")}
    )
    assert blame.ban == set() and blame.disputes == ((0, 1),)
    dealer = _assess(
        {2: _failure(ABORTED, "rank 2 on c: serving a dealer request of rank 0: KeyError")}
    )
    assert dealer.ban == set() and dealer.disputes == ((2, 0),)


def test_several_ranks_out_of_time_are_left_out_not_banned() -> None:
    late = grpc.StatusCode.DEADLINE_EXCEEDED
    several = _assess({0: _failure(late, "party 0 a"), 1: _failure(late, "party 1 b")})
    assert several.ban == set() and several.exclude == {0, 1}
    alone = _assess({1: _failure(late, "party 1 b")})
    assert alone.ban == {1}


def test_a_share_that_does_not_decode_or_fit_is_its_sender_s_fault() -> None:
    """What a party returned is what the client received itself: a malformed share bans its
    sender (the session is retried without it); two shares that fit but differ are a dispute."""
    from decentralized import _wire
    from decentralized.mpc_client import _SessionFailed, _shares

    good = _wire.tensor_to_proto(torch.zeros(3, 4, dtype=torch.int64))
    huge = common_pb2.Tensor(dtype="int64", shape=[2**62, 2**62, 0])
    floats = _wire.tensor_to_proto(torch.zeros(3, 4, dtype=torch.float32))
    rows = _wire.tensor_to_proto(torch.zeros(2, 4, dtype=torch.int64))
    other = _wire.tensor_to_proto(torch.zeros(3, 5, dtype=torch.int64))
    fits = lambda s: s.dim() == 2 and s.shape[0] == 3  # noqa: E731
    names = ["a", "b"]
    assert len(_shares([good, good], names, fits, "(3, C)")) == 2
    for bad in (huge, floats, rows):
        with pytest.raises(_SessionFailed) as info:
            _shares([good, bad], names, fits, "(3, C)")
        assert set(info.value.failures) == {1}
        assert _assess(info.value.failures).ban == {1}
    with pytest.raises(_SessionFailed) as info:
        _shares([good, other], names, fits, "(3, C)")
    blame = _assess(info.value.failures)
    assert blame.ban == set() and set(blame.disputes) == {(0, 1), (1, 0)}
