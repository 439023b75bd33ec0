"""`client.generate(..., privacy="mpc")` through a mesh of real node daemons over mTLS.

Three nodes run SmolLM2-135M-Instruct under MPC: two parties and a dealer, each rank in its own
process on its node; the prompt's embedding rows go out as additive shares, each greedy token
comes back as two shares that only the client adds up, and the KV cache stays in shares on the
parties between steps. Two tokens at input_private take about 3 minutes on 2 idle cores.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
import torch

from decentralized import _wire
from decentralized.v1 import mpc_pb2
from secure_infer import Client, InvalidRequest, MPCOptions
from secure_infer.localmesh import LocalMesh, NodeSpec
from tests.conftest import MINILM, mpc_stub, smol_greedy, start_mesh

pytestmark = [pytest.mark.grpc, pytest.mark.multiparty, pytest.mark.slow]

SMOL = "SmolLM2-135M-Instruct"
PROMPT = "The capital of France is"
NAMES = ("gen-a", "gen-b", "gen-c")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    specs = [NodeSpec(name=name, mpc_models=(SMOL, MINILM)) for name in NAMES]
    mesh = start_mesh(tmp_path_factory.mktemp("mpc-gen-mesh"), specs)
    yield mesh
    mesh.stop()


def test_mpc_generation_matches_plaintext_greedy(mesh: LocalMesh) -> None:
    with Client(mesh.seeds, tls=mesh.client_tls()) as client:
        events = list(
            client.generate_stream(SMOL, PROMPT, max_new_tokens=2, chat=False, privacy="mpc")
        )
        prompt_ids = client.parts(SMOL).encode(PROMPT, chat=False)
    result = events[-1].result
    assert result is not None and all(e.result is None for e in events[:-1])
    expected = smol_greedy(prompt_ids, 2)
    stop = expected.index(2) + 1 if 2 in expected else len(expected)  # <|im_end|> ends it
    assert list(result.token_ids) == expected[:stop]
    assert [e.token_id for e in events] == list(result.token_ids)
    report = result.mpc
    assert report is not None and report.threat_model == "input_private"
    assert [p.role for p in report.parties] == ["party 0", "party 1", "dealer"]
    assert {p.name for p in report.parties} == set(NAMES)
    assert report.trusted_dealer and not report.failed_attempts
    assert report.bytes_total > 0 and report.rounds > 0
    assert "top logit" in report.output_check
    assert result.privacy.mode == "mpc" and result.route == ()
    assert "generation steps" in " ".join(result.privacy.node_views)
    # No node logged the prompt or the generated text.
    for name in NAMES:
        log = mesh.nodes[name].log.read_text()
        assert PROMPT not in log and "France" not in log


def test_sdk_refuses_bad_mpc_generation_arguments(mesh: LocalMesh) -> None:
    with Client(mesh.seeds, tls=mesh.client_tls()) as client:
        with pytest.raises(InvalidRequest, match="at most 64"):
            client.generate(SMOL, PROMPT, max_new_tokens=65, privacy="mpc")
        with pytest.raises(InvalidRequest, match="privacy"):
            client.generate(SMOL, PROMPT, privacy="homomorphic")
        with pytest.raises(InvalidRequest, match="threat_model"):
            client.generate(SMOL, PROMPT, privacy="mpc", mpc=MPCOptions(threat_model="none"))


def _open(**fields: object) -> mpc_pb2.OpenSession:
    base: dict[str, object] = {
        "session_id": "bad-generate-session-01",
        "rank": 0,
        "model": SMOL,
        "threat_model": "input_private",
        "attention_mask": _wire.tensor_to_proto(torch.ones(1, 4, dtype=torch.int64)),
        "rank_names": list(NAMES),
        "peer_timeout_s": 10.0,
        "max_new_tokens": 2,
    }
    base.update(fields)
    return mpc_pb2.OpenSession(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be in"),
        ({"max_new_tokens": 65}, "max_new_tokens must be in"),
        ({"model": MINILM}, "encoder"),
        (
            {"attention_mask": _wire.tensor_to_proto(torch.ones(2, 4, dtype=torch.int64))},
            "one prompt",
        ),
    ],
)
def test_bad_generation_sessions_are_refused(
    mesh: LocalMesh, fields: dict[str, object], message: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        mpc_stub(mesh, "gen-a").Open(_open(**fields), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()


def test_a_party_must_use_generate_and_the_node_keeps_serving(mesh: LocalMesh) -> None:
    stub = mpc_stub(mesh, "gen-a")
    relay = stub.Open(_open(session_id="wrong-call-session-0001"), timeout=150).relay_address
    assert relay
    chunk = mpc_pb2.RunChunk(
        session_id="wrong-call-session-0001", relay_addresses=[relay] * 3, share=b"\0" * 16
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.Run(iter([chunk]), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Generate" in info.value.details()
    # The node still opens (and can be asked to drop) sessions afterwards.
    assert stub.Open(_open(session_id="after-wrong-call-0001"), timeout=150).relay_address
