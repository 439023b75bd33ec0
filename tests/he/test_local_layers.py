"""The client's local layers before encryption: MiniLM embeddings and MNIST pixel scaling."""

from __future__ import annotations

import numpy as np
import pytest

from decentralized.errors import InvalidRequest
from secure_infer.he_client import local_features


def test_text_heads_get_unit_norm_minilm_embeddings() -> None:
    emb = local_features("minilm-embedding", ["A wonderful, moving film.", "Dull and too long."])
    assert emb.shape == (2, 384) and emb.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert float(emb[0] @ emb[1]) < 0.9  # different texts, different features


def test_mnist_pixels_are_scaled_and_checked() -> None:
    x = local_features("mnist-pixels", np.full((2, 28, 28), 255.0))
    assert x.shape == (2, 784) and x.max() == 1.0
    with pytest.raises(InvalidRequest, match="pixels in"):
        local_features("mnist-pixels", np.full((1, 784), 300.0))
    with pytest.raises(InvalidRequest, match="784"):
        local_features("mnist-pixels", np.zeros((1, 100)))


@pytest.mark.parametrize("inputs", ["one string", [], [1, 2]])
def test_text_heads_refuse_non_text_inputs(inputs: object) -> None:
    with pytest.raises(InvalidRequest, match="list of texts"):
        local_features("minilm-embedding", inputs)
