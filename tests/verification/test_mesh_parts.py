"""The pieces the mesh hosts: classifier directories, the verifier bundle and its enclave app."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from verification.fides import InvalidInput, ModelFormatError
from verification.fides.attacks import swap_top2
from verification.fides.enclave_app import (
    decode_output,
    decode_request,
    decode_verdicts,
    encode_request,
    image_request,
    judge_request,
    prepare_request,
    request_digest,
    verifier_bundle,
    verifier_handler,
)
from verification.fides.experiment import Outcome, TaskData
from verification.fides.nets import MLPNet
from verification.fides.service_model import load_classifier, save_classifier
from verification.fides.training import batched


def test_classifier_directory_round_trip(
    tiny_mnist: tuple[TaskData, Outcome], tmp_path: Path
) -> None:
    data, out = tiny_mnist
    x = data.inputs["test"][:20]
    save_classifier(tmp_path / "svc", out.service, [str(d) for d in range(10)])
    model = load_classifier(tmp_path / "svc")
    assert model.input_kind == "image" and model.n_classes == 10 and len(model.digest) == 64
    torch.testing.assert_close(model.probs(x), batched(out.service, x).softmax(1))
    torch.testing.assert_close(model.probs(x.reshape(20, 784)), model.probs(x))
    for bad in (x[:, :, :10], x * 255, torch.full_like(x, float("nan")), torch.zeros(0, 784)):
        with pytest.raises(InvalidInput):
            model.probs(bad)
    flat = MLPNet(784, [8], 10)
    save_classifier(tmp_path / "mlp", flat, [str(d) for d in range(10)])
    with torch.no_grad():
        want = flat(x.flatten(1)).softmax(1)
    torch.testing.assert_close(load_classifier(tmp_path / "mlp").probs(x), want)


def test_classifier_directory_errors(tiny_mnist: tuple[TaskData, Outcome], tmp_path: Path) -> None:
    out = tiny_mnist[1]
    with pytest.raises(ValueError, match="label"):
        save_classifier(tmp_path / "a", out.service, ["one", "two"])
    path = save_classifier(tmp_path / "b", out.service, [str(d) for d in range(10)])
    spec = json.loads((path / "classifier.json").read_text())
    for change in ({"family": "resnet"}, {"labels": ["x"]}, {"input": {"kind": "text"}}):
        (path / "classifier.json").write_text(json.dumps({**spec, **change}))
        with pytest.raises(ModelFormatError):
            load_classifier(path)
    (path / "classifier.json").write_text(json.dumps(spec))
    (path / "classifier.safetensors").unlink()
    with pytest.raises(ModelFormatError, match="missing"):
        load_classifier(path)


def test_enclave_app_reproduces_the_verifier(
    tiny_mnist: tuple[TaskData, Outcome], tmp_path: Path
) -> None:
    data, out = tiny_mnist
    directory = out.fides.save(tmp_path / "fides")
    bundle = verifier_bundle(directory)
    assert bundle == verifier_bundle(directory)  # deterministic: the measurement depends on it
    handle = verifier_handler(bundle)
    x = data.inputs["test"][:16]
    pv = decode_output(handle(encode_request(x, "image")))
    torch.testing.assert_close(pv, out.fides.verifier_probs(x))
    with pytest.raises(InvalidInput):
        handle(b"not a request")
    with pytest.raises(InvalidInput):
        decode_request(encode_request(["a text"], "text")[:-3])
    with pytest.raises(InvalidInput):
        handle(encode_request(["a text"], "text"))  # an image verifier refuses texts


def test_judge_equals_verify(tiny_mnist: tuple[TaskData, Outcome]) -> None:
    data, out = tiny_mnist
    x = data.inputs["test"]
    ps = swap_top2(batched(out.service, x).softmax(1))
    pv = out.fides.verifier_probs(x)
    rec = out.fides.recompute(x, pv)  # the tiny setup escalates (test_escalation.py)
    assert out.fides.judge(ps, pv, rec) == out.fides.verify(x, ps)
    assert any(v.attacked for v in out.fides.judge(ps, pv, rec))
    with pytest.raises(InvalidInput):
        out.fides.judge(ps[:3], pv)  # row counts differ


def test_text_classifier_and_enclave_app_tokenise_alike(tmp_path: Path) -> None:
    """The text paths (MiniLM + head service, token-level verifier) with untrained heads."""
    from verification.fides import FidesVerifier
    from verification.fides.gdtl import TextFamily
    from verification.fides.text import MiniLMEncoder

    torch.manual_seed(0)
    texts = ["A wonderful, moving film.", "Dull and far too long; I left early."]
    encoder = MiniLMEncoder()
    head = MLPNet(384, [16], 2)
    save_classifier(tmp_path / "svc", head, ["negative", "positive"], text=True)
    service = load_classifier(tmp_path / "svc")
    assert service.input_kind == "text" and service.describe().startswith("minilm")
    with torch.no_grad():
        want = head(encoder.encode(texts)).softmax(1)
    torch.testing.assert_close(service.probs(texts), want)
    with pytest.raises(InvalidInput):
        service.probs(torch.zeros(2, 784))
    net = TextFamily(encoder.bert, 2, [[8]], 128).build(1, 0)
    mlp = MLPNet(4, [4], 1)
    fides = FidesVerifier("text", net, mlp, MLPNet(4, [4], 2), 0.0)
    handle = verifier_handler(verifier_bundle(fides.save(tmp_path / "fides")))
    torch.testing.assert_close(
        decode_output(handle(encode_request(texts, "text"))), fides.verifier_probs(texts)
    )


def test_image_requests_are_the_wire_bytes() -> None:
    """Host and client build the enclave's request from the float32 wire bytes without decoding;
    it equals the encoding of the tensor, and the enclave rejects truncated or bad pixels."""
    x = torch.rand(3, 1, 28, 28)
    wire = x.numpy().astype("<f4").tobytes()
    assert image_request(wire, 3) == encode_request(x, "image")
    torch.testing.assert_close(decode_request(image_request(wire, 3)), x, rtol=0, atol=0)
    for bad in (image_request(wire[:-4], 3), image_request(wire, 0), image_request(wire, 2)):
        with pytest.raises(InvalidInput, match="pixel bytes"):
            decode_request(bad)
    with pytest.raises(InvalidInput, match="scaled"):
        decode_request(image_request((x * 2).numpy().tobytes(), 3))


def test_exported_client_bundle_pins_the_same_measurement(
    tiny_mnist: tuple[TaskData, Outcome], tmp_path: Path
) -> None:
    from secure_infer.fides_client import (
        client_bundle,
        export_client_bundle,
        published_measurement,
    )

    full = tiny_mnist[1].fides.save(tmp_path / "fides")
    out = export_client_bundle(full, tmp_path / "client")
    assert not (out / "verifier.safetensors").exists()
    assert published_measurement(out) == published_measurement(full)
    sibling = client_bundle(full)
    assert sibling == tmp_path / "fides-client"
    assert published_measurement(sibling) == published_measurement(full)
    stamp = (sibling / "fides.json").stat().st_mtime_ns
    assert client_bundle(full) == sibling and (sibling / "fides.json").stat().st_mtime_ns == stamp
    # other verifier weights: the sibling is rewritten and pins the new measurement
    weights = full / "verifier.safetensors"
    tampered = bytearray(weights.read_bytes())
    tampered[-1] ^= 1
    weights.write_bytes(bytes(tampered))
    assert published_measurement(client_bundle(full)) == published_measurement(full)
    assert published_measurement(full) != published_measurement(out)


def test_verdicts_protocol_never_reveals_the_distribution(
    tiny_mnist: tuple[TaskData, Outcome], tmp_path: Path
) -> None:
    """Protocol "verdicts": PREPARE seals the verifier's distribution inside the enclave app;
    JUDGE opens it only for the request it was made for and returns the verdicts that the
    client-side `FidesVerifier.judge_columns` would give, and nothing else."""
    data, out = tiny_mnist
    path = out.fides.save(tmp_path / "fides")
    assert verifier_bundle(path, "verdicts") != verifier_bundle(path)
    handle = verifier_handler(verifier_bundle(path, "verdicts"))
    x = data.inputs["test"][:24]
    request = encode_request(x, "image")
    sealed = handle(prepare_request(request))
    pv = out.fides.verifier_probs(x)
    assert pv.numpy().astype("<f4").tobytes() not in sealed  # sealed, not readable
    ps = swap_top2(batched(out.service, x).softmax(1))
    want = out.fides.judge_columns(ps, pv, out.fides.recompute(x, pv))
    ps_bytes = ps.numpy().astype("<f4").tobytes()
    reply = handle(judge_request(sealed, request_digest(request), ps_bytes))
    attacked, recl = decode_verdicts(reply, len(x))
    assert attacked == want.attacked and recl == want.reclassified_label and any(attacked)
    assert set(json.loads(reply)) == {"attacked", "reclassified"}  # no scores, no labels
    with pytest.raises(InvalidInput, match="verdicts only"):
        handle(request)  # the distribution is never returned
    other = encode_request(data.inputs["test"][24:48], "image")
    with pytest.raises(InvalidInput, match="does not open"):
        handle(judge_request(sealed, request_digest(other), ps_bytes))
    tampered = bytearray(sealed)
    tampered[-1] ^= 1
    with pytest.raises(InvalidInput, match="does not open"):
        handle(judge_request(bytes(tampered), request_digest(request), ps_bytes))
    again = verifier_handler(verifier_bundle(path, "verdicts"))  # another enclave, another key
    with pytest.raises(InvalidInput, match="does not open"):
        again(judge_request(sealed, request_digest(request), ps_bytes))
    with pytest.raises(InvalidInput, match="bytes for"):
        handle(judge_request(sealed, request_digest(request), ps_bytes[:-4]))
    nan = np.full((len(x), 10), np.nan, dtype="<f4").tobytes()
    with pytest.raises(InvalidInput):
        handle(judge_request(sealed, request_digest(request), nan))
    with pytest.raises(ValueError, match="protocol"):
        verifier_bundle(path, "everything")
