"""Shared fixtures: real node meshes on 127.0.0.1, and a CUDA gate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from secure_infer.localmesh import LocalMesh, NodeSpec

MINILM = "all-MiniLM-L6-v2"
SMOL = "SmolLM2-135M-Instruct"


def expired_copy(cert: Any, *, issuer: Any, issuer_key: Any, public_key: Any) -> Any:
    """`cert` (an x509.Certificate) re-issued by `issuer`/`issuer_key` for `public_key` with
    the same subject and extensions and a validity that ended yesterday."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=10))
        .not_valid_after(now - dt.timedelta(days=1))
    )
    for ext in cert.extensions:
        builder = builder.add_extension(ext.value, critical=ext.critical)
    return builder.sign(issuer_key, hashes.SHA256())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def client_creds(mesh: LocalMesh) -> Any:
    """The mesh client's mTLS `Credentials` (its certificate from the mesh's CA)."""
    from decentralized.transport import Credentials

    tls = mesh.client_tls()
    assert tls is not None
    ca, key, cert = tls.read()
    return Credentials(root_ca=ca, private_key=key, certificate=cert)


def mpc_stub(mesh: LocalMesh, name: str) -> Any:
    """An `MPCSession` stub to node `name` of `mesh`, over the client's mTLS credentials."""
    from decentralized.transport import sync_channel
    from decentralized.v1 import mpc_pb2_grpc
    from secure_infer.client import credentials

    tls = mesh.client_tls()
    assert tls is not None
    channel = sync_channel(mesh.nodes[name].address, credentials(tls, False), expect_name=name)
    return mpc_pb2_grpc.MPCSessionStub(channel)


def smol_greedy(prompt_ids: torch.Tensor, max_new_tokens: int) -> list[int]:
    """Greedy tokens of SmolLM2 run whole by transformers in this process: what split, MPC or
    consensus generation through the mesh must reproduce. `prompt_ids` (1, T) as the client
    encodes them (`client.parts(SMOL).encode(...)`)."""
    import transformers

    from decentralized.models._files import smollm2_dir

    model = transformers.AutoModelForCausalLM.from_pretrained(str(smollm2_dir())).eval()
    with torch.inference_mode():
        out = model.generate(
            prompt_ids,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            top_p=None,
            top_k=None,
            temperature=None,
        )
    return out[0, prompt_ids.shape[1] :].tolist()


def start_mesh(workdir: Path, nodes: list[NodeSpec], **kwargs: object) -> LocalMesh:
    mesh = LocalMesh(workdir, nodes, **kwargs)  # type: ignore[arg-type]
    try:
        mesh.start()
    except BaseException:
        mesh.stop()
        raise
    return mesh


@pytest.fixture(scope="session")
def minilm_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    """Three nodes serving MiniLM: a [0,3); b and c both [3,6). Tests must not kill them."""
    mesh = start_mesh(
        tmp_path_factory.mktemp("minilm-mesh"),
        [
            NodeSpec(name="node-a", spans=((MINILM, 0, 3),)),
            NodeSpec(name="node-b", spans=((MINILM, 3, 6),)),
            NodeSpec(name="node-c", spans=((MINILM, 3, 6),)),
        ],
    )
    yield mesh
    mesh.stop()
