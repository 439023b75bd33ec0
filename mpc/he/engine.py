"""CKKS evaluation of a head on encrypted features (server) and the client's encrypt/decrypt.

Server side (`evaluate`): deserialize each client ciphertext against the session's public
context, check it (size, fresh level, scale), run the layers with the strategies of `plan`, and
serialize the outputs. The server never holds a secret key, so it can neither read inputs nor
outputs. Client side: `encrypt` features, `decrypt` the output ciphertexts to logits.

Limits (stated, not hidden): no circuit privacy. The output ciphertexts carry CKKS noise that
depends on the weights, and unused slots of a `dot` output hold partial sums; a client that
decrypts every slot with SEAL directly learns more about the weights than the logits alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tenseal as ts

from mpc.he.errors import InvalidCiphertext
from mpc.he.head import Head, LayerPlan, Linear, plan
from mpc.he.params import CKKSParams


def _load_input(ctx: ts.Context, data: bytes, head: Head, params: CKKSParams) -> ts.CKKSVector:
    try:
        vec = ts.ckks_vector_from(ctx, data)
        cts = vec.ciphertext()
    except Exception as exc:  # SEAL's loader raises ValueError/RuntimeError on bad bytes
        raise InvalidCiphertext(f"ciphertext does not deserialize ({type(exc).__name__})") from None
    if vec.size() != head.input_dim:
        raise InvalidCiphertext(
            f"head {head.name!r} takes {head.input_dim} features, the ciphertext holds {vec.size()}"
        )
    seal = ctx.seal_context().data
    if len(cts) != 1:
        raise InvalidCiphertext("expected one ciphertext per feature vector")
    ct = cts[0]
    if ct.parms_id() != seal.first_parms_id() or ct.size() != 2:
        raise InvalidCiphertext("ciphertext is not fresh (wrong level or size)")
    if abs(ct.scale - 2.0**params.scale_bits) > 1e-3 * 2.0**params.scale_bits:
        raise InvalidCiphertext(f"ciphertext scale is not 2^{params.scale_bits}")
    return vec


def run_layers(head: Head, plans: Sequence[LayerPlan], x: ts.CKKSVector) -> list[ts.CKKSVector]:
    """Evaluate the head on one encrypted vector; returns the output ciphertexts in order
    (one packed vector, or one ciphertext per output column for a `dot` last layer)."""
    by_index = {p.index: p.strategy for p in plans}
    for i, layer in enumerate(head.layers):
        if not isinstance(layer, Linear):
            x = x.square()
            continue
        if by_index[i] == "dot":  # last layer: one ciphertext per output column
            return [x.dot(layer.weight[j]) + float(layer.bias[j]) for j in range(layer.n_out)]
        # The bias goes in as a ciphertext under the client's public key: TenSEAL encodes a
        # plain vector operand across all slots, which corrupts a following matmul (it relies
        # on zeros past the vector's size); a fresh encryption is zero there.
        x = x.matmul(layer.weight.T) + ts.ckks_vector(x.context(), layer.bias.tolist())
    return [x]


def evaluate(
    head: Head, params: CKKSParams, ctx: ts.Context, inputs: Sequence[bytes]
) -> list[list[bytes]]:
    """Server: each serialized input vector -> its serialized output ciphertexts.

    Every input is checked before any is evaluated, so a bad one costs no compute.
    """
    plans = plan(head, params)
    vectors = [_load_input(ctx, data, head, params) for data in inputs]
    return [[out.serialize() for out in run_layers(head, plans, v)] for v in vectors]


def encrypt(ctx: ts.Context, features: np.ndarray) -> list[bytes]:
    """Client: (B, d) features -> B serialized fresh CKKS vectors (one per example)."""
    rows = np.asarray(features, dtype=np.float64)
    if rows.ndim != 2 or not np.isfinite(rows).all():
        raise ValueError(f"features must be a finite (batch, dim) array, got shape {rows.shape}")
    return [ts.ckks_vector(ctx, row.tolist()).serialize() for row in rows]


def decrypt(ctx: ts.Context, outputs: Sequence[bytes], n_out: int) -> np.ndarray:
    """Client: one example's output ciphertexts -> its (n_out,) logits (needs the secret key)."""
    values: list[float] = []
    for data in outputs:
        try:
            values += ts.ckks_vector_from(ctx, data).decrypt()
        except Exception as exc:
            raise InvalidCiphertext(f"output does not decrypt ({type(exc).__name__})") from None
    if len(values) != n_out:
        raise InvalidCiphertext(f"expected {n_out} output values, got {len(values)}")
    return np.asarray(values, dtype=np.float64)
