from __future__ import annotations

import pytest

from decentralized.errors import NoRoute
from decentralized.routing import plan_route
from decentralized.v1 import common_pb2


def _rec(
    node_id: str, spans: list[tuple[int, int]], rate: float = 100.0, load: int = 0, model: str = "m"
) -> common_pb2.NodeRecord:
    return common_pb2.NodeRecord(
        node_id=node_id,
        name=node_id,
        address=f"{node_id}:1",
        layers_per_s=rate,
        load=load,
        spans=[common_pb2.Span(model=model, start=s, end=e) for s, e in spans],
    )


def test_covers_all_layers_in_order() -> None:
    recs = [_rec("a", [(0, 2)]), _rec("b", [(2, 4)]), _rec("c", [(4, 6)])]
    route = plan_route("m", 6, recs)
    assert [(h.node_id, h.start, h.end) for h in route] == [("a", 0, 2), ("b", 2, 4), ("c", 4, 6)]


def test_prefers_faster_less_loaded_and_closer_nodes() -> None:
    recs = [_rec("a", [(0, 3)]), _rec("slow", [(3, 6)], rate=10), _rec("fast", [(3, 6)], rate=1000)]
    assert plan_route("m", 6, recs)[-1].node_id == "fast"
    recs = [_rec("a", [(0, 3)]), _rec("busy", [(3, 6)], load=9), _rec("idle", [(3, 6)])]
    assert plan_route("m", 6, recs)[-1].node_id == "idle"
    recs = [_rec("a", [(0, 3)]), _rec("far", [(3, 6)]), _rec("near", [(3, 6)])]
    route = plan_route("m", 6, recs, rtt_s={"far": 0.5, "near": 0.001})
    assert route[-1].node_id == "near"


def test_fewer_hops_win_when_cheaper() -> None:
    recs = [_rec("whole", [(0, 6)]), _rec("a", [(0, 3)]), _rec("b", [(3, 6)])]
    assert [h.node_id for h in plan_route("m", 6, recs)] == ["whole"]


def test_exclusion_and_partial_replanning() -> None:
    recs = [_rec("a", [(0, 3)]), _rec("b", [(3, 6)]), _rec("c", [(3, 6)])]
    route = plan_route("m", 6, recs, exclude={"b"}, start=3)
    assert [(h.node_id, h.start) for h in route] == [("c", 3)]


def test_no_route_names_the_gap() -> None:
    recs = [_rec("a", [(0, 3)]), _rec("x", [(0, 6)], model="other")]
    with pytest.raises(NoRoute, match=r"layers \[0, 6\).*\[0, 3\)"):
        plan_route("m", 6, recs)
    with pytest.raises(NoRoute):
        plan_route("m", 6, [_rec("a", [(0, 3)]), _rec("b", [(3, 6)])], exclude={"b"})


def test_nodes_whose_token_limit_is_too_small_are_planned_around() -> None:
    """A request longer than a node's stated limit would be refused by it (and the node
    banned for the request's fault): such nodes are not planned on; when only they cover a
    span, the request itself is at fault."""
    from decentralized.errors import InvalidRequest

    def limited(node_id: str, spans: list[tuple[int, int]], limit: int) -> common_pb2.NodeRecord:
        rec = _rec(node_id, spans)
        rec.max_tokens = limit
        return rec

    recs = [limited("a", [(0, 3)], 2048), limited("small", [(3, 6)], 256), _rec("b", [(3, 6)])]
    recs[2].layers_per_s = 1.0  # slower: chosen only because "small" cannot take the request
    assert plan_route("m", 6, recs, tokens=100)[-1].node_id == "small"
    assert plan_route("m", 6, recs, tokens=1000)[-1].node_id == "b"  # 0: not stated
    only = [limited("a", [(0, 3)], 2048), limited("small", [(3, 6)], 256)]
    with pytest.raises(InvalidRequest, match=r"1000 tokens exceed .* \(small 256\)"):
        plan_route("m", 6, only, tokens=1000)
    with pytest.raises(NoRoute):  # a gap stays a gap, whatever the limits
        plan_route("m", 6, [limited("small", [(3, 6)], 256)], tokens=1000)
