"""`mpc.prg.AESCTRGenerator`: known answer, determinism, range, rough uniformity, validation."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest
import torch

import mpc.prg
from mpc.errors import InvalidPRGArgument, MPCError, PRGExhausted
from mpc.prg import SEED_BYTES, AESCTRGenerator

SEED_A = bytes(range(16))
SEED_B = bytes(range(1, 17))
# FIPS-197 / NIST: AES-128 with the all-zero key encrypts the all-zero block to this.
AES128_ZERO_KEY_ZERO_BLOCK = bytes.fromhex("66e94bd4ef8a2c3b884cfa59ca342b2e")
# Loose chi-square bound for 255 degrees of freedom (mean 255, sd ~22.6): p < 1e-7 above it.
CHI2_255_BOUND = 400.0


def test_known_answer_first_block_is_aes_of_zero() -> None:
    assert AESCTRGenerator(bytes(16)).random_bytes(16) == AES128_ZERO_KEY_ZERO_BLOCK


def test_ring_elements_are_little_endian_keystream_words() -> None:
    value = AESCTRGenerator(bytes(16)).random_ring((1,))
    expected = int.from_bytes(AES128_ZERO_KEY_ZERO_BLOCK[:8], "little", signed=True)
    assert value.dtype == torch.int64 and value.item() == expected


def test_same_seed_same_stream_whatever_the_chunking() -> None:
    whole = AESCTRGenerator(SEED_A).random_bytes(1000)
    gen = AESCTRGenerator(SEED_A)
    pieces = b"".join(gen.random_bytes(n) for n in (1, 15, 16, 17, 0, 3, 948))
    assert pieces == whole
    first, second = AESCTRGenerator(SEED_A), AESCTRGenerator(SEED_A)
    assert torch.equal(first.random_ring((4, 5)), second.random_ring((4, 5)))
    assert torch.equal(first.random_bits(7, 13), second.random_bits(7, 13))
    assert torch.equal(first.random_uniform(6), second.random_uniform(6))


def test_different_seeds_differ_and_default_seeds_are_fresh() -> None:
    assert AESCTRGenerator(SEED_A).random_bytes(32) != AESCTRGenerator(SEED_B).random_bytes(32)
    assert AESCTRGenerator().random_bytes(32) != AESCTRGenerator().random_bytes(32)


def test_shared_seed_derivation_is_deterministic_and_label_separated() -> None:
    one = AESCTRGenerator.from_shared_seed(SEED_A, "crypten/prss/pair").random_bytes(64)
    two = AESCTRGenerator.from_shared_seed(SEED_A, b"crypten/prss/pair").random_bytes(64)
    other_label = AESCTRGenerator.from_shared_seed(SEED_A, "crypten/ttp").random_bytes(64)
    other_seed = AESCTRGenerator.from_shared_seed(SEED_B, "crypten/prss/pair").random_bytes(64)
    raw = AESCTRGenerator(SEED_A).random_bytes(64)
    assert one == two
    assert len({one, other_label, other_seed, raw}) == 4


def test_random_ring_uses_all_64_bits() -> None:
    values = AESCTRGenerator(SEED_A).random_ring(4096)
    assert values.min().item() < -(2**62) and values.max().item() > 2**62  # both high ranges
    assert (values < 0).any()  # sign bit
    as_u64 = values.numpy().view(np.uint64)
    bits = (as_u64[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
    ones = bits.sum(axis=0)  # per bit position, out of 4096
    assert (ones > 0).all() and (ones < len(values)).all()
    # Each bit is a fair coin: 2048 +- 32 (1 sd); allow 6 sd.
    assert np.abs(ones.astype(np.int64) - 2048).max() < 6 * 32


def test_byte_values_pass_a_loose_chi_square() -> None:
    data = np.frombuffer(AESCTRGenerator(SEED_B).random_bytes(1 << 20), dtype=np.uint8)
    counts = np.bincount(data, minlength=256)
    expected = len(data) / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < CHI2_255_BOUND


@pytest.mark.parametrize("bits", [1, 7, 8, 9, 16, 17, 32, 33, 63])
def test_random_bits_range(bits: int) -> None:
    values = AESCTRGenerator(SEED_A).random_bits((64, 64), bits)
    assert values.dtype == torch.int64 and values.shape == (64, 64)
    assert values.min().item() >= 0 and values.max().item() < 2**bits
    assert values.max().item() >= 2 ** (bits - 1)  # the top bit appears
    if bits == 1:
        assert 0.45 < values.double().mean().item() < 0.55


def test_random_bits_64_is_a_ring_element() -> None:
    bits64 = AESCTRGenerator(SEED_A).random_bits(9, 64)
    assert torch.equal(bits64, AESCTRGenerator(SEED_A).random_ring(9))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_random_uniform(dtype: torch.dtype) -> None:
    values = AESCTRGenerator(SEED_A).random_uniform((100, 100), dtype)
    assert values.dtype == dtype and values.shape == (100, 100)
    assert values.min().item() >= 0.0 and values.max().item() < 1.0
    assert abs(values.double().mean().item() - 0.5) < 0.02


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        (5, (5,)),
        ((2, 3), (2, 3)),
        ([2, 3], (2, 3)),
        (torch.Size([4, 1]), (4, 1)),
        ((), ()),
        ((0, 3), (0, 3)),
    ],
)
def test_shapes(shape: object, expected: tuple[int, ...]) -> None:
    gen = AESCTRGenerator(SEED_A)
    assert tuple(gen.random_ring(shape).shape) == expected  # type: ignore[arg-type]
    assert tuple(gen.random_bits(shape, 5).shape) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [bytes(15), bytes(17), b"", "0" * 16, 1234])
def test_bad_seed(seed: object) -> None:
    with pytest.raises(InvalidPRGArgument, match=f"{SEED_BYTES} bytes"):
        AESCTRGenerator(seed)  # type: ignore[arg-type]
    with pytest.raises(InvalidPRGArgument):
        AESCTRGenerator.from_shared_seed(seed, "x")  # type: ignore[arg-type]


def test_bad_label() -> None:
    with pytest.raises(InvalidPRGArgument, match="label"):
        AESCTRGenerator.from_shared_seed(SEED_A, "")


@pytest.mark.parametrize("bits", [0, 65, -1, True, 1.5, "8"])
def test_bad_bits(bits: object) -> None:
    with pytest.raises(InvalidPRGArgument, match="bits"):
        AESCTRGenerator(SEED_A).random_bits(3, bits)  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [-1, (2, -1), (2.0,), "ab", None, (True,)])
def test_bad_shape(shape: object) -> None:
    with pytest.raises(InvalidPRGArgument, match="shape"):
        AESCTRGenerator(SEED_A).random_ring(shape)  # type: ignore[arg-type]


def test_bad_byte_count_and_dtype() -> None:
    gen = AESCTRGenerator(SEED_A)
    with pytest.raises(InvalidPRGArgument):
        gen.random_bytes(-1)
    with pytest.raises(InvalidPRGArgument, match="dtype"):
        gen.random_uniform(3, torch.int64)


def test_errors_are_mpc_errors_and_value_errors() -> None:
    assert issubclass(InvalidPRGArgument, MPCError) and issubclass(InvalidPRGArgument, ValueError)
    assert issubclass(PRGExhausted, MPCError)


def test_block_budget_is_enforced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mpc.prg, "_MAX_BLOCKS", 4)
    gen = AESCTRGenerator(SEED_A)
    gen.random_bytes(8)
    gen.random_bytes(8)  # same block as the first call
    gen.random_bytes(47)  # blocks 2 to 4, one byte left in block 4
    gen.random_bytes(1)
    with pytest.raises(PRGExhausted, match="limit of 4"):
        gen.random_bytes(1)
    with pytest.raises(PRGExhausted):
        gen.random_ring(1)


def test_concurrent_draws_partition_the_stream() -> None:
    gen = AESCTRGenerator(SEED_A)
    per_thread, threads_n = 500, 4
    chunks: list[bytes] = []
    lock = threading.Lock()

    def draw() -> None:
        mine = [gen.random_bytes(16) for _ in range(per_thread)]
        with lock:
            chunks.extend(mine)

    threads = [threading.Thread(target=draw) for _ in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stream = AESCTRGenerator(SEED_A).random_bytes(16 * per_thread * threads_n)
    blocks = [stream[i : i + 16] for i in range(0, len(stream), 16)]
    assert sorted(chunks) == sorted(blocks)  # every block handed out exactly once


def test_key_material_does_not_leak_through_repr_or_pickle() -> None:
    gen = AESCTRGenerator(SEED_A)
    assert SEED_A.hex() not in repr(gen) and "blocks_used=0" in repr(gen)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(gen)


def test_device_is_cpu() -> None:
    assert AESCTRGenerator(SEED_A).device == torch.device("cpu")
