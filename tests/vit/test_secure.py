"""Secure MPCViT inference (`mpc.vit.secure`) against the plaintext model.

Most tests run CrypTen in this process (world size 1: the same approximations and fixed point,
without two-party truncation); the `multiparty` test runs 2 parties + CrypTen's TTP over gloo on
loopback through `secure_classify`. Tolerances: each attention variant within `WEIGHTS_TOL` of
its torch definition (softmax at exp iterations n = 4, as `mpc.models.bert`: 0.0078 measured
here, tolerance 0.01; relu_softmax: the Newton reciprocal, tolerance 1e-3); whole-model logits
within `LOGIT_TOL` = 0.1 of plaintext (PUMA's GeLU spline is off by up to 0.02 per element;
~0.02 measured on the logits here) and the same argmax on every image.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from mpc.backends.crypten import load
from mpc.vit.data import ImageSplit
from mpc.vit.model import Architecture, AttentionKind, MLPKind, MPCViT, attention_weights
from mpc.vit.secure import (
    SecureViT,
    attention_weights_secure,
    calibrate_relu_bound,
    client_input,
    secure_classify,
)
from tests.vit.conftest import TINY

WEIGHTS_TOL = {
    AttentionKind.SOFTMAX: 1e-2,
    AttentionKind.RELU_SOFTMAX: 1e-3,
    AttentionKind.SCALING: 2.0**-15,
}
LOGIT_TOL = 0.1
K = AttentionKind
MIXED = Architecture(
    (
        (K.SOFTMAX, K.RELU_SOFTMAX, K.SCALING, K.RELU_SOFTMAX),
        (K.SCALING, K.SOFTMAX, K.SCALING, K.SCALING),
    ),
    (MLPKind.RELU, MLPKind.LINEAR),  # the teacher covers the GeLU
)


@pytest.fixture(scope="module")
def crypten() -> Iterator[Any]:
    module = load()
    started = not module.is_initialized()
    if started:
        module.init()
    yield module
    if started:
        module.uninit()


def _decode(secret: Any) -> torch.Tensor:
    return secret.reveal().double() / secret.encoder.scale


@pytest.fixture(scope="module")
def mixed(teacher: MPCViT) -> MPCViT:
    """The teacher's weights under a mixed architecture (every variant, a linear MLP)."""
    model = MPCViT(TINY, MIXED)
    model.load_state_dict(teacher.state_dict())
    return model.eval()


@pytest.mark.parametrize("kind", list(AttentionKind))
def test_each_secure_variant_matches_its_torch_definition(
    crypten: Any, kind: AttentionKind
) -> None:
    scores = torch.randn(3, 2, 17, 17, generator=torch.Generator().manual_seed(5)) * 2
    secret = attention_weights_secure(crypten.cryptensor(scores), kind, relu_bound=200.0)
    want = attention_weights(scores.double(), kind)
    if kind is AttentionKind.SCALING:  # SecureViT folds the 1/T into W_q
        want = want * scores.shape[-1]
    assert (_decode(secret) - want).abs().max().item() < WEIGHTS_TOL[kind]


@pytest.mark.parametrize("which", ["teacher", "mixed"])
def test_secure_forward_matches_plaintext_on_digits(
    crypten: Any, digits: ImageSplit, teacher: MPCViT, mixed: MPCViT, which: str
) -> None:
    model = teacher if which == "teacher" else mixed
    images = digits.test_x[:60]
    bound = calibrate_relu_bound(model, digits.train_x)
    secure = SecureViT(model, relu_bound=bound)
    logits = _decode(secure(crypten.cryptensor(client_input(images, TINY))))  # (60, 10)
    with torch.no_grad():
        plain = model(images).double()
    assert (logits - plain).abs().max().item() < LOGIT_TOL
    assert torch.equal(logits.argmax(-1), plain.argmax(-1))


def test_secure_model_rejects_bad_input(crypten: Any, teacher: MPCViT, digits: ImageSplit) -> None:
    with pytest.raises(ValueError, match="relu_bound"):
        SecureViT(teacher, relu_bound=0.5)
    with pytest.raises(ValueError, match="discretize"):
        SecureViT(MPCViT(TINY, search=True), relu_bound=10.0)
    secure = SecureViT(teacher, relu_bound=10.0)
    with pytest.raises(ValueError, match="patches must be"):
        secure(crypten.cryptensor(torch.zeros(2, 4, 16)))
    with pytest.raises(ValueError, match="images must be"):
        secure_classify(teacher, torch.zeros(2, 1, 28, 28), relu_bound=10.0)
    with pytest.raises(ValueError, match="batch_size"):
        secure_classify(teacher, digits.test_x[:2], relu_bound=10.0, batch_size=0)
    with pytest.raises(TypeError, match="float"):
        secure_classify(teacher, torch.zeros(2, 1, 8, 8, dtype=torch.uint8), relu_bound=10.0)


@pytest.mark.multiparty
def test_two_parties_and_ttp_classify_like_plaintext(mixed: MPCViT, digits: ImageSplit) -> None:
    images = digits.test_x[:30]  # batches of 12, 12 and 6
    bound = calibrate_relu_bound(mixed, digits.train_x)
    result = secure_classify(
        mixed, images, relu_bound=bound, batch_size=12, transport="pipe", timeout_s=300.0
    )
    with torch.no_grad():
        plain = mixed(images).double()
    assert result.logits.shape == (30, 10)
    assert (result.logits - plain).abs().max().item() < LOGIT_TOL
    assert torch.equal(result.predictions, plain.argmax(-1))
    assert result.bytes_sent_received > 0
    assert result.rounds > 0
    assert len(result.per_batch_seconds) == 3
    # the second batch of 12 ran on the dealer plan recorded by the first (every planned value
    # used, none requested online: a mismatch raises in the party); the batch of 6 is a new
    # shape and records its own
    assert result.preprocessed_batches == 1
    assert "trusted dealer" in result.threat_model
