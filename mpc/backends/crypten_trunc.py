"""Exact two-party truncation with a dealer-made truncation pair (replaces CrypTen's local one).

Why: with two parties CrypTen divides a fixed-point share by a public integer locally (each party
divides its own share, SecureML-style). When the two shares wrap around the ring, the result is
off by about 2^64 / y: a silent error of ~2^48 at 16 fractional bits. The chance is about
|x| / 2^63 per element and per truncation, so a transformer forward that truncates tens of
millions of elements returns garbage every few dozen runs with no error.

The protocol (a dealer-assisted variant of the "truncation pair" of ABY3 / Escudero et al. that
also deals the top bit of the mask, which makes it exact for every x that fits the ring):

    Dealer (the TTP, trusted, sees no data): draws a uniform r in Z_2^64 and deals additive
    shares of r, of r_q = floor(r / y) (r read unsigned) and of b = msb(r) (as 0/1 in the ring).

    Parties, holding shares of x with |x| < 2^62:
      1. x' = x + 2^62, so 0 <= x' < 2^63 (party 0 adds the constant).
      2. z = x' + r mod 2^64 is opened to both parties. z is uniform whatever x is (perfect
         hiding): one round, one ring element each way per element.
      3. Whether x' + r wrapped is decided exactly: if z >= 2^63 it cannot have wrapped (a wrap
         leaves z < x' < 2^63); if z < 2^63 it wrapped exactly when r >= 2^63, i.e. b = 1
         (without a wrap r <= z < 2^63; with one r >= 2^64 - x' > 2^63). So
         wrap = [z < 2^63] * b, a public bit times a shared bit: linear, no interaction.
      4. floor(x' / y) = floor(z / y) - r_q + wrap * floor(2^64 / y) + e, with e in {-2..0}
         for a general y and e in {-1, 0} for y a power of two (the borrow of the low bits and,
         for y not a power of two, the fraction of 2^64 / y). Subtracting floor(2^62 / y)
         gives x / y within 2 units in the last place (1 for powers of two; CrypTen's own
         local truncation has the same last-place error when it does not wrap).

There are no wrap-around errors left: the result is within 2 ulp for every |x| < 2^62 in ring
units, i.e. every value below 2^46 at 16 fractional bits times 2^16. A value that does not fit
the ring is an overflow of the computation itself, which the output checks of the secure
models catch.

Cost per truncated element: one opened ring element each way between the parties (the local
protocol had none) and, from the dealer, two ring elements to party 0 (party 1 draws its three
shares from the generator it shares with the dealer). With dealer batching
(`mpc.backends.crypten_dealer`) the dealer part is preprocessing; the opening adds one round
per truncation to the online phase.

Trust: the dealer knows r, so a dealer that colludes with either party learns x. This is the
trust model CrypTen's TTP already has (it knows every Beaver triple); it is stated in the
threat model of every secure model.

Scope: with more than two parties CrypTen runs its own truncation protocol, and with a provider
other than the TTP (CrypTen's insecure "trusted first party" simulation) the local truncation
is left as it is; `exact_truncation_active()` tells which one runs.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import torch

SHIFT_BITS = 62  # x' = x + 2^62 must lie in [0, 2^63): |x| < 2^62 in ring units
DEALER_FUNCTION = "trunc_pair"
_MARK = "_secure_infer_exact_trunc"


def _unsigned_floordiv(values: torch.Tensor, divisor: int) -> torch.Tensor:
    """floor(v / divisor) with v read as an unsigned 64-bit integer, returned as int64."""
    if divisor & (divisor - 1) == 0:  # a power of two: a logical shift
        shift = divisor.bit_length() - 1
        if shift == 0:
            return values.clone()
        return (values >> shift) & ((1 << (64 - shift)) - 1)
    unsigned = values.cpu().numpy().view(np.uint64)
    quotient = (unsigned // np.uint64(divisor)).view(np.int64)
    return torch.from_numpy(quotient).to(values.device)


def _msb(values: torch.Tensor) -> torch.Tensor:
    """The top bit of each ring element, as a 0/1 int64 tensor."""
    return (values < 0).long()


def _check_divisor(divisor: object) -> int:
    if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < 1:
        raise ValueError(f"truncation divisor must be a positive int, got {divisor!r}")
    if divisor >= 2**SHIFT_BITS:
        raise ValueError(f"truncation divisor {divisor} is too large for the ring")
    return divisor


def _server_trunc_pair(self: Any, size: Any, divisor: int) -> torch.Tensor:
    """Dealer side: party 0's shares of (floor(r / y), msb(r)), stacked as shape (2, *size).

    r is the sum of every party's generator draw, so each party already holds its share of r;
    the other parties then draw their shares of floor(r / y) and msb(r) from the same
    generators, in that order.
    """
    divisor = _check_divisor(divisor)
    r = self._get_additive_PRSS(size)
    quotient = _unsigned_floordiv(r, divisor) - self._get_additive_PRSS(size, remove_rank=True)
    top = _msb(r) - self._get_additive_PRSS(size, remove_rank=True)
    return torch.stack([quotient, top])


def _provider_trunc_pair(
    crypten: ModuleType, size: torch.Size, divisor: int, device: object
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A party's shares of (r, floor(r / y), msb(r)) as raw int64 tensors."""
    ttp = crypten.mpc.provider.ttp_provider
    client = ttp.TTPClient.get()
    generator = client.get_generator(device=device)
    r = ttp.generate_random_ring_element(size, generator=generator, device=device)
    if crypten.communicator.get().get_rank() == 0:
        pair = client.ttp_request(DEALER_FUNCTION, device, tuple(size), divisor)
        return r, pair[0], pair[1]
    quotient = ttp.generate_random_ring_element(size, generator=generator, device=device)
    top = ttp.generate_random_ring_element(size, generator=generator, device=device)
    return r, quotient, top


