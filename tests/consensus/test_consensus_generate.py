"""verify="consensus" for generation: every replica keeps its own KV cache; a lazy replica that
repeats its previous step is convicted mid-generation and replaced by a fresh node rebuilt from
the span's inputs, and the tokens stay the whole model's greedy ones."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from secure_infer import ConsensusOptions
from secure_infer.client import Client
from secure_infer.localmesh import LocalMesh, NodeSpec
from tests.conftest import smol_greedy
from verification.consensus import verify_verdict

ROOT = Path(__file__).resolve().parents[2]
SMOL = "SmolLM2-135M-Instruct"
PROMPT = "Name a primary colour."
NEW_TOKENS = 4


@pytest.fixture(scope="module")
def smol_mesh(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch_module: pytest.MonkeyPatch
) -> Iterator[LocalMesh]:
    monkeypatch_module.setenv("PYTHONPATH", str(ROOT))
    span = ((SMOL, 0, 30),)
    specs = [NodeSpec(name=f"g{i}", spans=span) for i in (1, 2, 3)] + [
        NodeSpec(
            name="stale",
            spans=span,
            entry="tests.consensus.liar",
            extra_args=("--misbehave", "stale"),
        )
    ]
    with LocalMesh(tmp_path_factory.mktemp("consensus-gen"), specs, threads=1) as running:
        yield running


def test_a_stale_decoder_is_convicted_mid_generation_and_replaced(smol_mesh: LocalMesh) -> None:
    with Client(smol_mesh.seeds, tls=smol_mesh.client_tls()) as client:
        # The honest tokens: the whole model run locally (plain split generation through the
        # mesh could be routed through the liar, which the route planner may prefer).
        expected = smol_greedy(client.parts(SMOL).encode(PROMPT), NEW_TOKENS)
        options = ConsensusOptions(k=3, candidates=("g1", "g2", "stale"))
        res = client.generate(
            SMOL, PROMPT, max_new_tokens=NEW_TOKENS, verify="consensus", consensus=options
        )
    assert list(res.token_ids) == expected
    report = res.consensus
    assert report is not None and report.checked
    (span,) = report.spans
    # Prefill and the first decode step are honest; the second decode step repeats the first.
    assert span.convicted == ("stale",)
    assert span.decisions == NEW_TOKENS
    assert span.max_agreeing_distance <= span.tolerance
    (verdict,) = report.verdicts
    verify_verdict(verdict.to_json())
    assert verdict.step_tokens == 1 and verdict.receipts[0].past_length > 0


def test_a_replica_joining_late_is_rebuilt_from_the_span_inputs(smol_mesh: LocalMesh) -> None:
    # After a conviction the slot is refilled to k from the remaining nodes: g3 joins at a later
    # step and must replay the whole history (prefill + earlier steps) to agree.
    with Client(smol_mesh.seeds, tls=smol_mesh.client_tls()) as client:
        options = ConsensusOptions(k=2, max_replicas=3, candidates=("g1", "g3", "stale"))
        for _ in range(6):
            res = client.generate(
                SMOL, PROMPT, max_new_tokens=NEW_TOKENS, verify="consensus", consensus=options
            )
            assert res.consensus is not None
            if res.consensus.convicted:
                break
        else:
            pytest.fail("stale was never drawn in six requests")
    (span,) = res.consensus.spans
    assert span.convicted == ("stale",)
    assert {"g1", "g3"} <= set(span.replicas)
    assert span.max_agreeing_distance <= span.tolerance
