"""How the MPC client draws its parties and checks the bound the parties report."""

from __future__ import annotations

import collections

import pytest

from decentralized.mpc_client import _bound, _pick
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
