"""A counter-mode CSPRNG for shares, PRSS masks and dealer triples: AES-128-CTR keystreams.

What:   `AESCTRGenerator` turns a 128-bit seed into the AES-128-CTR keystream
        AES_k(0) || AES_k(1) || ... (the encryption of zeros under key k = seed, counter block
        starting at 0), via `cryptography`'s OpenSSL binding. Ring elements are 8 keystream
        bytes read as a little-endian int64, so every element of Z_2^64 is equally likely and
        parties on any platform that share a seed draw identical tensors.
Why:    CrypTen's default generators are `torch.Generator`s (Mersenne Twister, 19937-bit state
        recoverable from 624 outputs) seeded with 8 bytes. That is not a CSPRNG: a party that
        sees enough of one stream can predict the rest, including masks meant for others.
        `mpc.backends.crypten.install_csprng` routes CrypTen's draws here.
Assume: AES-128 is a PRF (a PRP; the PRP/PRF switching loss after q blocks is q^2 / 2^129).
        Each generator has its own key and one counter, so no keystream block repeats before
        2^64 blocks; we stop at 2^48 blocks (4 PiB) per key, where the switching loss is
        <= 2^-33, and raise `PRGExhausted`. Seeds come from `secrets` (the OS CSPRNG).
        Derived keys (`from_shared_seed`) come from HKDF-SHA256 with a label per use, so one
        shared seed can key several independent streams.
Leaks:  nothing by itself; anyone holding the seed can recompute the stream, which is the point
        of a shared (PRSS) seed and why a local seed never leaves its process.
Cost:   one AES block per 16 output bytes. With AES-NI on one core of the dev machines,
        2^20 ring elements take ~1.8 ms (`torch.randint` on a Mersenne Twister: ~5.6 ms) and
        2^20 bits ~0.4 ms; a call costs ~10 us of fixed overhead (`torch.randint`: ~2 us).
Not fork-safe: a forked child would replay its parent's stream, so use the spawn start method.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Sequence

import numpy as np
import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mpc.errors import InvalidPRGArgument, PRGExhausted

__all__ = ["SEED_BYTES", "AESCTRGenerator", "ShapeLike"]

SEED_BYTES = 16  # AES-128 key length, in bytes
_BLOCK_BYTES = 16  # AES block length, in bytes
_MAX_BLOCKS = 2**48  # per key; PRP/PRF switching loss q^2/2^129 <= 2^-33 at this point
_HKDF_INFO_PREFIX = b"secure-infer/mpc/prg/v1/"
# Narrowest little-endian unsigned dtype holding `bits` bits, by byte width.
_UINT_DTYPES = {1: "<u1", 2: "<u2", 4: "<u4", 8: "<u8"}
_zero_buffer = bytes(1 << 20)  # the plaintext AES-CTR encrypts into keystream; grows on demand


def _zeros(n: int) -> memoryview:
    """n zero bytes, shared (read-only). bytes(n) is calloc'd: pages never written stay the
    kernel's zero page, so a large buffer costs address space, not memory."""
    global _zero_buffer
    if len(_zero_buffer) < n:
        _zero_buffer = bytes(max(n, 2 * len(_zero_buffer)))
    return memoryview(_zero_buffer)[:n]


ShapeLike = int | Sequence[int] | torch.Size


def _normalize_shape(shape: ShapeLike) -> tuple[int, ...]:
    """Return `shape` as a tuple of non-negative ints, or raise `InvalidPRGArgument`."""
    dims: Sequence[object] = (shape,) if isinstance(shape, int) else shape
    if isinstance(dims, str | bytes) or not isinstance(dims, Sequence):
        raise InvalidPRGArgument(f"shape must be an int or a sequence of ints, got {shape!r}")
    out = []
    for dim in dims:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise InvalidPRGArgument(f"shape entries must be non-negative ints, got {shape!r}")
        out.append(int(dim))
    return tuple(out)


