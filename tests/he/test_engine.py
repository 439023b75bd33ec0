"""The CKKS engine against plaintext torch, parameters, depth refusal and key separation.

Tolerances: at scale 2^35 a fresh CKKS value carries ~2^-20 relative error; after a matmul, a
square and a dot (depth 3) the logits of a unit-scale head stay within 5e-3 absolute of float64
torch (measured ~1e-4 here and ~1.3e-3 on the MNIST head's logits up to 28); a depth-1 linear
head within 1e-3 (measured ~1e-5).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tenseal as ts
import torch

from mpc.he.engine import decrypt, encrypt, evaluate, run_layers
from mpc.he.errors import DepthExceeded, InvalidCiphertext, InvalidContext, InvalidHead
from mpc.he.head import Head, LayerPlan, Linear, Square, list_heads, load_head, plan
from mpc.he.params import (
    DEFAULT_PARAMS,
    CKKSParams,
    load_public_context,
    public_context_bytes,
    secret_context,
)

P = DEFAULT_PARAMS


def _head(sizes: tuple[int, ...], squares: int = 1, seed: int = 0, name: str = "t") -> Head:
    """A head of random weights: linear, (square, linear) * squares."""
    rng = np.random.default_rng(seed)
    layers: list[Linear | Square] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:], strict=False)):
        if i:
            layers += [Square()] if i <= squares else []
        layers.append(Linear(weight=rng.normal(size=(b, a)) / np.sqrt(a), bias=rng.normal(size=b)))
    labels = tuple(str(i) for i in range(sizes[-1]))
    return Head(name=name, input_kind="mnist-pixels", labels=labels, layers=tuple(layers))


def _torch_forward(head: Head, x: np.ndarray) -> np.ndarray:
    """The same head as a float64 torch module: the independent plaintext reference."""
    mods: list[torch.nn.Module] = []
    for layer in head.layers:
        if isinstance(layer, Linear):
            lin = torch.nn.Linear(layer.n_in, layer.n_out).double()
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(layer.weight))
                lin.bias.copy_(torch.from_numpy(layer.bias))
            mods.append(lin)
        else:
            mods.append(torch.nn.Identity())
    y = torch.from_numpy(x)
    with torch.no_grad():
        for layer, mod in zip(head.layers, mods, strict=True):
            y = mod(y) if isinstance(layer, Linear) else y.square()
    return y.numpy()


@pytest.fixture(scope="module")
def keys() -> tuple[ts.Context, bytes, ts.Context]:
    """(client secret context, its public bytes, the server's context loaded from them)."""
    ctx = secret_context()
    public = public_context_bytes(ctx)
    return ctx, public, load_public_context(public)


def test_params_state_128_bit_security_within_the_standard_bound() -> None:
    assert P.security_bits == 128 and P.poly_modulus_degree == 8192
    assert P.total_bits <= 218 and P.depth == 3
    assert "128-bit" in P.describe()
    with pytest.raises(ValueError, match="exceeds the 218 bits"):
        CKKSParams(coeff_mod_bit_sizes=(60, 40, 40, 40, 60))


def test_public_context_carries_no_secret_key(keys: tuple[ts.Context, bytes, ts.Context]) -> None:
    ctx, public, server = keys
    assert ctx.is_private()
    sent = ts.context_from(public)
    assert not sent.is_private() and not sent.has_secret_key()
    assert sent.has_galois_keys() and sent.has_relin_keys() and sent.has_public_key()
    vec = ts.ckks_vector(ctx, [1.0, 2.0])
    vec.link_context(server)
    with pytest.raises(ValueError, match="secret_key"):
        vec.decrypt()
    # Independently of TenSEAL's flags: the secret key's serialization is not in the bytes.
    secret_only = ctx.serialize(
        save_public_key=False, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
    )
    no_secret = ctx.serialize(
        save_public_key=False, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
    )
    assert len(secret_only) > len(no_secret) + 10_000  # the secret key is tens of KB
    assert 25e6 < len(public) < 80e6  # ~50 MB with Galois keys at these parameters


def test_server_refuses_unusable_contexts(keys: tuple[ts.Context, bytes, ts.Context]) -> None:
    ctx, public, _ = keys
    with pytest.raises(InvalidContext, match="secret key"):
        load_public_context(ctx.serialize(save_secret_key=True))
    with pytest.raises(InvalidContext, match="does not deserialize"):
        load_public_context(public[: len(public) // 2])
    with pytest.raises(InvalidContext, match="does not deserialize"):
        load_public_context(b"\x00" * 1000)
    bare = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=list(P.coeff_mod_bit_sizes))
    bare.make_context_public()  # relinearization keys only, no Galois keys
    with pytest.raises(InvalidContext, match="Galois"):
        load_public_context(bare.serialize())
    other = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    other.generate_galois_keys()
    other.make_context_public()
    with pytest.raises(InvalidContext, match="parameters"):
        load_public_context(other.serialize())


@pytest.mark.parametrize(
    ("sizes", "squares", "atol"),
    [((48, 12, 4), 1, 5e-3), ((384, 2), 0, 1e-3)],
    ids=["linear-square-linear", "linear"],
)
def test_encrypted_head_matches_plaintext_torch(
    keys: tuple[ts.Context, bytes, ts.Context], sizes: tuple[int, ...], squares: int, atol: float
) -> None:
    ctx, _, server = keys
    head = _head(sizes, squares)
    x = np.random.default_rng(1).uniform(-1, 1, size=(2, sizes[0]))
    outs = evaluate(head, P, server, encrypt(ctx, x))
    got = np.stack([decrypt(ctx, o, head.output_dim) for o in outs])
    want = _torch_forward(head, x)
    np.testing.assert_allclose(got, want, atol=atol, rtol=0)
    assert (got.argmax(1) == want.argmax(1)).all()


def test_plan_picks_dots_for_narrow_last_layers_and_both_strategies_agree(
    keys: tuple[ts.Context, bytes, ts.Context],
) -> None:
    ctx, _, server = keys
    assert [p.strategy for p in plan(_head((384, 2), 0), P)] == ["dot"]  # 2*9 < 384
    assert [p.strategy for p in plan(_head((784, 128, 10)), P)] == ["matmul", "dot"]
    assert [p.strategy for p in plan(_head((16, 64), 0), P)] == ["matmul"]  # 64*4 > 16
    head = _head((32, 8, 3))
    x = np.random.default_rng(2).uniform(-1, 1, size=(1, 32))
    vec = ts.ckks_vector_from(server, encrypt(ctx, x)[0])
    results = []
    for last in ("matmul", "dot"):
        plans = (LayerPlan(0, "matmul", 0, 0, ("matmul",)), LayerPlan(2, last, 0, 0, ()))
        outs = [o.serialize() for o in run_layers(head, plans, vec.copy())]
        assert len(outs) == (1 if last == "matmul" else 3)
        results.append(decrypt(ctx, outs, 3))
    np.testing.assert_allclose(results[0], results[1], atol=5e-3)
    np.testing.assert_allclose(results[0], head.forward(x)[0], atol=5e-3)


def test_a_head_deeper_than_the_parameters_is_refused() -> None:
    deep = _head((8, 8, 8, 2), squares=2)  # linear, square, linear, square, linear: depth 5
    assert deep.depth == 5
    with pytest.raises(DepthExceeded, match="needs multiplicative depth 5.*supports 3"):
        plan(deep, P)


def test_bad_ciphertexts_are_refused(keys: tuple[ts.Context, bytes, ts.Context]) -> None:
    ctx, _, server = keys
    head = _head((16, 2), 0)
    good = encrypt(ctx, np.zeros((1, 16)))[0]
    with pytest.raises(InvalidCiphertext, match="takes 16 features, the ciphertext holds 17"):
        evaluate(head, P, server, encrypt(ctx, np.zeros((1, 17))))
    with pytest.raises(InvalidCiphertext, match="does not deserialize"):
        evaluate(head, P, server, [good[: len(good) // 3]])
    stale = (ts.ckks_vector(ctx, [0.0] * 16) * ([1.0] * 16)).serialize()  # one level consumed
    with pytest.raises(InvalidCiphertext, match="not fresh"):
        evaluate(head, P, server, [stale])


def test_heads_round_trip_as_safetensors_and_json(tmp_path: Path) -> None:
    head = _head((20, 6, 4), name="roundtrip")
    head.save(tmp_path)
    assert list_heads(tmp_path) == ["roundtrip"]
    loaded = load_head(tmp_path, "roundtrip")
    assert loaded.digest() == head.digest() and loaded.depth == 3
    np.testing.assert_array_equal(loaded.forward(np.ones((1, 20))), head.forward(np.ones((1, 20))))
    weights = tmp_path / "roundtrip.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\x00" * 8)  # tamper with the last bias
    with pytest.raises(InvalidHead, match="digest"):
        load_head(tmp_path, "roundtrip")
    with pytest.raises(FileNotFoundError):
        load_head(tmp_path, "../etc/passwd")


def _field(number: int, payload: bytes) -> bytes:
    """A protobuf length-delimited field (what TenSEAL's context is made of)."""

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    return varint(number << 3 | 2) + varint(len(payload)) + payload


def _zstd_seal_object(expanded: int) -> bytes:
    """A SEAL-serialized object whose zstd body expands to `expanded` zero bytes."""
    import struct

    import zstandard

    packer = zstandard.ZstdCompressor().compressobj()
    body = b"".join(packer.compress(bytes(1 << 20)) for _ in range(expanded >> 20)) + packer.flush()
    header = struct.pack("<HBBBBHQ", 0xA15E, 16, 4, 3, 2, 0, 16 + len(body))
    return header + body


def test_a_compressed_context_is_bounded_by_what_it_expands_to(
    keys: tuple[ts.Context, bytes, ts.Context],
) -> None:
    """SEAL compresses each object: a few MB of crafted keys (all-zero Galois keys) could
    expand to gigabytes in the server's memory. The expanded size is checked before anything
    is deserialized; a real client's context (~50 MB on the wire) expands to ~65 MB."""
    from mpc.he.params import MAX_EXPANDED_CONTEXT_BYTES, check_expanded_size

    _, public, _ = keys
    expanded = check_expanded_size(public)
    assert len(public) < expanded < MAX_EXPANDED_CONTEXT_BYTES
    bomb = _field(1, _field(4, _zstd_seal_object(300 << 20)))  # 300 MiB from ~10 KB
    assert len(bomb) < 100_000
    with pytest.raises(InvalidContext, match="expands to more than"):
        load_public_context(bomb)
    with pytest.raises(InvalidContext, match="expands to more than"):
        load_public_context(public + _field(15, _zstd_seal_object(100 << 20)))
    with pytest.raises(InvalidContext, match="expands to more than"):
        check_expanded_size(public, limit=expanded - 1)


def test_a_context_without_its_public_key_is_refused(
    keys: tuple[ts.Context, bytes, ts.Context],
) -> None:
    ctx, _, _ = keys
    symmetric = ctx.serialize(
        save_public_key=False, save_secret_key=False, save_galois_keys=True, save_relin_keys=True
    )
    with pytest.raises(InvalidContext, match="lacks the public key"):
        load_public_context(symmetric)
