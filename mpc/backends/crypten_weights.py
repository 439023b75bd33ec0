"""Secret weight matrices whose Beaver mask is opened once per session, not once per product.

Why: CrypTen multiplies two secrets with a fresh Beaver triple (a, b, ab) and opens both
x - a and W - b. For a secret weight W (PUMA's threat model, where the model owner
secret-shares the weights) that opens a weight-sized tensor on every forward: all-MiniLM-L6-v2
opens 10.6 M ring elements (about 170 MB between two parties) per forward, SmolLM2-135M about
135 M per generated token, while the activation side is a few thousand.

The protocol (the standard fixed-mask preprocessing of a reused operand, as SecureML does for
its data matrix):

    Setup, once per weight:
      1. The dealer (the TTP) deals additive shares of a uniform mask B shaped like W and keeps
         B (it already knows every triple it deals).
      2. The parties open F = W - B. B is uniform and used for nothing else, so F is uniform
         whatever W is: it reveals nothing about W.
    Each product x W (x secret, any leading shape):
      3. The dealer deals shares of a fresh uniform A shaped like x and of C = A B.
      4. The parties open E = x - A (uniform: reveals nothing about x) and compute their shares
         of x W = (E + A)(F + B) = C + E [B] + [A] F + E F, with E F added by party 0 only.

    Each product opens only the activation-sized E and takes an output-sized C from the dealer;
    the weight-sized opening happens once, at setup, like the sharing of W itself.

Trust: the same as CrypTen's TTP: the dealer is trusted (an assumption, stated in every secure
model's threat model); it knows B and every A, so a dealer colluding with either party learns
W and x. Against the two parties alone, each sees only uniform openings (F once, a fresh E per
product) and uniform shares: reusing B across products is safe because every product masks x
with a fresh A and F is opened once.

Cost per product x (n, k) times W (k, m): n k ring elements each way between the parties and
n m from the dealer to party 0 (party 1 draws its shares of A and C from the generator it
shares with the dealer); two local ring matmuls a party. Setup: k m elements each way, once.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from types import ModuleType
from typing import Any

import torch

from mpc.errors import MPCError

MASK_FUNCTION = "fixed_mask"
PRODUCT_FUNCTION = "fixed_mask_matmul"
_MASKS = "_secure_infer_fixed_masks"


class UnknownMask(MPCError):
    """A product names a weight mask the dealer does not hold (a different session or dealer)."""


def _server_fixed_mask(self: Any, size: Any) -> torch.Tensor:
    """Dealer side: draw the mask B from every party's generator, keep it, return its handle."""
    mask = self._get_additive_PRSS(size)
    masks = self.__dict__.setdefault(_MASKS, [])
    masks.append(mask)
    return torch.tensor([len(masks) - 1], dtype=torch.long)


def _server_fixed_mask_matmul(self: Any, size: Any, handle: int) -> torch.Tensor:
    """Dealer side: a fresh A shaped `size`, and party 0's share of C = A B[handle]."""
    masks = self.__dict__.get(_MASKS, [])
    if not 0 <= int(handle) < len(masks):
        raise UnknownMask(f"the dealer holds no weight mask {handle}")
    a = self._get_additive_PRSS(size)
    c = torch.matmul(a, masks[int(handle)])
    return c - self._get_additive_PRSS(c.size(), remove_rank=True)


def install(crypten: ModuleType) -> None:
    """Teach CrypTen's TTP server the two dealer functions of this module."""
    server = crypten.mpc.provider.ttp_provider.TTPServer
    server.fixed_mask = _server_fixed_mask
    server.fixed_mask_matmul = _server_fixed_mask_matmul


def _draw(crypten: ModuleType, size: torch.Size, device: object) -> torch.Tensor:
    ttp = crypten.mpc.provider.ttp_provider
    generator = ttp.TTPClient.get().get_generator(device=device)
    return ttp.generate_random_ring_element(size, generator=generator, device=device)


