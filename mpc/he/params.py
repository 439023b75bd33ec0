"""The frozen CKKS parameters of the HE mode, and the keys made from them.

Security: N = 8192 with a total coefficient modulus of at most 218 bits gives 128-bit classical
security for a ternary secret, per the Homomorphic Encryption Standard (Albrecht et al., 2018,
table 1; SEAL's `sec_level_type.tc128` default enforces the same bound). Our chain
[50, 35, 35, 35, 50] is 205 bits: 3 rescalings (multiplicative depth 3) at scale 2^35, 15 bits of
integer headroom in the last prime, and a 50-bit special prime for key switching.

The client makes every key (`secret_context`); it sends only `public_context_bytes`, which holds
the public, relinearization and Galois keys and never the secret key.
"""

from __future__ import annotations

import contextlib
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import tenseal as ts
import zstandard

from mpc.he.errors import InvalidContext

_MAX_BITS_128 = {4096: 109, 8192: 218, 16384: 438, 32768: 881}  # HE standard, tc128
# What a client's public context may expand to in the server's memory (its SEAL objects after
# decompression). The default parameters' context is ~50 MB on the wire and ~65 MB expanded
# (mostly Galois keys); SEAL's per-object zstd/zlib compression lets a few MB of crafted keys
# (e.g. thousands of all-zero Galois keys) expand to gigabytes, so the bound is checked on the
# expanded size, before the context is deserialized.
MAX_EXPANDED_CONTEXT_BYTES = 128 * 1024 * 1024
_SEAL_MAGIC = 0xA15E
_SEAL_HEADER = struct.Struct("<HBBBBHQ")  # magic, header size, version, compr_mode, size
_COMPR_NONE, _COMPR_ZLIB, _COMPR_ZSTD = 0, 1, 2


@dataclass(frozen=True, slots=True)
class CKKSParams:
    """One CKKS parameter set. Frozen: a session, a head plan and a ciphertext all name it."""

    name: str = "ckks-n8192-d3"
    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (50, 35, 35, 35, 50)
    scale_bits: int = 35
    security_bits: int = 128  # classical, ternary secret, HE standard table 1

    def __post_init__(self) -> None:
        limit = _MAX_BITS_128.get(self.poly_modulus_degree)
        if limit is None or self.security_bits != 128:
            raise ValueError("only 128-bit parameter sets of the HE standard are supported")
        if sum(self.coeff_mod_bit_sizes) > limit:
            raise ValueError(
                f"{sum(self.coeff_mod_bit_sizes)}-bit modulus exceeds the {limit} bits that give "
                f"128-bit security at N={self.poly_modulus_degree}"
            )
        if len(self.coeff_mod_bit_sizes) < 3:
            raise ValueError("need at least one rescaling prime between first and special prime")

    @property
    def depth(self) -> int:
        """Rescalings available: plaintext or ciphertext multiplications in sequence."""
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def total_bits(self) -> int:
        return sum(self.coeff_mod_bit_sizes)

    def describe(self) -> str:
        return (
            f"CKKS N={self.poly_modulus_degree}, moduli {list(self.coeff_mod_bit_sizes)} "
            f"({self.total_bits} bits), scale 2^{self.scale_bits}, depth {self.depth}, "
            f"{self.security_bits}-bit security (HE standard)"
        )


DEFAULT_PARAMS = CKKSParams()


def secret_context(params: CKKSParams = DEFAULT_PARAMS) -> ts.Context:
    """A fresh client context: secret, public, relinearization and Galois keys (power-of-2
    rotations, which `dot` and `matmul` need)."""
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
    )
    ctx.global_scale = 2.0**params.scale_bits
    ctx.generate_galois_keys()
    return ctx


def public_context_bytes(ctx: ts.Context) -> bytes:
    """The evaluation context a server gets: every public key, no secret key."""
    public = ctx.copy()
    public.make_context_public()
    data = public.serialize(
        save_public_key=True, save_secret_key=False, save_galois_keys=True, save_relin_keys=True
    )
    return bytes(data)


