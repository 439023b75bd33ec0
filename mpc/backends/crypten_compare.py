"""Dealer-assisted two-party comparison: [x < 0] from an opened masked value and a bit comparison.

Why: CrypTen computes every comparison (`_ltz`: ReLU, GeLU's pieces, softmax's max and exp
threshold) by converting the arithmetic shares to binary shares with a 64-bit carry-lookahead
adder (A2B, one AND of 64-bit words per level plus the generate word, each AND opening two
words per party) and converting the sign bit back (B2A): about 560 bytes per element by
CrypTen's own counter (party 0, dealer traffic included). At 128 tokens the comparisons of a
MiniLM forward (softmax's row max alone is ~11.7 M of them) were most of its bytes.

The protocol (masked opening plus a public-versus-shared "BitLT", as in the comparison
protocols of Damgard et al. and Nishide-Ohta, with the mask and all AND triples dealt), for
K = `COMPARE_BITS` (40):

    Dealer (the TTP, trusted, sees no data): draws a uniform r in Z_2^64 and deals additive
    shares of r and XOR shares of the bits r_0 .. r_K, packed 64 elements to a word.

    Parties, holding additive shares of x with |x| < 2^K (ring units):
      1. x' = x + 2^K, so 0 <= x' < 2^(K+1) and x < 0 exactly when bit K of x' is 0.
      2. z = x' + r mod 2^(K+1) is opened: each party sends its share of it, K+1 bits in
         ceil((K+1) / 8) whole bytes. z is uniform whatever x is (r mod 2^(K+1) is uniform):
         perfect hiding; the carry out of bit K of the two shares' sum tells a party nothing
         its own share and z do not (it is [own share > z]).
      3. x' = (z - r) mod 2^(K+1), so by the schoolbook subtraction
             bit_K(x') = z_K xor r_K xor [z mod 2^K < r mod 2^K],
         and [x < 0] = 1 xor bit_K(x').
      4. [c < s] for the public c = z mod 2^K and the XOR-shared s = r mod 2^K is a prefix tree
         over the K bit positions: leaves lt_i = s_i and not c_i, eq_i = not (s_i xor c_i)
         (local: c is public); a node of a higher block H and a lower block L is
         lt = lt_H xor (eq_H and lt_L), eq = eq_H and eq_L (the two terms of the OR are
         exclusive, so OR is XOR). ceil(log2 K) levels and 2K - 3 ANDs (K = 40: 6 levels, 77
         ANDs), each a dealt Beaver triple over GF(2) whose opening costs 2 bits per party;
         all bit planes are packed 64 elements a word.
      5. The XOR-shared result bit becomes an additive 0/1 share with a dealt random bit given
         both ways (CrypTen's B2A pair): open c = b xor rB (1 bit, packed), then
         [b] = c + [rB] - 2 c [rB].

Domain: exact for every |x| < 2^K ring units, i.e. |v| < 2^24 (16.7 million) at CrypTen's 16
fractional bits, with no probabilistic error. Outside it the sign is wrong: every comparison
in the secure models compares activations, scores or their differences, orders of magnitude
inside the domain (the largest, SmolLM2's first-token activations, stay below 2^13).

Cost per element and party, online: 6 bytes (z) + (2K - 3) * 2 bits + 1 bit = 25.4 bytes at
K = 40, in 8 rounds. From the dealer to party 0: the packed mask bits and the AND triples' c
shares (about 15 bytes) and the B2A pair's arithmetic share (8 bytes); party 1 draws its shares
from the generator it shares with the dealer. `tests/mpc/test_compare.py` measures it against
CrypTen's A2B comparison with CrypTen's own counter.

Trust: the dealer knows r and every triple: a dealer colluding with a party learns x. This is
the trust CrypTen's TTP already requires (stated in every secure model's threat model).

Scope: two parties with the TTP provider (`dealer_comparison_active`); otherwise CrypTen's own
comparison runs.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import torch

COMPARE_BITS = 40  # K: exact for |x| < 2^K ring units (2^24 at 16 fractional bits)
_OPEN_BYTES = (COMPARE_BITS + 1 + 7) // 8  # the opened z = K + 1 bits, in whole bytes
DEALER_FUNCTION = "cmp_mask"
_MARK = "_secure_infer_dealer_compare"
_ONES = -1  # all 64 bits set (int64)
_enabled = True


def set_enabled(enabled: bool) -> None:
    """Switch between this protocol and CrypTen's A2B comparison (benchmarks compare both)."""
    global _enabled
    _enabled = enabled


