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

from dataclasses import dataclass

import tenseal as ts

from mpc.he.errors import InvalidContext

_MAX_BITS_128 = {4096: 109, 8192: 218, 16384: 438, 32768: 881}  # HE standard, tc128


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


def load_public_context(data: bytes, params: CKKSParams = DEFAULT_PARAMS) -> ts.Context:
    """Deserialize and check a client's evaluation context (server side).

    Refuses a corrupt context, one that carries a secret key (the client would have leaked it:
    refusing makes that mistake loud), one without relinearization or Galois keys, and one made
    with other parameters than `params`.
    """
    try:
        ctx = ts.context_from(data)
    except Exception as exc:  # TenSEAL raises ValueError/RuntimeError from SEAL's loader
        raise InvalidContext(f"context does not deserialize ({type(exc).__name__})") from None
    if ctx.is_private() or ctx.has_secret_key():
        raise InvalidContext("context carries a secret key; send only the public context")
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
