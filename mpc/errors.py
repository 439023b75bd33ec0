"""Exceptions raised by the `mpc` package, all rooted at `MPCError`.

    MPCError
    +-- InsecureRandomness       a draw would come from a source that is not a CSPRNG
    +-- PRGExhausted             a generator reached its per-key output limit
    +-- InvalidPRGArgument       bad seed, shape or bit width (also a ValueError)
    +-- PartyFailed              a party process raised or died (`mpc.launch`)
    +-- PartyTimeout             the parties did not finish in time (also a TimeoutError)

Messages say what was expected and what arrived; they never contain seeds, keys or shares.
"""

from __future__ import annotations

__all__ = [
    "GarbageOutput",
    "InsecureRandomness",
    "InvalidPRGArgument",
    "MPCError",
    "PRGExhausted",
    "PartyFailed",
    "PartyTimeout",
]


class MPCError(Exception):
    """Root of every error the `mpc` package raises on purpose."""


class InsecureRandomness(MPCError):
    """A random draw would come from a non-cryptographic source (e.g. a `torch.Generator`)."""


class PRGExhausted(MPCError):
    """A generator produced as many blocks as one key may safely produce; reseed."""


class InvalidPRGArgument(MPCError, ValueError):
    """A seed, shape or bit width given to the CSPRNG is malformed."""


class GarbageOutput(MPCError):
    """A revealed output is out of the range the model can produce (non-finite or too large).

    The secure models check every output against a bound derived from the weights (e.g. a
    LayerNorm's output cannot exceed max|gamma| * sqrt(C) + max|beta|); a value beyond it means
    the computation overflowed the ring and the output must not be used.
    """


class PartyFailed(MPCError):
    """A party process raised an exception or exited without returning a result.

    Attributes:
        rank: The failing party's rank (the TTP server's rank is `world_size`).
    """

    def __init__(self, message: str, *, rank: int) -> None:
        super().__init__(message)
        self.rank = rank


class PartyTimeout(MPCError, TimeoutError):
    """The parties did not all finish before the deadline; every child was killed."""