# -- bit planes: bit i of n elements packed into ceil(n / 64) int64 words ------------------------
# On the CPU the packing runs in numpy's packbits/unpackbits (a byte per bit, C loops): about
# 10x faster than the int64 shift-and-sum of the torch versions, which other devices use.
def pack(bits: torch.Tensor) -> torch.Tensor:
    """(..., n) 0/1 int64 -> (..., ceil(n / 64)) int64 words, element j at bit j % 64."""
    if bits.device.type == "cpu":
        return _pack_words(bits.numpy().astype(np.uint8, copy=False))
    n = bits.shape[-1]
    words = (n + 63) // 64
    padded = torch.nn.functional.pad(bits, (0, words * 64 - n))
    grouped = padded.reshape(*bits.shape[:-1], words, 64)
    shifts = torch.arange(64, dtype=torch.long, device=bits.device)
    return (grouped << shifts).sum(-1)  # distinct bits: the sum is an OR (wraps to int64)


def _pack_words(bits: np.ndarray) -> torch.Tensor:
    """(..., n) 0/1 uint8 -> (..., ceil(n / 64)) int64 words (little-endian bit order)."""
    n = bits.shape[-1]
    pad = (-n) % 64
    if pad:
        bits = np.concatenate([bits, np.zeros((*bits.shape[:-1], pad), np.uint8)], axis=-1)
    packed = np.packbits(bits, axis=-1, bitorder="little")  # (..., words * 8) bytes
    return torch.from_numpy(np.ascontiguousarray(packed).view(np.int64))


