"""The HE mode through a real node process over mTLS: classification (one ciphertext per
example and feature-major packed batches), sessions, gRPC errors."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tenseal as ts
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from decentralized.errors import InvalidRequest, UnknownModel
from decentralized.he_service import HELimits
from decentralized.transport import Credentials, sync_channel
from decentralized.v1 import he_pb2, he_pb2_grpc
from mpc.he.data import mnist_split
from mpc.he.engine import PACKED_LAYOUT, VECTOR_LAYOUT, encrypt, encrypt_packed
from mpc.he.errors import DepthExceeded
from mpc.he.head import Head, Linear, Square, load_head
from mpc.he.params import DEFAULT_PARAMS, CKKSParams
from mpc.he.train import MNIST, train_mnist
from secure_infer.he_client import HESession, classify_he, pick_he_node
from secure_infer.localmesh import LocalMesh, NodeSpec
from tests.conftest import start_mesh

pytestmark = pytest.mark.grpc
LINEAR = "mnist-linear"


def _linear_head(directory: Path) -> None:
    """A real cheap head (depth 1): logistic regression on the MNIST split, 784 -> 10."""
    torch.manual_seed(0)
    split = mnist_split(0)
    lin = torch.nn.Linear(784, 10)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-2)
    x, y = torch.from_numpy(split.x_train).float(), torch.from_numpy(split.y_train)
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(lin(x), y).backward()
        opt.step()
    w, b = lin.weight.detach().double().numpy(), lin.bias.detach().double().numpy()
    labels = tuple(str(d) for d in range(10))
    Head(
        name=LINEAR, input_kind="mnist-pixels", labels=labels, layers=(Linear(weight=w, bias=b),)
    ).save(directory)
    deep = (Linear(weight=w, bias=b), Square(), Linear(weight=np.eye(10), bias=np.zeros(10)))
    deep += (Square(), Linear(weight=np.eye(10), bias=np.zeros(10)))
    Head(name="too-deep", input_kind="mnist-pixels", labels=labels, layers=deep).save(directory)


@pytest.fixture(scope="module")
def he_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    """One node whose cache holds the MNIST MLP, a linear head and a head too deep to serve."""
    cache = tmp_path_factory.mktemp("he-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SECURE_INFER_CACHE", str(cache))
        heads = cache / "he" / "heads"
        train_mnist(heads, epochs=5)
        _linear_head(heads)
        mesh = start_mesh(
            tmp_path_factory.mktemp("he-mesh"),
            [NodeSpec(name="he-node", spans=(("all-MiniLM-L6-v2", 0, 1),))],
        )
    mesh.heads_dir = heads  # type: ignore[attr-defined]
    yield mesh
    mesh.stop()


@pytest.fixture(scope="module")
def channel(he_mesh: LocalMesh) -> Iterator[grpc.Channel]:
    tls = he_mesh.client_tls()
    assert tls is not None
    ca, key, cert = tls.read()
    creds = Credentials(root_ca=ca, private_key=key, certificate=cert)
    with sync_channel(he_mesh.nodes["he-node"].address, creds, expect_name="he-node") as ch:
        yield ch


@pytest.fixture(scope="module")
def session(channel: grpc.Channel) -> Iterator[HESession]:
    with HESession(channel) as sess:
        sess.open()
        yield sess


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    split = mnist_split(0)
    return np.round(split.x_test[:3] * 255.0)  # pixels, as a client holds them


def _code(call: object, *args: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=60)  # type: ignore[operator]
    return info.value.code(), info.value.details()


def test_linear_head_over_mtls_matches_the_plaintext_head(
    he_mesh: LocalMesh, channel: grpc.Channel, session: HESession, images: np.ndarray
) -> None:
    res = classify_he(channel, LINEAR, images, session=session)
    head = load_head(he_mesh.heads_dir, LINEAR)  # type: ignore[attr-defined]
    want = head.forward(images / 255.0)
    np.testing.assert_allclose(res.logits, want, atol=1e-3)  # depth 1
    assert res.predictions.tolist() == want.argmax(1).tolist()
    assert res.head_digest == head.digest() and res.node_id == he_mesh.nodes["he-node"].node_id
    assert res.bytes_sent["context"] == 0  # the session fixture uploaded it already
    assert res.bytes_sent["inputs"] > 3 * 100_000 and res.bytes_received["outputs"] > 100_000
    assert res.privacy.mode == "he" and "secret key" in res.privacy.client_keeps
    assert "no integrity" in res.threat_model and "128-bit" in res.params


def test_a_session_streams_the_context_once_and_is_gone_once_closed(
    channel: grpc.Channel, images: np.ndarray
) -> None:
    stub = he_pb2_grpc.HEStub(channel)
    with HESession(channel) as sess:
        first = classify_he(channel, LINEAR, images[:1], session=sess)
        second = classify_he(channel, LINEAR, images[1:2], session=sess)
        sid = sess.session_id
        stub.CloseSession(he_pb2.CloseSessionRequest(session_id=sid), timeout=10)  # as if expired
        third = classify_he(channel, LINEAR, images[2:3], session=sess)
        reopened = sess.session_id
        assert reopened != sid  # the client opened a new session with the same keys
    assert first.bytes_sent["context"] > 25_000_000  # public, relinearization and Galois keys
    assert first.timings["upload_s"] > 0 and second.bytes_sent["context"] == 0
    assert third.bytes_sent["context"] == first.bytes_sent["context"]
    request = he_pb2.EvaluateRequest(session_id=reopened, head=LINEAR, inputs=[b"x"])
    got, details = _code(stub.Evaluate, request)
    assert got == grpc.StatusCode.FAILED_PRECONDITION and "unknown or expired" in details  # closed


def test_heads_list_states_depth_and_strategy_and_skips_unservable(
    he_mesh: LocalMesh, channel: grpc.Channel, session: HESession
) -> None:
    node = he_mesh.nodes["he-node"]
    ca, key, cert = he_mesh.client_tls().read()  # type: ignore[union-attr]
    creds = Credentials(root_ca=ca, private_key=key, certificate=cert)
    assert pick_he_node([(node.address, "he-node")], creds, LINEAR) == (node.address, "he-node")
    with pytest.raises(UnknownModel, match="no live node"):
        pick_he_node([(node.address, "he-node")], creds, "gpt-9")
    heads = session.heads()
    assert set(heads) == {MNIST, LINEAR}  # "too-deep" is not served
    assert list(heads[MNIST].strategies) == ["matmul", "dot"] and heads[MNIST].depth == 3
    assert heads[MNIST].packed_min_batch == 4 and heads[LINEAR].packed_min_batch == 21
    reply = he_pb2_grpc.HEStub(channel).ListHeads(he_pb2.ListHeadsRequest(), timeout=10)
    assert list(reply.layouts) == [PACKED_LAYOUT] and reply.max_batch_examples == 4096
    with pytest.raises(UnknownModel, match="too-deep"):
        session.head("too-deep")


@pytest.fixture(scope="module")
def many_images() -> np.ndarray:
    """4,099 pixel rows: the 1,000 test images, tiled (one full packed batch and 3 more)."""
    x = np.round(mnist_split(0).x_test * 255.0)
    return np.tile(x, (5, 1))[:4099]


def test_a_large_batch_goes_packed_then_per_example_in_input_order(
    he_mesh: LocalMesh, channel: grpc.Channel, session: HESession, many_images: np.ndarray
) -> None:
    """4,099 examples: one feature-major batch of 4,096 (the slots of a ciphertext) and the 3
    left over one ciphertext each (below the head's packed_min_batch of 21)."""
    res = classify_he(channel, LINEAR, many_images, session=session)
    head = load_head(he_mesh.heads_dir, LINEAR)  # type: ignore[attr-defined]
    want = head.forward(many_images / 255.0)
    assert res.layouts == {PACKED_LAYOUT: 4096, VECTOR_LAYOUT: 3}
    np.testing.assert_allclose(res.logits, want, atol=1e-3)
    np.testing.assert_allclose(res.logits[:4096], want[:4096], atol=1e-4)  # packed: no rotations
    assert res.predictions.tolist() == want.argmax(1).tolist()
    # 784 ciphertexts for 4,096 examples, 3 for the rest; 10 back for the batch, 10 per rest.
    assert 784 * 300_000 < res.bytes_sent["inputs"] < 787 * 450_000
    assert res.bytes_sent["inputs"] / len(many_images) < 80_000
    assert "feature-major/1" in res.privacy.node_views[0]


def test_client_refuses_a_head_deeper_than_its_parameters_before_sending(
    channel: grpc.Channel,
) -> None:
    shallow = CKKSParams(name="ckks-n8192-d1", coeff_mod_bit_sizes=(50, 35, 50))
    sess = HESession(channel, params=shallow)
    with pytest.raises(DepthExceeded, match="needs multiplicative depth 3.*supports 1"):
        classify_he(channel, MNIST, np.zeros((1, 784)), session=sess)
    assert sess.session_id == "" and sess.context_bytes == 0  # no keys made, nothing sent


def _evaluate(session: HESession, head: str, inputs: list[bytes]) -> he_pb2.EvaluateRequest:
    return he_pb2.EvaluateRequest(session_id=session.session_id, head=head, inputs=inputs)


def test_grpc_errors_and_the_node_keeps_serving(channel: grpc.Channel, session: HESession) -> None:
    stub = he_pb2_grpc.HEStub(channel)
    bare = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[50, 35, 35, 35, 50])
    bare.global_scale = 2.0**DEFAULT_PARAMS.scale_bits  # no Galois keys: cheap to make
    good = encrypt(bare, np.zeros((1, 784)))  # another key: the node cannot tell
    cases = [
        (_evaluate(session, "gpt-9", good), grpc.StatusCode.NOT_FOUND, "unknown HE head"),
        (
            _evaluate(session, LINEAR, encrypt(bare, np.zeros((1, 100)))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "takes 784 features",
        ),
        (
            _evaluate(session, LINEAR, [good[0][:5000]]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "does not deserialize",
        ),
        (_evaluate(session, LINEAR, good * 33), grpc.StatusCode.RESOURCE_EXHAUSTED, "limit"),
        (
            he_pb2.EvaluateRequest(session_id="x" * 32, head=LINEAR, inputs=good),
            grpc.StatusCode.FAILED_PRECONDITION,
            "unknown or expired",
        ),
    ]
    for request, code, message in cases:
        got, details = _code(stub.Evaluate, request)
        assert got == code and message in details, (got, details)

    def stream(data: bytes, total: int | None = None) -> Iterator[he_pb2.ContextChunk]:
        size = len(data) if total is None else total
        yield he_pb2.ContextChunk(params_name=DEFAULT_PARAMS.name, total_bytes=size, data=data)

    with_secret = bare.serialize(save_secret_key=True)
    bare.make_context_public()
    for chunks, code, message in [
        (stream(bare.serialize()), grpc.StatusCode.INVALID_ARGUMENT, "Galois"),
        (stream(with_secret), grpc.StatusCode.INVALID_ARGUMENT, "secret key"),
        (stream(b"\x01" * 4096), grpc.StatusCode.INVALID_ARGUMENT, "does not deserialize"),
        (stream(b"abc", total=10), grpc.StatusCode.INVALID_ARGUMENT, "ended after 3 of 10"),
        (stream(b"abc", total=1 << 40), grpc.StatusCode.RESOURCE_EXHAUSTED, "exceeds"),
    ]:
        got, details = _code(stub.OpenSession, chunks)
        assert got == code and message in details, (got, details)

    # The node still serves: a valid call after all these errors.
    reply = stub.Evaluate(_evaluate(session, LINEAR, good[:1]), timeout=60)
    assert len(reply.outputs) == 1
    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="decentralized.v1.HE"), timeout=5
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def _packed(
    session: HESession, head: str, batch: int, inputs: list[bytes], **header: object
) -> Iterator[he_pb2.PackedChunk]:
    fields = {
        "session_id": session.session_id,
        "head": head,
        "layout": PACKED_LAYOUT,
        "batch_size": batch,
        "n_ciphertexts": len(inputs),
        "total_bytes": sum(len(x) for x in inputs),
    } | header
    yield he_pb2.PackedChunk(header=he_pb2.PackedHeader(**fields), ciphertexts=inputs[:8])
    for start in range(8, len(inputs), 8):
        yield he_pb2.PackedChunk(ciphertexts=inputs[start : start + 8])


def test_packed_grpc_errors_and_the_node_keeps_serving(
    channel: grpc.Channel, session: HESession
) -> None:
    stub = he_pb2_grpc.HEStub(channel)
    bare = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[50, 35, 35, 35, 50])
    bare.global_scale = 2.0**DEFAULT_PARAMS.scale_bits  # no Galois keys: cheap to make
    few = encrypt_packed(bare, np.zeros((7, 2)))  # 2 ciphertexts of 7 examples
    junk = [b"x"] * 784
    s = session
    cases = [
        (_packed(s, "gpt-9", 7, junk), grpc.StatusCode.NOT_FOUND, "unknown HE head"),
        (
            _packed(s, LINEAR, 7, junk, session_id="x" * 32),
            grpc.StatusCode.FAILED_PRECONDITION,
            "unknown or expired",
        ),
        (
            _packed(s, LINEAR, 7, junk, layout="feature-major/9"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not served",
        ),
        (_packed(s, LINEAR, 7, few), grpc.StatusCode.INVALID_ARGUMENT, "takes 784 features"),
        (_packed(s, LINEAR, 4097, junk), grpc.StatusCode.RESOURCE_EXHAUSTED, "limit is 4096"),
        (_packed(s, LINEAR, 0, junk), grpc.StatusCode.INVALID_ARGUMENT, "0 examples"),
        (
            _packed(s, LINEAR, 7, junk, total_bytes=1 << 40),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "exceeds",
        ),
        (
            _packed(s, LINEAR, 7, few, n_ciphertexts=784, total_bytes=10**9),
            grpc.StatusCode.INVALID_ARGUMENT,
            "ended after 2 of 784",
        ),
        (_packed(s, LINEAR, 7, junk), grpc.StatusCode.INVALID_ARGUMENT, "does not deserialize"),
        (
            iter([he_pb2.PackedChunk(ciphertexts=junk[:1])]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "no header",
        ),
    ]
    for chunks, code, message in cases:
        got, details = _code(stub.EvaluatePacked, chunks)
        assert got == code and message in details, (got, details)
    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="decentralized.v1.HE"), timeout=5
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(InvalidRequest, match=r"takes \(batch, 784\) features, got \(7, 100\)"):
        session.evaluate(session.head(LINEAR), np.zeros((7, 100)))
    with pytest.raises(InvalidRequest, match=r"expected \(batch, 784\) pixels"):
        classify_he(channel, LINEAR, np.zeros((33, 100)), session=session)


def test_sdk_client_classify_he_reuses_its_session(
    he_mesh: LocalMesh, images: np.ndarray, many_images: np.ndarray
) -> None:
    """`Client.classify(head, inputs, privacy="he")`: the node is found through the mesh, the
    second call reuses the keys and the uploaded context, and a batch of 33 goes packed."""
    from secure_infer import Client, InvalidRequest

    head = load_head(he_mesh.heads_dir, LINEAR)  # type: ignore[attr-defined]
    want = head.forward(images / 255.0).argmax(1).tolist()
    with Client(he_mesh.seeds, tls=he_mesh.client_tls()) as client:
        first = client.classify(LINEAR, images[:2], privacy="he")
        second = client.classify(LINEAR, images[2:], privacy="he")
        batch = client.classify(LINEAR, many_images[:33], privacy="he")
        with pytest.raises(InvalidRequest, match="privacy"):
            client.classify(LINEAR, images[:1], privacy="split")
    assert first.predictions.tolist() + second.predictions.tolist() == want
    assert first.bytes_sent["context"] > 1_000_000 and second.bytes_sent["context"] == 0
    assert first.privacy.mode == "he" and first.layouts == {VECTOR_LAYOUT: 2}
    assert batch.layouts == {PACKED_LAYOUT: 33} and batch.bytes_sent["context"] == 0
    np.testing.assert_allclose(batch.logits, head.forward(many_images[:33] / 255.0), atol=1e-4)


def test_a_session_id_is_useless_to_another_certificate(
    he_mesh: LocalMesh, channel: grpc.Channel, session: HESession, images: np.ndarray
) -> None:
    """Session ids are 192-bit random, but one that leaks (a log, a proxy) must not let another
    mesh member use or close the session: the node answers it as an unknown id."""
    from secure_infer import certs

    other = certs.issue(he_mesh.certs_dir, "mallory", role="client")
    ca, key, cert = other.read()
    creds = Credentials(root_ca=ca, private_key=key, certificate=cert)
    node = he_mesh.nodes["he-node"].address
    request = he_pb2.EvaluateRequest(session_id=session.session_id, head=LINEAR, inputs=[b"x"])
    with sync_channel(node, creds, expect_name="he-node") as theirs:
        stub = he_pb2_grpc.HEStub(theirs)
        got, details = _code(stub.Evaluate, request)
        assert got == grpc.StatusCode.FAILED_PRECONDITION and "unknown or expired" in details
        closed = stub.CloseSession(
            he_pb2.CloseSessionRequest(session_id=session.session_id), timeout=10
        )
        assert not closed.existed
    res = classify_he(channel, LINEAR, images[:1], session=session)  # still the owner's
    assert res.bytes_sent["context"] == 0


def test_stalled_uploads_hold_only_their_clients_share_of_the_evaluation_queue(
    he_mesh: LocalMesh, channel: grpc.Channel, session: HESession, images: np.ndarray
) -> None:
    """A packed batch is buffered whole (up to 1 GiB): the node admits an upload to its HE
    queue before reading it, so one client's open uploads (here: stalled after the header)
    cannot make the node buffer without bound or take every place; another client's call is
    still admitted, and the stalled client is served again once its uploads end."""
    import threading

    from secure_infer import certs

    half = HELimits().max_queued_calls // 2
    stub = he_pb2_grpc.HEStub(channel)
    go = threading.Event()

    def stalled() -> Iterator[he_pb2.PackedChunk]:
        header = he_pb2.PackedHeader(
            session_id=session.session_id,
            head=LINEAR,
            layout=PACKED_LAYOUT,
            batch_size=7,
            n_ciphertexts=784,
            total_bytes=784 * 1000,
        )
        yield he_pb2.PackedChunk(header=header, ciphertexts=[b"x" * 1000])
        go.wait(60)  # then the stream ends short: INVALID_ARGUMENT

    uploads = [stub.EvaluatePacked.future(stalled(), timeout=120) for _ in range(half)]
    deadline = time.monotonic() + 30
    while True:  # the uploads hold their places once the node has their headers
        got, details = _code(stub.EvaluatePacked, _packed(session, LINEAR, 7, [b"x"] * 784))
        if got == grpc.StatusCode.RESOURCE_EXHAUSTED:
            break
        assert time.monotonic() < deadline, (got, details)
        time.sleep(0.2)
    assert "node busy for this client" in details
    got, details = _code(
        stub.Evaluate,
        he_pb2.EvaluateRequest(session_id=session.session_id, head=LINEAR, inputs=[b"x"]),
    )
    assert got == grpc.StatusCode.RESOURCE_EXHAUSTED and "busy for this client" in details

    other = certs.issue(he_mesh.certs_dir, "second-he-client", role="client")
    ca, key, cert = other.read()
    creds = Credentials(root_ca=ca, private_key=key, certificate=cert)
    with sync_channel(he_mesh.nodes["he-node"].address, creds, expect_name="he-node") as theirs:
        # admitted, then refused for what it is (not the first client's session)
        got, details = _code(
            he_pb2_grpc.HEStub(theirs).EvaluatePacked, _packed(session, LINEAR, 7, [b"x"] * 784)
        )
        assert got == grpc.StatusCode.FAILED_PRECONDITION, (got, details)
    go.set()
    for upload in uploads:
        with pytest.raises(grpc.RpcError) as info:
            upload.result()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "ended after 1 of 784" in (info.value.details() or "")
    res = classify_he(channel, LINEAR, images[:1], session=session)  # places are back
    assert len(res.predictions) == 1