class MaskedWeight:
    """A secret weight matrix W (k, m) prepared for products x W with its mask opened once.

    Build it on every party, in the same order, from the `MPCTensor` that shares W; then
    `x_times(x)` on every party gives shares of x W at x's fixed-point precision.
    Two or more parties with CrypTen's TTP provider (the dealer); anything else raises.
    """

    def __init__(self, weight: Any) -> None:
        from mpc.backends.crypten import load

        crypten = load()
        if crypten.mpc.get_default_provider().NAME != "TTP":
            raise MPCError("a masked weight needs the TTP provider (the dealer)")
        if weight.dim() != 2:
            raise ValueError(f"a masked weight is a matrix, got shape {tuple(weight.size())}")
        self._crypten = crypten
        comm = crypten.communicator.get()
        self._rank = comm.get_rank()
        share = weight._tensor.share
        self.shape = tuple(share.shape)
        self.encoder = weight.encoder
        b = _draw(crypten, share.size(), share.device)  # this party's share of B
        self.handle = -1
        if self._rank == 0:
            reply = crypten.mpc.provider.ttp_provider.TTPClient.get().ttp_request(
                MASK_FUNCTION, share.device, tuple(share.size())
            )
            self.handle = int(reply[0])
        f = comm.all_reduce(share - b)  # F = W - B, public and uniform
        # Party i's share of x W is C_i + E (B_i + [i = 0] F) + A_i F.
        self._f = f
        self._e_factor = b + f if self._rank == 0 else b

    def x_times(self, x: Any) -> Any:
        """Shares of x W for a secret `MPCTensor` x (..., k), at the precision CrypTen's own
        product would have: x's when both are fixed point (one exact truncation), the other's
        when one of them is a secret integer (e.g. a one-hot row selector: exact, none)."""
        crypten = self._crypten
        share = x._tensor.share
        if share.size(-1) != self.shape[0]:
            raise ValueError(f"x (..., {share.size(-1)}) does not match W {self.shape}")
        a = _draw(crypten, share.size(), share.device)
        out_size = torch.Size([*share.shape[:-1], self.shape[1]])
        if self._rank == 0:
            c = crypten.mpc.provider.ttp_provider.TTPClient.get().ttp_request(
                PRODUCT_FUNCTION, share.device, tuple(share.size()), self.handle
            )
        else:
            c = _draw(crypten, out_size, share.device)
        e = crypten.communicator.get().all_reduce(share - a)  # E = x - A, public, uniform
        product = c + e.matmul(self._e_factor) + a.matmul(self._f)
        result = crypten.mpc.MPCTensor.from_shares(product, precision=0)
        if x.encoder.scale > 1 and self.encoder.scale > 1:
            # The product carries both precisions; one exact truncation brings it to x's.
            result._tensor.div_(int(self.encoder.scale))
            result.encoder = x.encoder
        else:
            result.encoder = x.encoder if x.encoder.scale > 1 else self.encoder
        return result


def matmul(x: Any, weight: Any) -> Any:
    """x W for a secret x and a weight that is public, secret, or a `MaskedWeight`."""
    if isinstance(weight, MaskedWeight):
        return weight.x_times(x)
    return x.matmul(weight)


def share_matrix(weight: Any) -> Any:
    """A secret weight matrix as a `MaskedWeight` when the dealer is CrypTen's TTP (the
    provider that can keep a mask); unchanged with any other provider (e.g. one process)."""
    from mpc.backends.crypten import load

    if load().mpc.get_default_provider().NAME == "TTP":
        return MaskedWeight(weight)
    return weight


def share_weights(
    values: Mapping[str, torch.Tensor], matrices: Collection[str], owner: int
) -> dict[str, Any]:
    """Secret-share every weight of `values` from rank `owner`, in order (every party calls it
    with tensors of the same shapes); the ones named in `matrices` become `share_matrix`es."""
    from mpc.backends.crypten import load

    crypten = load()
    out: dict[str, Any] = {}
    for name, value in values.items():
        shared = crypten.cryptensor(value, src=owner)
        out[name] = share_matrix(shared) if name in matrices else shared
    return out