def unpack(words: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of `pack`: (..., w) int64 words -> (..., n) 0/1 int64."""
    if words.device.type == "cpu":
        return torch.from_numpy(_unpack_bytes(words, n).astype(np.int64))
    shifts = torch.arange(64, dtype=torch.long, device=words.device)
    bits = (words.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(*words.shape[:-1], -1)[..., :n]


def _unpack_bytes(words: torch.Tensor, n: int) -> np.ndarray:
    """(..., w) int64 words -> (..., n) 0/1 uint8 (CPU)."""
    raw = np.ascontiguousarray(words.numpy()).view(np.uint8)  # (..., w * 8)
    return np.unpackbits(raw, axis=-1, bitorder="little")[..., :n]


def bit_planes(values: torch.Tensor, count: int) -> torch.Tensor:
    """(n,) int64 -> (count, ceil(n / 64)) packed planes of bits 0 .. count-1."""
    if values.device.type == "cpu":
        n = values.shape[0]
        raw = np.ascontiguousarray(values.numpy()).view(np.uint8).reshape(n, 8)
        pad = (-n) % 64
        out = np.empty((count, (n + pad) // 8), np.uint8)
        column = np.zeros(n + pad, np.uint8)
        for byte in range((count + 7) // 8):
            column[:n] = raw[:, byte]  # bits 8 byte .. 8 byte + 7 of every element
            for bit in range(min(8, count - 8 * byte)):
                plane = (column >> bit) & 1
                out[8 * byte + bit] = np.packbits(plane, bitorder="little")
        return torch.from_numpy(out.view(np.int64))
    shifts = torch.arange(count, dtype=torch.long, device=values.device)
    return pack((values.unsqueeze(0) >> shifts.unsqueeze(1)) & 1)


# -- the dealer's side ---------------------------------------------------------------------------
def _server_cmp_mask(self: Any, n: int) -> torch.Tensor:
    """Dealer: party 0's XOR shares of the packed bit planes 0 .. K of r (shape (K + 1, w)).

    r is the sum of every party's generator draw of n ring elements (their additive shares);
    the other parties then draw their plane shares from the same generators.
    """
    r = self._get_additive_PRSS((n,))
    planes = bit_planes(r, COMPARE_BITS + 1)
    return planes ^ self._get_binary_PRSS(planes.shape, remove_rank=True)


def _mask(crypten: ModuleType, n: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """This party's (additive share of r (n,), XOR shares of r's bit planes (K + 1, w))."""
    ttp = crypten.mpc.provider.ttp_provider
    client = ttp.TTPClient.get()
    generator = client.get_generator(device=device)
    r = ttp.generate_random_ring_element((n,), generator=generator, device=device)
    if crypten.communicator.get().get_rank() == 0:
        return r, client.ttp_request(DEALER_FUNCTION, device, n)
    planes = ttp.generate_kbit_random_tensor(
        (COMPARE_BITS + 1, (n + 63) // 64), generator=generator, device=device
    )
    return r, planes


# -- the parties' side ---------------------------------------------------------------------------
def _and(crypten: ModuleType, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """XOR shares of x AND y (packed words), with one dealt Beaver triple over GF(2)."""
    from torch.distributed import ReduceOp

    comm = crypten.communicator.get()
    provider = crypten.mpc.get_default_provider()
    triple = provider.generate_binary_triple(x.size(), y.size(), device=x.device)
    a, b, c = (t.share for t in triple)
    opened = comm.all_reduce(torch.stack([x ^ a, y ^ b]), op=ReduceOp.BXOR)
    d, e = opened[0], opened[1]
    z = c ^ (d & b) ^ (e & a)
    if comm.get_rank() == 0:
        z = z ^ (d & e)
    return z


def _public_less_than_shared(
    crypten: ModuleType, c: torch.Tensor, s: torch.Tensor, rank: int
) -> torch.Tensor:
    """XOR shares of [c < s] per element; c: public planes, s: shared planes (bits, 0 = LSB)."""
    lt = s & ~c  # s_i and not c_i: c is public, so each party masks its own share
    eq = s.clone()
    if rank == 0:
        eq = eq ^ ~c  # not (s_i xor c_i): party 0 folds in the public part
    # Combine adjacent blocks (low = even index, high = odd index), carrying an odd top block.
    while lt.shape[0] > 1:
        pairs = lt.shape[0] // 2
        lo, hi = slice(0, 2 * pairs, 2), slice(1, 2 * pairs, 2)
        last = lt.shape[0] == 2
        if last:  # the root needs only lt = lt_H xor (eq_H and lt_L)
            prod = _and(crypten, eq[hi], lt[lo])
            new_lt, new_eq = lt[hi] ^ prod, eq[hi][:0]
        else:
            prod = _and(crypten, torch.cat([eq[hi], eq[hi]]), torch.cat([lt[lo], eq[lo]]))
            new_lt, new_eq = lt[hi] ^ prod[:pairs], prod[pairs:]
        if lt.shape[0] % 2:
            new_lt = torch.cat([new_lt, lt[-1:]])
            new_eq = torch.cat([new_eq, eq[-1:]])
        lt, eq = new_lt, new_eq
    return lt[0]


def _bit_to_arithmetic(crypten: ModuleType, bit_words: torch.Tensor, n: int) -> torch.Tensor:
    """Additive 0/1 shares (n,) from XOR shares of packed bits, with a dealt B2A pair."""
    from torch.distributed import ReduceOp

    comm = crypten.communicator.get()
    provider = crypten.mpc.get_default_provider()
    r_pair = provider.B2A_rng((n,), device=bit_words.device)
    r_arith, r_bit = r_pair[0].share, r_pair[1].share
    masked = comm.all_reduce(bit_words ^ pack(r_bit.long()), op=ReduceOp.BXOR)
    c = unpack(masked, n)
    share = r_arith - 2 * c * r_arith
    if comm.get_rank() == 0:
        share = share + c
    return share


def less_than_zero_shares(crypten: ModuleType, share: torch.Tensor) -> torch.Tensor:
    """This party's additive share of [x < 0] (0/1 in the ring), from its share of x."""
    comm = crypten.communicator.get()
    rank = comm.get_rank()
    shape = share.shape
    flat = share.reshape(-1)
    n = flat.numel()
    if n == 0:
        return torch.zeros_like(share)
    k = COMPARE_BITS
    r, r_planes = _mask(crypten, n, share.device)
    masked = flat + r
    if rank == 0:
        masked = masked + (1 << k)
    # Open z = x + 2^K + r mod 2^(K+1): each party sends its share's low K+1 bits, in whole
    # bytes (6 for K = 40: byte slicing costs the CPU ~10x less than bit planes each way).
    low = (1 << (k + 1)) - 1
    opened = comm.all_gather(_low_bytes(masked & low, _OPEN_BYTES))
    z = sum(_from_low_bytes(part, n) for part in opened) & low
    z_planes = bit_planes(z, k + 1)
    borrow = _public_less_than_shared(crypten, z_planes[:k], r_planes[:k], rank)
    negative = borrow ^ r_planes[k]  # r_K xor [c < s], each party's share
    if rank == 0:
        negative = negative ^ z_planes[k] ^ _ONES  # xor z_K xor 1 (public)
    return _bit_to_arithmetic(crypten, negative, n).reshape(shape)


