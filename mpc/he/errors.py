"""Errors of the CKKS engine. The mesh layer maps them to gRPC status codes.

Tree::

    HEError
    ├── DepthExceeded      the head needs more multiplications than the parameters allow
    ├── InvalidHead        a head file is missing, malformed, or inconsistent
    ├── InvalidContext     an evaluation context is corrupt, holds a secret key, lacks keys,
    │                      or was made with other parameters
    └── InvalidCiphertext  a ciphertext is corrupt, of the wrong size, level or scale

Messages say what was expected and what arrived; they never carry key or ciphertext bytes.
"""

from __future__ import annotations


class HEError(Exception):
    """Root of every error raised by `mpc.he`."""


class DepthExceeded(HEError):
    """The head's multiplicative depth exceeds what the CKKS parameters support."""


class InvalidHead(HEError):
    """A head's files are missing, malformed or inconsistent with each other."""


class InvalidContext(HEError):
    """A serialized TenSEAL context is unusable for evaluation by a server."""


class InvalidCiphertext(HEError):
    """A serialized CKKS vector cannot be evaluated by this head."""
