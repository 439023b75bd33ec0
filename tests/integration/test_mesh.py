"""A real three-node mesh on 127.0.0.1 with mTLS: discovery, embeddings, bad input, TLS."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from decentralized import _wire
from decentralized.transport import Credentials, sync_channel
from decentralized.v1 import common_pb2, shard_pb2, shard_pb2_grpc
from secure_infer import Client, certs
from secure_infer.localmesh import LocalMesh
from tests.conftest import client_creds

pytestmark = pytest.mark.grpc
MINILM = "all-MiniLM-L6-v2"
SENTENCES = [
    "The cat sat on the mat.",
    "Mesh inference splits a model across nodes.",
    "Quarterly revenue grew by eight percent.",
]


@pytest.fixture
def stub_a(minilm_mesh: LocalMesh) -> Iterator[shard_pb2_grpc.ShardStub]:
    with sync_channel(minilm_mesh.nodes["node-a"].address, client_creds(minilm_mesh)) as channel:
        yield shard_pb2_grpc.ShardStub(channel)


def _request(
    hidden: torch.Tensor, mask: torch.Tensor | None = None, **kw: object
) -> shard_pb2.ForwardRequest:
    req = shard_pb2.ForwardRequest(
        model=MINILM, start=0, end=3, hidden=_wire.tensor_to_proto(hidden), **kw
    )
    if mask is not None:
        req.attention_mask.CopyFrom(_wire.tensor_to_proto(mask))
    return req


def _assert_serving(stub: shard_pb2_grpc.ShardStub) -> None:
    reply = stub.Forward(_request(torch.randn(1, 4, 384)), timeout=30)
    assert list(reply.hidden.shape) == [1, 4, 384]


def test_mesh_converged_and_nodes_advertise_spans(minilm_mesh: LocalMesh) -> None:
    with Client(minilm_mesh.seeds[:1], tls=minilm_mesh.client_tls()) as client:
        nodes = {n["name"]: n for n in client.nodes()}
    assert set(nodes) == {"node-a", "node-b", "node-c"}
    assert nodes["node-b"]["spans"] == [(MINILM, 3, 6)]
    assert all(n["layers_per_s"] > 0 and n["device"] == "cpu" for n in nodes.values())


def test_embeddings_through_the_mesh_match_local(minilm_mesh: LocalMesh) -> None:
    from sentence_transformers import SentenceTransformer

    from decentralized.models._files import minilm_dir

    with Client(minilm_mesh.seeds, tls=minilm_mesh.client_tls()) as client:
        res = client.embed(MINILM, SENTENCES)
    ref = SentenceTransformer(str(minilm_dir()), device="cpu").encode(SENTENCES)
    cos = (res.embeddings * ref).sum(1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.9999
    assert [(h.start, h.end) for h in res.route] == [(0, 3), (3, 6)]
    assert res.route[0].name == "node-a"
    assert len(res.route[0].weight_digest) == 64
    assert res.privacy.mode == "split" and "mTLS" in res.privacy.channel
    assert any("layers 0..2" in v for v in res.privacy.node_views)
    assert res.failovers == ()


def test_large_batches_stream_in_chunks(
    minilm_mesh: LocalMesh, stub_a: shard_pb2_grpc.ShardStub
) -> None:
    texts = [f"Sentence number {i} is about {'mesh ' * (i % 40)}" for i in range(96)]
    with Client(minilm_mesh.seeds, tls=minilm_mesh.client_tls()) as client:
        res = client.embed(MINILM, texts, max_tokens=128)
    assert res.embeddings.shape == (96, 384)
    assert np.allclose(np.linalg.norm(res.embeddings, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("mutate", "code", "message"),
    [
        (lambda r: setattr(r, "model", "gpt-9"), grpc.StatusCode.NOT_FOUND, "unknown model"),
        (lambda r: setattr(r, "end", 2), grpc.StatusCode.NOT_FOUND, r"does not serve .* \[0, 2\)"),
        (
            lambda r: r.hidden.CopyFrom(
                _wire.tensor_to_proto(torch.zeros(1, 4, 384, dtype=torch.int64))
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "expected a float dtype",
        ),
        (
            lambda r: r.hidden.CopyFrom(_wire.tensor_to_proto(torch.zeros(1, 4, 100))),
            grpc.StatusCode.INVALID_ARGUMENT,
            r"expected shape \(batch, tokens, 384\)",
        ),
        (
            lambda r: setattr(r.hidden, "data", r.hidden.data[:-3]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "truncated or oversized",
        ),
        (
            lambda r: setattr(r.hidden, "dtype", "float128"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown dtype",
        ),
        (
            lambda r: r.hidden.CopyFrom(
                _wire.tensor_to_proto(torch.full((1, 4, 384), float("nan")))
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "NaN",
        ),
        (
            lambda r: r.attention_mask.CopyFrom(
                _wire.tensor_to_proto(torch.ones(1, 5, dtype=torch.int64))
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "attention_mask: expected shape",
        ),
        (
            lambda r: setattr(r, "session_id", "x" * 20),
            grpc.StatusCode.INVALID_ARGUMENT,
            "encoder: it takes no session_id",
        ),
        (lambda r: r.ClearField("hidden"), grpc.StatusCode.INVALID_ARGUMENT, "hidden"),
    ],
)
def test_bad_requests_get_clear_statuses_and_node_keeps_serving(
    stub_a: shard_pb2_grpc.ShardStub, mutate: object, code: grpc.StatusCode, message: str
) -> None:
    req = _request(torch.randn(1, 4, 384))
    mutate(req)  # type: ignore[operator]
    with pytest.raises(grpc.RpcError) as info:
        stub_a.Forward(req, timeout=30)
    assert info.value.code() == code
    assert pytest.importorskip("re").search(message, info.value.details())
    _assert_serving(stub_a)


def test_oversized_message_is_refused(stub_a: shard_pb2_grpc.ShardStub) -> None:
    req = _request(torch.zeros(1, 4, 384))
    req.hidden.data = b"\0" * (65 * 1024 * 1024)
    with pytest.raises(grpc.RpcError) as info:
        stub_a.Forward(req, timeout=60)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    _assert_serving(stub_a)


def test_truncated_stream_is_refused(stub_a: shard_pb2_grpc.ShardStub) -> None:
    tensor = _wire.tensor_to_proto(torch.randn(2, 8, 384))
    header = shard_pb2.ForwardRequest(
        model=MINILM,
        start=0,
        end=3,
        total_bytes=len(tensor.data),
        hidden=common_pb2.Tensor(dtype="float32", shape=[2, 8, 384], data=tensor.data[:1000]),
    )
    with pytest.raises(grpc.RpcError) as info:
        stub_a.ForwardStream(iter([header]), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "truncated" in info.value.details()
    header.total_bytes = 5
    with pytest.raises(grpc.RpcError) as info:
        stub_a.ForwardStream(iter([header]), timeout=30)
    assert "announces 5 bytes" in info.value.details()
    _assert_serving(stub_a)


def test_stream_of_a_real_tensor_round_trips(stub_a: shard_pb2_grpc.ShardStub) -> None:
    hidden = torch.randn(16, 256, 384)  # 6 MiB: two chunks
    tensor = _wire.tensor_to_proto(hidden)
    half = len(tensor.data) // 2
    chunks = [
        shard_pb2.ForwardRequest(
            model=MINILM,
            start=0,
            end=3,
            total_bytes=len(tensor.data),
            hidden=common_pb2.Tensor(
                dtype="float32", shape=[16, 256, 384], data=tensor.data[:half]
            ),
        ),
        shard_pb2.ForwardRequest(hidden=common_pb2.Tensor(data=tensor.data[half:])),
    ]
    reply = stub_a.ForwardStream(iter(chunks), timeout=60)
    assert list(reply.hidden.shape) == [16, 256, 384]


def _foreign_client(tmp_path: Path) -> Credentials:
    certs.init_ca(tmp_path / "evil")
    mat = certs.issue(tmp_path / "evil", "mallory", role="client")
    ca, key, cert = mat.read()
    return Credentials(root_ca=ca, private_key=key, certificate=cert)


def test_clients_without_a_valid_certificate_are_refused(
    minilm_mesh: LocalMesh, tmp_path: Path
) -> None:
    address = minilm_mesh.nodes["node-a"].address
    good = client_creds(minilm_mesh)
    foreign = _foreign_client(tmp_path)
    # A certificate from another CA, presented with our CA as trust root.
    mixed = Credentials(
        root_ca=good.root_ca, private_key=foreign.private_key, certificate=foreign.certificate
    )
    no_cert = grpc.ssl_channel_credentials(root_certificates=good.root_ca)
    channels = [
        sync_channel(address, mixed),
        sync_channel(address, foreign),
        grpc.secure_channel(address, no_cert),
        grpc.insecure_channel(address),
    ]
    for channel in channels:
        with channel, pytest.raises(grpc.RpcError) as info:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    with sync_channel(address, good) as channel:
        ok = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert ok.status == health_pb2.HealthCheckResponse.SERVING


def _cli_json(mesh: LocalMesh, *args: str) -> dict:
    """`secure-infer ARGS --certs ... --json` in a fresh process, parsed."""
    cmd = [sys.executable, "-m", "secure_infer.cli", *args, "--certs", str(mesh.certs_dir)]
    out = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def test_node_status_cli(minilm_mesh: LocalMesh) -> None:
    doc = _cli_json(minilm_mesh, "node", "status", minilm_mesh.nodes["node-b"].address)
    assert doc["name"] == "node-b" and doc["health"] == "SERVING"
    assert {p["name"] for p in doc["peers"]} == {"node-a", "node-c"}
    assert doc["spans"][0]["model"] == MINILM


def test_models_cli_shows_layer_coverage(minilm_mesh: LocalMesh) -> None:
    doc = _cli_json(minilm_mesh, "models", "--seeds", minilm_mesh.seeds[0])
    split = doc["split"][MINILM]
    # node-a alone serves [0, 3): a chain exists, but consensus with k = 2 cannot cover it
    assert split["layers"] == 6 and split["covered"] and split["replicas_min"] == 1
    assert split["spans"] == ["node-a[0,3)", "node-b[3,6)", "node-c[3,6)"]
    assert [n["name"] for n in doc["nodes"]] == ["node-a", "node-b", "node-c"]
    assert doc["classifiers"] == {} and doc["fides_verifiers"] == {}


def test_cli_errors_are_one_line_and_non_zero(minilm_mesh: LocalMesh) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "secure_infer.cli",
            "infer",
            "--seeds",
            minilm_mesh.seeds[0],
            "--certs",
            str(minilm_mesh.certs_dir),
            "--model",
            "gpt-9",
            "--text",
            "hi",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert out.stderr.strip().startswith("UnknownModel: unknown model 'gpt-9'")
    assert "Traceback" not in out.stderr


def test_only_nodes_announce_records_under_their_own_name(
    minilm_mesh: LocalMesh, tmp_path: Path
) -> None:
    """A record must be announced by its own node: node-a's genuine record replayed by a
    client or by node-c is PERMISSION_DENIED; a record node-c makes up for node-a (signed by
    a key of its own, vouched for by node-c's certificate) does not prove the name."""
    from decentralized.identity import Identity
    from decentralized.v1 import mesh_pb2, mesh_pb2_grpc

    with sync_channel(minilm_mesh.nodes["node-a"].address, client_creds(minilm_mesh)) as ch:
        genuine = mesh_pb2_grpc.MeshStub(ch).GetInfo(mesh_pb2.GetInfoRequest(), timeout=5).record
    address = minilm_mesh.nodes["node-b"].address
    with sync_channel(address, client_creds(minilm_mesh)) as channel:  # a client certificate
        with pytest.raises(grpc.RpcError) as info:
            mesh_pb2_grpc.MeshStub(channel).Heartbeat(
                mesh_pb2.JoinRequest(record=genuine), timeout=5
            )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "client certificate cannot announce" in info.value.details()
    ca, key, cert = certs.material(minilm_mesh.certs_dir, "node-c").read()
    node_c = Credentials(root_ca=ca, private_key=key, certificate=cert)
    ident = Identity.load_or_create(tmp_path / "k")
    ident.bind(node_c)
    made_up = ident.sign(
        common_pb2.NodeRecord(
            name="node-a",
            address="127.0.0.1:1",
            timestamp_ms=int(__import__("time").time() * 1000),
            spans=[common_pb2.Span(model=MINILM, start=0, end=6)],
        )
    )
    with sync_channel(address, node_c) as channel:  # node-c claiming to be node-a
        stub = mesh_pb2_grpc.MeshStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Join(mesh_pb2.JoinRequest(record=genuine), timeout=5)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as info:
            stub.Join(mesh_pb2.JoinRequest(record=made_up), timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "names ['node-c'], not 'node-a'" in info.value.details()
    with Client([address], tls=minilm_mesh.client_tls()) as client:
        assert {n["name"] for n in client.nodes()} == {"node-a", "node-b", "node-c"}
        assert "127.0.0.1:1" not in {n["address"] for n in client.nodes()}


def test_client_reaches_only_the_node_it_planned(minilm_mesh: LocalMesh) -> None:
    address = minilm_mesh.nodes["node-c"].address
    with sync_channel(address, client_creds(minilm_mesh), expect_name="node-b") as channel:
        with pytest.raises(grpc.RpcError) as info:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    with sync_channel(address, client_creds(minilm_mesh), expect_name="node-c") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
