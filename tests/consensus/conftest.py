"""A real mesh for `verify="consensus"`: honest and dishonest node processes over mTLS.

Every node serves all-MiniLM-L6-v2 as two spans, [0, 3) and [3, 6), except `solo`, an honest
node that alone serves the whole model as one span [0, 6). The honest nodes are h1..h3; each
dishonest one runs `tests/consensus/liar.py` with one misbehaviour, named after it. `sybil` is
two processes (two keys) behind one certificate: the second runs as `--as-name sybil`.
Tests pick their replicas with `ConsensusOptions(candidates=...)` and get a fresh client (fresh
reputation) each, unless they test reputation across requests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from secure_infer.client import Client
from secure_infer.localmesh import LocalMesh, NodeSpec

ROOT = Path(__file__).resolve().parents[2]
MODEL = "all-MiniLM-L6-v2"
SPANS = ((MODEL, 0, 3), (MODEL, 3, 6))
LIARS = {
    "noise": "noise:0.01",
    "zeros": "zeros",
    "stale": "stale",
    "replay": "replay",
    "wrong": "wrong_weights",
    "badcommit": "bad_commitment",
    "dropper": "drop_after:0",
    "refuse": "refuse:OUT_OF_RANGE",
    "badspan": "extra_span:4:9",
    "sybil": "zeros",
}


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def mesh(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch_module: pytest.MonkeyPatch
) -> Iterator[LocalMesh]:
    monkeypatch_module.setenv("PYTHONPATH", str(ROOT))  # the liar module lives in tests/
    specs = [NodeSpec(name=f"h{i}", spans=SPANS) for i in (1, 2, 3)] + [
        NodeSpec(
            name=name,
            spans=SPANS,
            entry="tests.consensus.liar",
            extra_args=("--misbehave", mode),
        )
        for name, mode in LIARS.items()
    ]
    specs += [
        NodeSpec(
            name="sybil2",  # its files; it runs as "sybil", with sybil's certificate
            spans=SPANS,
            entry="tests.consensus.liar",
            extra_args=("--misbehave", "zeros", "--as-name", "sybil"),
        ),
        NodeSpec(name="solo", spans=((MODEL, 0, 6),)),
    ]
    with LocalMesh(tmp_path_factory.mktemp("consensus-mesh"), specs, threads=1) as running:
        yield running


@pytest.fixture
def client(mesh: LocalMesh) -> Iterator[Client]:
    with Client(mesh.seeds, tls=mesh.client_tls()) as c:
        yield c
