"""`secure_infer.services`: grouping what nodes serve, and nodes that do not answer."""

from __future__ import annotations

import socket
import time

import grpc

from decentralized.v1 import common_pb2
from secure_infer.services import mesh_services, split_coverage

MINILM = "all-MiniLM-L6-v2"


def _record(name: str, address: str, *spans: tuple[str, int, int]) -> common_pb2.NodeRecord:
    return common_pb2.NodeRecord(
        name=name,
        address=address,
        node_id=name * 4,
        spans=[common_pb2.Span(model=m, start=a, end=b) for m, a, b in spans],
        mpc_models=[MINILM],
    )


def _closed_port() -> int:
    with socket.socket() as s:  # bound, then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_layer_coverage_counts_replicas_per_layer() -> None:
    records = [
        _record("a", "x:1", (MINILM, 0, 3)),
        _record("b", "x:2", (MINILM, 3, 6)),
        _record("c", "x:3", (MINILM, 0, 6)),
    ]
    cov = split_coverage(MINILM, records)
    assert cov == {
        "layers": 6,
        "covered": True,
        "replicas_min": 2,
        "spans": ["a[0,3)", "b[3,6)", "c[0,6)"],
    }
    gap = split_coverage(MINILM, records[:1])
    assert not gap["covered"] and gap["replicas_min"] == 0
    assert split_coverage("no-such-model", records)["covered"] is False


def test_nodes_that_do_not_answer_are_listed_not_fatal() -> None:
    # Two nodes on closed ports: both reported, asked at once (not one timeout after another).
    records = [
        _record(name, f"127.0.0.1:{_closed_port()}", (MINILM, 0, 6)) for name in ("gone", "dead")
    ]
    t0 = time.monotonic()
    doc = mesh_services(records, lambda r: grpc.insecure_channel(r.address))
    assert set(doc["unreachable"]) == {"gone", "dead"}
    assert all(why.startswith("PeerUnavailable") for why in doc["unreachable"].values())
    assert time.monotonic() - t0 < 10
    assert [n["name"] for n in doc["nodes"]] == ["dead", "gone"]
    assert doc["split"][MINILM]["replicas_min"] == 2  # records still say what they serve
    mpc = doc["mpc"][MINILM]
    assert mpc == {"nodes": ["dead", "gone"], "ready": False, "use": "embed/generate"}
    assert doc["classifiers"] == {} and doc["fides_verifiers"] == {}
