"""`client.classify(model, images, privacy="mpc")`: an MPCViT checkpoint on three real nodes.

A tiny ViT is trained on sklearn's digits (about 10 s), given a mixed MPC-friendly architecture
(softmax, ReLU-softmax and scaling heads; a GeLU and a linear MLP), saved as a checkpoint
directory, and served by three node daemons (`--mpc-classifier`); the client secret-shares the
image patches and reconstructs the logits.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from decentralized.v1 import mpc_pb2
from mpc.vit import checkpoint
from mpc.vit.data import ImageSplit, load_split
from mpc.vit.model import Architecture, AttentionKind, MLPKind, MPCViT
from mpc.vit.secure import calibrate_relu_bound
from mpc.vit.train import train
from secure_infer import Client, InvalidRequest, MPCOptions
from secure_infer.localmesh import LocalMesh, NodeSpec
from tests.conftest import mpc_stub, start_mesh
from tests.vit.conftest import TINY, TINY_TRAINING

pytestmark = [pytest.mark.grpc, pytest.mark.multiparty]

NAME = "vit-digits"
NODES = ("vit-a", "vit-b", "vit-c")
K = AttentionKind
MIXED = Architecture(
    ((K.SOFTMAX, K.RELU_SOFTMAX, K.SCALING, K.RELU_SOFTMAX), (K.SCALING,) * 4),
    (MLPKind.GELU, MLPKind.RELU),  # the fused linear MLP: tests/vit/test_secure.py
)
LOGIT_TOL = 0.1  # as tests/vit/test_secure.py: PUMA approximations on a 2-block ViT


@pytest.fixture(scope="module")
def digits() -> ImageSplit:
    return load_split("digits")


@pytest.fixture(scope="module")
def model(digits: ImageSplit) -> MPCViT:
    torch.manual_seed(0)
    teacher = train(MPCViT(TINY), digits, TINY_TRAINING)
    mixed = MPCViT(TINY, MIXED)
    mixed.load_state_dict(teacher.state_dict())
    return mixed.eval()


@pytest.fixture(scope="module")
def mesh(
    tmp_path_factory: pytest.TempPathFactory, model: MPCViT, digits: ImageSplit
) -> Iterator[LocalMesh]:
    root = tmp_path_factory.mktemp("mpc-vit")
    directory = root / "checkpoint"
    directory.mkdir()
    bound = calibrate_relu_bound(model, digits.train_x)
    checkpoint.save(model, directory / "model", {"relu_bound": bound})
    specs = [
        NodeSpec(name=name, extra_args=("--mpc-classifier", f"{NAME}={directory}"))
        for name in NODES
    ]
    mesh = start_mesh(root / "mesh", specs)
    yield mesh
    mesh.stop()


def test_mpc_classification_matches_plaintext(
    mesh: LocalMesh, model: MPCViT, digits: ImageSplit
) -> None:
    images = digits.test_x[:8]
    with Client(mesh.seeds, tls=mesh.client_tls()) as client:
        result = client.classify(NAME, images.numpy(), privacy="mpc")
    with torch.no_grad():
        plain = model(images).double()
    assert result.logits.shape == (8, 10)
    assert np.abs(result.logits - plain.numpy()).max() < LOGIT_TOL
    assert np.array_equal(result.predictions, plain.argmax(-1).numpy())
    np.testing.assert_allclose(result.probs.sum(1), 1.0, atol=1e-5)
    assert len(result.architecture) == 2 and "relu_softmax" in result.architecture[0]
    assert result.architecture[1].endswith("| relu")  # the ReLU MLP block, as described
    assert len(result.model_digest) == 64
    report = result.mpc
    assert report.threat_model == "input_private" and report.trusted_dealer
    assert {p.name for p in report.parties} == set(NODES)
    assert report.bytes_total > 0 and report.rounds > 0
    assert result.privacy.mode == "mpc" and "TRUSTED" in " ".join(result.privacy.caveats)


def test_the_mesh_lists_the_mpc_classifier(mesh: LocalMesh) -> None:
    with Client(mesh.seeds, tls=mesh.client_tls()) as client:
        offer = client.services()["mpc"]
    assert offer == {NAME: {"nodes": sorted(NODES), "ready": True, "use": "classify"}}


def test_bad_mpc_classification_requests(mesh: LocalMesh, digits: ImageSplit) -> None:
    with Client(mesh.seeds, tls=mesh.client_tls()) as client:
        with pytest.raises(InvalidRequest, match="shape"):
            client.classify(NAME, np.zeros((2, 1, 9, 9), np.float32), privacy="mpc")
        with pytest.raises(InvalidRequest, match=r"\[0, 1\]"):
            client.classify(NAME, digits.test_x[:2].numpy() * 16, privacy="mpc")
        with pytest.raises(InvalidRequest, match="input_private"):
            client.classify(
                NAME,
                digits.test_x[:2].numpy(),
                privacy="mpc",
                mpc=MPCOptions(threat_model="weights_private"),
            )
    stub = mpc_stub(mesh, "vit-a")
    with pytest.raises(grpc.RpcError) as info:
        stub.Describe(mpc_pb2.DescribeRequest(model="no-such-vit"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    opened = mpc_pb2.OpenSession(
        session_id="bad-vit-session-000001",
        rank=0,
        model=NAME,
        threat_model="input_private",
        rank_names=list(NODES),
        peer_timeout_s=10.0,
        input_shape=[1, 5, 99],
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.Open(opened, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "patches" in info.value.details()
    described = stub.Describe(mpc_pb2.DescribeRequest(model=NAME), timeout=10)
    assert list(described.input_shape) == [5, 16] and described.patch_size == 4


def test_a_missing_checkpoint_is_a_clear_config_error(tmp_path: Path) -> None:
    from secure_infer.config import ConfigError, load

    with pytest.raises(ConfigError, match="not a directory"):
        load(None, {"insecure_dev": True, "mpc_classifiers": [f"x={tmp_path / 'nope'}"]})


def test_only_the_opener_may_run_a_session_rank(mesh: LocalMesh, digits: ImageSplit) -> None:
    """The session id is shared with the three parties; a party (or anyone else who learnt
    it) must not be able to claim another node's rank before the client does: the node
    answers another certificate as it answers an unknown id, and the opener can still run."""
    from decentralized.transport import Credentials, sync_channel
    from decentralized.v1 import mpc_pb2_grpc
    from secure_infer import certs

    sid = "opener-bound-session-0001"
    stub = mpc_stub(mesh, "vit-a")
    opened = mpc_pb2.OpenSession(
        session_id=sid,
        rank=2,  # the dealer: its Run takes no input share
        model=NAME,
        threat_model="input_private",
        rank_names=["vit-b", "vit-c", "vit-a"],
        peer_timeout_s=2.0,
        input_shape=[1, 5, 16],
    )
    relay = stub.Open(opened, timeout=60).relay_address
    assert relay.startswith("127.0.0.1:")
    # a peer node's own certificate, as a deviating party would use
    ca, key, cert = certs.material(mesh.certs_dir, "vit-b").read()
    creds = Credentials(root_ca=ca, private_key=key, certificate=cert)
    chunk = mpc_pb2.RunChunk(session_id=sid, relay_addresses=[relay, relay, relay])
    with sync_channel(mesh.nodes["vit-a"].address, creds, expect_name="vit-a") as theirs:
        with pytest.raises(grpc.RpcError) as info:
            mpc_pb2_grpc.MPCSessionStub(theirs).Run(iter([chunk]), timeout=30)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "unknown or expired session" in info.value.details()
    # the opener claims it: it starts (and aborts, its peers never being there: the dealer
    # waits `peer_timeout_s` for requests that do not come, and ends)
    with pytest.raises(grpc.RpcError) as info:
        stub.Run(iter([chunk]), timeout=60)
    assert "unknown or expired" not in info.value.details()