def _low_bytes(values: torch.Tensor, count: int) -> torch.Tensor:
    """(n,) int64 in [0, 2^(8 count)) -> their low `count` bytes each (little-endian, the wire's
    order), packed into ceil(n count / 8) int64 words (CrypTen's gloo collectives move int64)."""
    raw = np.ascontiguousarray(values.cpu().numpy().astype("<i8", copy=False)).view(np.uint8)
    n = values.shape[0]
    packed = np.zeros(-(-n * count // 8) * 8, np.uint8)
    packed[: n * count].reshape(n, count)[:] = raw.reshape(n, 8)[:, :count]
    return torch.from_numpy(packed.view("<i8").astype(np.int64, copy=False)).to(values.device)


def _from_low_bytes(words: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of `_low_bytes(values, _OPEN_BYTES)` for n values."""
    if tuple(words.shape) != (-(-n * _OPEN_BYTES // 8),) or words.dtype != torch.int64:
        raise ValueError(f"{n} values of {_OPEN_BYTES} bytes: got words {tuple(words.shape)}")
    raw = np.ascontiguousarray(words.cpu().numpy().astype("<i8", copy=False)).view(np.uint8)
    out = np.zeros((n, 8), np.uint8)
    out[:, :_OPEN_BYTES] = raw[: n * _OPEN_BYTES].reshape(n, _OPEN_BYTES)
    return torch.from_numpy(out.view("<i8").astype(np.int64, copy=False).reshape(n)).to(
        words.device
    )


def dealer_comparison_active(crypten: ModuleType) -> bool:
    """True when comparisons use this module's protocol (two parties, the TTP provider)."""
    comm = crypten.communicator
    return (
        _enabled
        and comm.is_initialized()
        and comm.get().get_world_size() == 2
        and crypten.mpc.get_default_provider().NAME == "TTP"
    )


def install(crypten: ModuleType) -> None:
    """Route two-party `MPCTensor._ltz` through `less_than_zero_shares`."""
    mpc_cls = crypten.mpc.MPCTensor
    if getattr(mpc_cls._ltz, _MARK, False):
        return
    ttp = crypten.mpc.provider.ttp_provider
    ttp.TTPServer.cmp_mask = _server_cmp_mask
    original = mpc_cls._ltz
    encoder_cls = crypten.encoder.FixedPointEncoder
    arithmetic = crypten.mpc.arithmetic

    def _ltz(self: Any) -> Any:
        if not dealer_comparison_active(crypten) or self.ptype != arithmetic:
            return original(self)
        result = self.clone()
        result._tensor.share = less_than_zero_shares(crypten, self._tensor.share)
        # The encoder CrypTen's own _ltz leaves on its result (scale 1, same decode dtype).
        encoder = encoder_cls(precision_bits=0 if self.encoder.scale == 1 else None)
        encoder._scale = 1
        result._tensor.encoder = encoder
        return result

    setattr(_ltz, _MARK, True)
    mpc_cls._ltz = _ltz