def truncate_shares(crypten: ModuleType, share: torch.Tensor, divisor: int) -> torch.Tensor:
    """This party's share of x / divisor, from its share of x (two parties, TTP provider).

    Every party calls it with its own share; the call makes one opening (a round trip between
    the parties) and takes one truncation pair from the dealer.
    """
    divisor = _check_divisor(divisor)
    if divisor == 1:
        return share.clone()
    comm = crypten.communicator.get()
    rank = comm.get_rank()
    r, r_quotient, r_top = _provider_trunc_pair(crypten, share.size(), divisor, share.device)
    masked = share + r
    if rank == 0:
        masked = masked + (1 << SHIFT_BITS)
    z = comm.all_reduce(masked)  # x + 2^62 + r: uniform, reveals nothing about x
    wrapped = (z >= 0).long() * r_top  # [z < 2^63 unsigned] * msb(r): a public bit times a share
    result = wrapped * _ring_constant(2**64 // divisor) - r_quotient
    if rank == 0:
        result = result + _unsigned_floordiv(z, divisor) - ((1 << SHIFT_BITS) // divisor)
    return result


def _ring_constant(value: int) -> int:
    """value mod 2^64 as a signed int64 (torch's int64 arithmetic wraps mod 2^64)."""
    value %= 2**64
    return value - 2**64 if value >= 2**63 else value


def exact_truncation_active(crypten: ModuleType) -> bool:
    """True when divisions by public integers use the exact protocol of this module."""
    comm = crypten.communicator
    return (
        comm.is_initialized()
        and comm.get().get_world_size() == 2
        and crypten.mpc.get_default_provider().NAME == "TTP"
    )


def install(crypten: ModuleType) -> None:
    """Route two-party divisions by a public integer through `truncate_shares`."""
    arithmetic = crypten.mpc.primitives.arithmetic
    cls = arithmetic.ArithmeticSharedTensor
    if getattr(cls.div_, _MARK, False):
        return
    ttp = crypten.mpc.provider.ttp_provider
    ttp.TTPServer.trunc_pair = _server_trunc_pair
    original = cls.div_

    def div_(self: Any, y: Any) -> Any:
        if not exact_truncation_active(crypten) or not _is_public_integer(y):
            return original(self, y)  # a division by a secret or a fraction is not a truncation
        divisor = _public_int(y)
        if divisor is None:
            raise NotImplementedError(
                "exact truncation divides by one public integer; got an integer tensor with "
                "differing elements"
            )
        self.share = truncate_shares(crypten, self.share, divisor)
        return self

    setattr(div_, _MARK, True)
    cls.div_ = div_


def _is_public_integer(y: Any) -> bool:
    """Whether CrypTen's div_ would truncate by y (a public integer, scalar or tensor)."""
    if isinstance(y, bool):
        return False
    if isinstance(y, int) or (isinstance(y, float) and y.is_integer()):
        return True
    if torch.is_tensor(y):
        return not y.is_floating_point() or bool(y.frac().eq(0).all())
    return False


def _public_int(y: Any) -> int | None:
    """y as one Python int (a scalar, or a tensor whose elements are all equal), else None."""
    if isinstance(y, int | float):
        return int(y)
    flat = y.reshape(-1)
    if flat.numel() == 0 or not bool((flat == flat[0]).all()):
        return None
    return int(flat[0])