def _chain(ctx: ts.Context) -> tuple[int, int, int]:
    """(poly modulus degree, total modulus bits, number of primes) of a context."""
    seal = ctx.seal_context().data
    key = seal.key_context_data()
    return (
        int(key.parms().poly_modulus_degree()),
        int(key.total_coeff_modulus_bit_count()),
        int(key.chain_index()) + 1,
    )


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def _seal_objects(message: bytes, depth: int = 0) -> Iterator[bytes]:
    """Every SEAL-serialized object (it starts with SEAL's header magic) in a protobuf
    message, found by walking its wire format: length-delimited fields that are not SEAL
    objects are walked as nested messages where they parse as such (TenSEAL's context is a
    message of messages of bytes fields)."""
    pos = 0
    while pos < len(message):
        tag, pos = _varint(message, pos)
        wire = tag & 7
        if wire == 0:
            _, pos = _varint(message, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            n, pos = _varint(message, pos)
            field = message[pos : pos + n]
            pos += n
            if len(field) >= _SEAL_HEADER.size and (
                _SEAL_HEADER.unpack_from(field)[0] == _SEAL_MAGIC
            ):
                yield field
            elif depth < 8:
                with contextlib.suppress(ValueError):  # a string or bytes field, not a message
                    yield from _seal_objects(field, depth + 1)
        else:
            raise ValueError(f"wire type {wire} is not used by TenSEAL's context")
        if pos > len(message):
            raise ValueError("truncated field")


def _expanded_size(obj: bytes, budget: int) -> int:
    """The size of one SEAL object once decompressed, reading at most `budget` + 1 bytes."""
    _, _, _, _, compr, _, _ = _SEAL_HEADER.unpack_from(obj)
    body = obj[_SEAL_HEADER.size :]
    if compr == _COMPR_NONE:
        return len(obj)
    chunk, total = 1 << 20, _SEAL_HEADER.size
    if compr == _COMPR_ZLIB:
        inflater = zlib.decompressobj()
        piece = inflater.decompress(body, chunk)
        while piece and total <= budget:
            total += len(piece)
            piece = inflater.decompress(inflater.unconsumed_tail, chunk)
        return total
    if compr == _COMPR_ZSTD:
        with zstandard.ZstdDecompressor().stream_reader(body) as reader:
            while total <= budget and (piece := reader.read(chunk)):
                total += len(piece)
        return total
    raise ValueError(f"SEAL compression mode {compr} is unknown")


def check_expanded_size(data: bytes, limit: int = MAX_EXPANDED_CONTEXT_BYTES) -> int:
    """The bytes `data`'s SEAL objects take once decompressed; `InvalidContext` above `limit`
    (checked while decompressing, before anything is deserialized)."""
    total = 0
    try:
        for obj in _seal_objects(data):
            total += _expanded_size(obj, limit - total)
            if total > limit:
                raise InvalidContext(
                    f"context expands to more than {limit} bytes once decompressed (its SEAL "
                    "objects are compressed on the wire); refused before deserializing"
                )
    except (ValueError, zlib.error, zstandard.ZstdError) as exc:
        raise InvalidContext(
            f"context does not deserialize ({type(exc).__name__}: {exc})"
        ) from None
    return total


def load_public_context(
    data: bytes,
    params: CKKSParams = DEFAULT_PARAMS,
    max_expanded_bytes: int = MAX_EXPANDED_CONTEXT_BYTES,
) -> ts.Context:
    """Deserialize and check a client's evaluation context (server side).

    Refuses, before deserializing, a context whose SEAL objects expand beyond
    `max_expanded_bytes` once decompressed; then a corrupt context, one that carries a secret
    key (the client would have leaked it: refusing makes that mistake loud), one without a
    public key or relinearization or Galois keys, and one made with other parameters than
    `params`.
    """
    check_expanded_size(data, max_expanded_bytes)
    try:
        ctx = ts.context_from(data)
    except Exception as exc:  # TenSEAL raises ValueError/RuntimeError from SEAL's loader
        raise InvalidContext(f"context does not deserialize ({type(exc).__name__})") from None
    if ctx.is_private() or ctx.has_secret_key():
        raise InvalidContext("context carries a secret key; send only the public context")
    if not ctx.has_public_key():
        raise InvalidContext("context lacks the public key (the server encrypts constants)")
    if not ctx.has_relin_keys() or not ctx.has_galois_keys():
        raise InvalidContext("context lacks relinearization or Galois keys needed for evaluation")
    want = (params.poly_modulus_degree, params.total_bits, len(params.coeff_mod_bit_sizes))
    got = _chain(ctx)
    if got != want or not ctx.seal_context().data.parameters_set():
        raise InvalidContext(
            f"context parameters (N, bits, primes) = {got}; this server evaluates {want} "
            f"({params.name})"
        )
    ctx.global_scale = 2.0**params.scale_bits
    return ctx
