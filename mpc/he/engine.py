"""CKKS evaluation of a head on encrypted features (server) and the client's encrypt/decrypt.

Two ciphertext layouts (docs/he.md, "Layouts"):

- `vector` (one example per ciphertext): the example's features fill the slots; linear layers
  use TenSEAL's `matmul` or one `dot` per output column (`plan`). `encrypt`, `evaluate`,
  `decrypt`. Cheap in bytes for a few examples; rotations make it slow per example.
- `feature-major/1` (`PACKED_LAYOUT`, many examples per ciphertext): ciphertext i holds feature
  i of up to `params.slots` examples, slot s belonging to example s. A linear layer is then
  `n_out * n_in` ciphertext-by-scalar multiply-adds and a square one ciphertext product per
  unit, with no rotation at all and the same multiplicative depth. Outputs: one ciphertext per
  logit, holding that logit for every example. `encrypt_packed`, `evaluate_packed`,
  `decrypt_packed`. Evaluated with SEAL's evaluator directly (`tenseal.sealapi`), since
  TenSEAL's own tensor `mm` rescales after every product (98 s vs ~35 s for MNIST's first
  layer here); its outputs travel in SEAL's own versioned serialization (magic 0xA15E), since
  TenSEAL cannot wrap a raw SEAL ciphertext into a vector from Python.

Server side: deserialize each client ciphertext against the session's public context, check it
(size, fresh level, scale, not transparent) before evaluating any, run the layers, serialize the
outputs. The server never holds a secret key, so it can neither read inputs nor outputs.

Limits (stated, not hidden): no circuit privacy. The output ciphertexts carry CKKS noise that
depends on the weights, and unused slots of a `dot` output hold partial sums; a client that
decrypts every slot with SEAL directly learns more about the weights than the logits alone.
(Unused slots of a packed output repeat the batch's own outputs: TenSEAL replicates a short
vector across the slots.)
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tenseal as ts
import tenseal.sealapi as sealapi

from mpc.he.errors import InvalidCiphertext
from mpc.he.head import Head, LayerPlan, Linear, plan
from mpc.he.params import DEFAULT_PARAMS, CKKSParams

VECTOR_LAYOUT = "vector"  # one example per ciphertext (EvaluateRequest.inputs)
PACKED_LAYOUT = "feature-major/1"  # one feature of many examples per ciphertext


def _deserialize(
    ctx: ts.Context, data: bytes, check_size: Callable[[int], None]
) -> tuple[ts.CKKSVector, Any]:
    """A TenSEAL vector and its one SEAL ciphertext; refuses all but a fresh encryption."""
    try:
        vec = ts.ckks_vector_from(ctx, data)
        cts = vec.ciphertext()
    except Exception as exc:  # SEAL's loader raises ValueError/RuntimeError on bad bytes
        raise InvalidCiphertext(f"ciphertext does not deserialize ({type(exc).__name__})") from None
    check_size(vec.size())
    if len(cts) != 1:
        raise InvalidCiphertext("expected one ciphertext per vector")
    ct = cts[0]
    if ct.parms_id() != ctx.seal_context().data.first_parms_id() or ct.size() != 2:
        raise InvalidCiphertext("ciphertext is not fresh (wrong level or size)")
    if ct.is_transparent():
        raise InvalidCiphertext("ciphertext is transparent (not encrypted)")
    return vec, ct


def _load_input(ctx: ts.Context, data: bytes, head: Head, params: CKKSParams) -> ts.CKKSVector:
    def size(n: int) -> None:
        if n != head.input_dim:
            raise InvalidCiphertext(
                f"head {head.name!r} takes {head.input_dim} features, the ciphertext holds {n}"
            )

    vec, ct = _deserialize(ctx, data, size)
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


# -- feature-major packing: many examples per ciphertext -------------------------------------
def _check_batch(batch_size: int, params: CKKSParams) -> None:
    if not 1 <= batch_size <= params.slots:
        raise InvalidCiphertext(
            f"a packed batch holds 1 to {params.slots} examples (the slots of one ciphertext), "
            f"got {batch_size}"
        )


def encrypt_packed(
    ctx: ts.Context, features: np.ndarray, params: CKKSParams = DEFAULT_PARAMS
) -> list[bytes]:
    """Client: (B, d) features, 1 <= B <= slots -> d serialized fresh CKKS vectors, vector i
    holding feature i of the B examples (slot s = example s)."""
    cols = np.asarray(features, dtype=np.float64)
    if cols.ndim != 2 or not np.isfinite(cols).all():
        raise ValueError(f"features must be a finite (batch, dim) array, got shape {cols.shape}")
    if not 1 <= cols.shape[0] <= params.slots:
        raise ValueError(f"a packed batch holds 1 to {params.slots} examples, got {cols.shape[0]}")
    return [ts.ckks_vector(ctx, cols[:, i].tolist()).serialize() for i in range(cols.shape[1])]


def load_packed(
    head: Head, params: CKKSParams, ctx: ts.Context, batch_size: int, inputs: Sequence[bytes]
) -> list[Any]:
    """Server: check and deserialize a packed batch (one fresh ciphertext per feature, each
    holding `batch_size` values at scale exactly 2^scale_bits) -> SEAL ciphertexts."""
    _check_batch(batch_size, params)
    if len(inputs) != head.input_dim:
        raise InvalidCiphertext(
            f"head {head.name!r} takes {head.input_dim} features, the packed batch holds "
            f"{len(inputs)} ciphertexts (one per feature)"
        )

    def size(n: int) -> None:
        if n != batch_size:
            raise InvalidCiphertext(f"a ciphertext holds {n} values, the batch has {batch_size}")

    cts = []
    for data in inputs:
        _, ct = _deserialize(ctx, data, size)
        if ct.scale != 2.0**params.scale_bits:  # exact: the sums below add them
            raise InvalidCiphertext(f"ciphertext scale is not 2^{params.scale_bits}")
        cts.append(ct)
    return cts


def _prime_dropped_next(seal: Any, parms_id: Any) -> float:
    """The last prime of a level: the one the next rescaling divides by."""
    return float(seal.get_context_data(parms_id).parms().coeff_modulus()[-1].value())


def run_packed(head: Head, ctx: ts.Context, x: list[Any]) -> list[Any]:
    """Evaluate the head on feature-major ciphertexts (one per input feature, consumed);
    returns one ciphertext per output, each at the last level.

    Linear: out_j = rescale(sum_i W[j, i] * x_i) + b_j, each weight a constant plaintext at
    scale q (the prime the rescaling drops), so the scale stays that of the input exactly.
    Weights that round to zero at that scale are skipped (SEAL refuses a product with a zero
    plaintext); a row of such weights becomes a fresh encryption of zero under the public key.
    Square: x_j^2, relinearize, rescale. Depth: one level per layer, as `Head.depth` counts.
    """
    seal = ctx.seal_context().data
    evaluator, encoder = sealapi.Evaluator(seal), sealapi.CKKSEncoder(seal)
    relin = ctx.relin_keys().data
    pt, tmp = sealapi.Plaintext(), sealapi.Ciphertext(seal)
    for layer in head.layers:
        if not isinstance(layer, Linear):
            for c in x:
                evaluator.square_inplace(c)
                evaluator.relinearize_inplace(c, relin)
                evaluator.rescale_to_next_inplace(c)
            continue
        parms, scale = x[0].parms_id(), x[0].scale
        q = _prime_dropped_next(seal, parms)
        keep = np.abs(layer.weight) * q >= 0.5
        out = []
        for j in range(layer.n_out):
            acc = None
            for i in np.flatnonzero(keep[j]).tolist():
                encoder.encode(float(layer.weight[j, i]), parms, q, pt)
                if acc is None:
                    acc = sealapi.Ciphertext(seal)
                    evaluator.multiply_plain(x[i], pt, acc)
                else:
                    evaluator.multiply_plain(x[i], pt, tmp)
                    evaluator.add_inplace(acc, tmp)
            if acc is None:  # every weight of this row is zero at this scale
                acc = _encrypt_zero(ctx, encoder, parms, scale * q)
            evaluator.rescale_to_next_inplace(acc)
            encoder.encode(float(layer.bias[j]), acc.parms_id(), acc.scale, pt)
            evaluator.add_plain_inplace(acc, pt)
            out.append(acc)
        x = out
    last = seal.last_parms_id()
    for c in x:  # fewer bytes back for heads shallower than the parameters
        if c.parms_id() != last:
            evaluator.mod_switch_to_inplace(c, last)
    return x


def _encrypt_zero(ctx: ts.Context, encoder: Any, parms: Any, scale: float) -> Any:
    seal = ctx.seal_context().data
    zero, ct = sealapi.Plaintext(), sealapi.Ciphertext(seal)
    encoder.encode(0.0, parms, scale, zero)
    sealapi.Encryptor(seal, ctx.public_key().data).encrypt(zero, ct)
    return ct


def _seal_bytes(cts: Sequence[Any]) -> list[bytes]:
    """SEAL ciphertexts -> SEAL's serialization (its header carries magic 0xA15E, version and
    compression). TenSEAL's binding saves only to a path: a private temporary directory."""
    with tempfile.TemporaryDirectory(prefix="he-out-") as tmp:
        path = str(Path(tmp) / "ct")
        out = []
        for ct in cts:
            ct.save(path)
            out.append(Path(path).read_bytes())
        return out


