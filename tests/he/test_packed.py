"""Feature-major packing (many examples per ciphertext) against plaintext torch, and its checks.

Tolerance: packed evaluation multiplies by constants and squares, with no rotation, so its only
error is CKKS encoding and rescaling noise at scale 2^35. On these unit-scale random heads the
logits stay within 1e-4 absolute of float64 torch (measured ~1e-5 at depth 3; ~5e-6 on the real
MNIST head over its 1,000 test images, bench/he_head.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts

from mpc.he.engine import (
    decrypt,
    decrypt_packed,
    encrypt,
    encrypt_packed,
    evaluate,
    evaluate_packed,
)
from mpc.he.errors import DepthExceeded, InvalidCiphertext
from mpc.he.head import Head, Linear, Square, packed_min_batch
from mpc.he.params import DEFAULT_PARAMS, load_public_context, public_context_bytes, secret_context
from tests.he.test_engine import _head, _torch_forward

P = DEFAULT_PARAMS
ATOL = 1e-4


@pytest.fixture(scope="module")
def keys() -> tuple[ts.Context, ts.Context]:
    """(client secret context, the server's context loaded from the public bytes)."""
    ctx = secret_context()
    return ctx, load_public_context(public_context_bytes(ctx))


@pytest.mark.parametrize("batch", [1, 7, 33])
def test_packed_depth3_head_matches_torch_per_example_in_order(
    keys: tuple[ts.Context, ts.Context], batch: int
) -> None:
    ctx, server = keys
    head = _head((48, 12, 4), squares=1, seed=batch)  # linear, square, linear: depth 3
    x = np.random.default_rng(batch).uniform(-1, 1, size=(batch, 48))
    inputs = encrypt_packed(ctx, x)
    assert len(inputs) == 48  # one ciphertext per feature, whatever the batch size
    outs = evaluate_packed(head, P, server, batch, inputs)
    assert len(outs) == head.output_dim  # one ciphertext per logit
    assert all(o[:2] == b"\x5e\xa1" for o in outs)  # SEAL's own serialization (magic 0xA15E)
    got = decrypt_packed(ctx, outs, batch, head.output_dim)
    want = _torch_forward(head, x)
    assert got.shape == (batch, 4)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    assert (got.argmax(1) == want.argmax(1)).all()


def test_packed_and_vector_layouts_agree_on_a_linear_head(
    keys: tuple[ts.Context, ts.Context],
) -> None:
    ctx, server = keys
    head = _head((384, 2), squares=0)  # depth 1: the sentiment head's shape
    x = np.random.default_rng(5).uniform(-1, 1, size=(3, 384))
    packed = decrypt_packed(ctx, evaluate_packed(head, P, server, 3, encrypt_packed(ctx, x)), 3, 2)
    vector = np.stack([decrypt(ctx, o, 2) for o in evaluate(head, P, server, encrypt(ctx, x))])
    np.testing.assert_allclose(packed, _torch_forward(head, x), atol=ATOL, rtol=0)
    np.testing.assert_allclose(packed, vector, atol=1e-3, rtol=0)


def test_zero_and_tiny_weights_are_skipped_and_a_zero_row_still_gets_its_bias(
    keys: tuple[ts.Context, ts.Context],
) -> None:
    ctx, server = keys
    rng = np.random.default_rng(3)
    w1 = rng.normal(size=(6, 10)) / 3
    w1[0] = 0.0  # a dead hidden unit: its output is the bias alone
    w1[1, :5] = 1e-12  # rounds to zero at scale 2^35: SEAL refuses such a product
    w2 = rng.normal(size=(3, 6)) / 3
    w2[2] = 0.0
    layers = (
        Linear(weight=w1, bias=rng.normal(size=6)),
        Square(),
        Linear(weight=w2, bias=np.array([0.5, -1.0, 2.0])),
    )
    head = Head(name="zeros", input_kind="mnist-pixels", labels=("a", "b", "c"), layers=layers)
    x = rng.uniform(-1, 1, size=(4, 10))
    got = decrypt_packed(ctx, evaluate_packed(head, P, server, 4, encrypt_packed(ctx, x)), 4, 3)
    np.testing.assert_allclose(got, _torch_forward(head, x), atol=ATOL, rtol=0)


def test_packed_batches_are_checked_before_any_evaluation(
    keys: tuple[ts.Context, ts.Context],
) -> None:
    ctx, server = keys
    head = _head((16, 2), squares=0)
    good = encrypt_packed(ctx, np.zeros((7, 16)))
    with pytest.raises(InvalidCiphertext, match="takes 16 features, the packed batch holds 17"):
        evaluate_packed(head, P, server, 7, encrypt_packed(ctx, np.zeros((7, 17))))
    with pytest.raises(InvalidCiphertext, match="holds 7 values, the batch has 8"):
        evaluate_packed(head, P, server, 8, good)
    for size in (0, P.slots + 1):
        with pytest.raises(InvalidCiphertext, match="1 to 4096 examples"):
            evaluate_packed(head, P, server, size, good)
    with pytest.raises(ValueError, match="1 to 4096 examples, got 4097"):
        encrypt_packed(ctx, np.zeros((P.slots + 1, 16)))
    with pytest.raises(ValueError, match="finite"):
        encrypt_packed(ctx, np.full((2, 16), np.nan))
    with pytest.raises(InvalidCiphertext, match="does not deserialize"):
        evaluate_packed(head, P, server, 7, [*good[:15], good[15][:1000]])
    stale = (ts.ckks_vector(ctx, [0.0] * 7) * ([1.0] * 7)).serialize()  # one level consumed
    with pytest.raises(InvalidCiphertext, match="not fresh"):
        evaluate_packed(head, P, server, 7, [*good[:15], stale])
    other_scale = ts.ckks_vector(ctx, [0.0] * 7, scale=2.0**30).serialize()
    with pytest.raises(InvalidCiphertext, match="scale is not 2"):
        evaluate_packed(head, P, server, 7, [*good[:15], other_scale])
    deep = _head((8, 8, 8, 2), squares=2)
    with pytest.raises(DepthExceeded, match="depth 5"):
        evaluate_packed(deep, P, server, 1, encrypt_packed(ctx, np.zeros((1, 8))))


def test_client_refuses_outputs_that_do_not_decrypt(keys: tuple[ts.Context, ts.Context]) -> None:
    ctx, server = keys
    head = _head((16, 2), squares=0)
    outs = evaluate_packed(head, P, server, 2, encrypt_packed(ctx, np.ones((2, 16))))
    with pytest.raises(InvalidCiphertext, match="expected 2 output ciphertexts, got 1"):
        decrypt_packed(ctx, outs[:1], 2, 2)
    with pytest.raises(InvalidCiphertext, match="does not decrypt"):
        decrypt_packed(ctx, [outs[0], outs[1][: len(outs[1]) // 2]], 2, 2)
    with pytest.raises(InvalidCiphertext, match="does not decrypt"):
        decrypt_packed(ctx, [outs[0], b"\x00" * 1000], 2, 2)


def test_packed_min_batch_follows_the_cost_model() -> None:
    """Break-even batch sizes measured on this machine: MNIST MLP 3-4, sentiment ~39."""
    assert packed_min_batch(_head((784, 128, 10)), P) == 4
    assert packed_min_batch(_head((384, 2), squares=0), P) == 41
    assert packed_min_batch(_head((784, 10), squares=0), P) == 21