class AESCTRGenerator:
    """AES-128-CTR keystream generator; thread-safe, one key and one counter per instance.

    Two instances built from the same seed produce the same stream, so parties that share a
    seed stay in lockstep as long as they make the same sequence of draws.

    Args:
        seed: 16 bytes of key material; a fresh `secrets.token_bytes(16)` when omitted.

    Raises:
        InvalidPRGArgument: `seed` is not 16 bytes.
    """

    __slots__ = ("_blocks", "_encryptor", "_lock", "_pending")

    def __init__(self, seed: bytes | None = None) -> None:
        if seed is None:
            seed = secrets.token_bytes(SEED_BYTES)
        if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_BYTES:
            got = f"{len(seed)} bytes" if isinstance(seed, bytes | bytearray) else type(seed)
            raise InvalidPRGArgument(f"seed must be {SEED_BYTES} bytes, got {got}")
        cipher = Cipher(algorithms.AES(bytes(seed)), modes.CTR(bytes(_BLOCK_BYTES)))
        self._encryptor = cipher.encryptor()
        self._lock = threading.Lock()
        self._blocks = 0  # keystream blocks started so far
        self._pending = 0  # bytes of the last started block not yet handed out

    @classmethod
    def from_shared_seed(cls, seed: bytes, label: str | bytes) -> AESCTRGenerator:
        """Derive a generator from a seed shared between parties, for one named use.

        Every holder of `seed` who passes the same `label` gets the same stream; different
        labels give independent streams (HKDF-SHA256, info = prefix || label).

        Args:
            seed: The shared 16-byte seed.
            label: What the stream is for, e.g. ``"crypten/pair"``.

        Raises:
            InvalidPRGArgument: `seed` is not 16 bytes or `label` is empty.
        """
        if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_BYTES:
            raise InvalidPRGArgument(f"seed must be {SEED_BYTES} bytes")
        info = label.encode() if isinstance(label, str) else bytes(label)
        if not info:
            raise InvalidPRGArgument("label must be non-empty")
        hkdf = HKDF(
            algorithm=hashes.SHA256(), length=SEED_BYTES, salt=None, info=_HKDF_INFO_PREFIX + info
        )
        return cls(hkdf.derive(bytes(seed)))

    @property
    def device(self) -> torch.device:
        """Tensors are generated on the CPU (CrypTen's TTP reads `generator.device`)."""
        return torch.device("cpu")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(blocks_used={self._blocks})"

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError(f"{type(self).__name__} holds key material and cannot be pickled")

    def random_bytes(self, n: int) -> bytes:
        """Return the next `n` keystream bytes.

        Raises:
            InvalidPRGArgument: `n` is negative.
            PRGExhausted: the key's 2^48-block budget would be exceeded.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InvalidPRGArgument(f"n must be a non-negative int, got {n!r}")
        return self._keystream(n).tobytes()

    def _keystream(self, n: int) -> np.ndarray:
        """The next `n` keystream bytes as a fresh, writable uint8 array (no extra copy:
        AES-CTR encrypts a shared zero buffer straight into it)."""
        with self._lock:
            new_blocks = -(-(max(n - self._pending, 0)) // _BLOCK_BYTES)
            if self._blocks + new_blocks > _MAX_BLOCKS:
                raise PRGExhausted(
                    f"this key has produced {self._blocks} blocks; {new_blocks} more would pass "
                    f"the limit of {_MAX_BLOCKS}: derive a generator from a fresh seed"
                )
            self._blocks += new_blocks
            self._pending = (self._pending - n) % _BLOCK_BYTES
            out = np.empty(n + _BLOCK_BYTES - 1, dtype=np.uint8)  # update_into's minimum
            written = self._encryptor.update_into(_zeros(n), out)
        if written != n:
            raise RuntimeError(f"AES-CTR wrote {written} of {n} keystream bytes")
        return out[:n]

    def _uint(self, numel: int, width: int) -> np.ndarray:
        """`numel` little-endian unsigned ints of `width` bytes each, in native byte order."""
        raw = self._keystream(numel * width).view(_UINT_DTYPES[width])
        return raw if raw.dtype.isnative else raw.astype(_UINT_DTYPES[width][1:])

    def random_ring(self, shape: ShapeLike) -> torch.Tensor:
        """Uniform elements of Z_2^64 as a `torch.int64` tensor (two's complement).

        Args:
            shape: Output shape (an int, a sequence of ints or a `torch.Size`).

        Returns:
            int64 tensor of `shape`; all 64 bits (sign bit included) are uniform.
        """
        dims = _normalize_shape(shape)
        numel = int(np.prod(dims, dtype=np.int64))
        values = self._keystream(8 * numel).view("<i8")
        if not values.dtype.isnative:
            values = values.astype(np.int64)
        return torch.from_numpy(values).reshape(dims)

    def random_bits(self, shape: ShapeLike, bits: int) -> torch.Tensor:
        """Uniform integers in [0, 2^bits) as a `torch.int64` tensor.

        For `bits == 64` the range does not fit an int64: the result is `random_ring(shape)`,
        i.e. 64 uniform bits in two's complement (what CrypTen's binary shares expect).

        Args:
            shape: Output shape.
            bits: Bit width, 1 to 64.

        Raises:
            InvalidPRGArgument: `bits` is not an int in [1, 64], or `shape` is malformed.
        """
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 64:
            raise InvalidPRGArgument(f"bits must be an int in [1, 64], got {bits!r}")
        if bits == 64:
            return self.random_ring(shape)
        dims = _normalize_shape(shape)
        numel = int(np.prod(dims, dtype=np.int64))
        width = next(w for w in (1, 2, 4, 8) if 8 * w >= bits)
        values = self._uint(numel, width) & np.array((1 << bits) - 1, dtype=f"u{width}")
        return torch.from_numpy(values.astype(np.int64)).reshape(dims)

    def random_uniform(self, shape: ShapeLike, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Uniform floats in [0, 1) with a full-precision mantissa (24 or 53 random bits).

        Args:
            shape: Output shape.
            dtype: `torch.float32` (default, like `torch.rand`) or `torch.float64`.

        Raises:
            InvalidPRGArgument: `dtype` is not float32 or float64, or `shape` is malformed.
        """
        if dtype not in (torch.float32, torch.float64):
            raise InvalidPRGArgument(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        mantissa = 24 if dtype == torch.float32 else 53
        dims = _normalize_shape(shape)
        numel = int(np.prod(dims, dtype=np.int64))
        top = self._uint(numel, 8) >> np.uint64(64 - mantissa)
        values = top.astype(np.float64) * (2.0**-mantissa)
        return torch.from_numpy(values).to(dtype).reshape(dims)