def _seal_load(seal: Any, data: bytes, directory: str) -> Any:
    path = str(Path(directory) / "ct")
    Path(path).write_bytes(data)
    ct = sealapi.Ciphertext(seal)
    ct.load(seal, path)  # SEAL checks the header, sizes and validity for this context
    return ct


def evaluate_packed(
    head: Head, params: CKKSParams, ctx: ts.Context, batch_size: int, inputs: Sequence[bytes]
) -> list[bytes]:
    """Server: a packed batch (one serialized ciphertext per feature, `batch_size` examples)
    -> one serialized SEAL ciphertext per output logit. Every input is checked first."""
    plan(head, params)  # the same refusals as the vector layout (depth, input size)
    # No reference kept to the inputs: run_packed drops them after the first layer (~0.5 MB each).
    return _seal_bytes(run_packed(head, ctx, load_packed(head, params, ctx, batch_size, inputs)))


def decrypt_packed(
    ctx: ts.Context, outputs: Sequence[bytes], batch_size: int, n_out: int
) -> np.ndarray:
    """Client: one SEAL ciphertext per logit -> (batch_size, n_out) logits (secret key)."""
    if len(outputs) != n_out:
        raise InvalidCiphertext(f"expected {n_out} output ciphertexts, got {len(outputs)}")
    seal = ctx.seal_context().data
    decryptor = sealapi.Decryptor(seal, ctx.secret_key().data)
    encoder = sealapi.CKKSEncoder(seal)
    pt = sealapi.Plaintext()
    cols = []
    with tempfile.TemporaryDirectory(prefix="he-in-") as tmp:
        for data in outputs:
            try:
                ct = _seal_load(seal, data, tmp)
                if ct.size() != 2:
                    raise ValueError("not a relinearized ciphertext")
                decryptor.decrypt(ct, pt)
                cols.append(encoder.decode_double(pt)[:batch_size])
            except (ValueError, RuntimeError, TypeError) as exc:
                raise InvalidCiphertext(f"output does not decrypt ({type(exc).__name__})") from None
    logits = np.asarray(cols, dtype=np.float64).T
    if logits.shape != (batch_size, n_out) or not np.isfinite(logits).all():
        raise InvalidCiphertext(f"expected {batch_size} finite values per output")
    return logits
