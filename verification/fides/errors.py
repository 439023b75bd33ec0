"""Errors raised by Fides.

FidesError
 +-- InvalidInput (also a ValueError): inputs or service outputs of the wrong shape, dtype,
 |   range, or probabilities that are not finite or do not sum to one
 +-- ModelFormatError: a saved verifier directory that is missing files or does not match
     its JSON config
"""

from __future__ import annotations


class FidesError(Exception):
    """Base class of every error raised by `verification.fides`."""


class InvalidInput(FidesError, ValueError):
    """Inputs or service outputs handed to the verifier are malformed."""


class ModelFormatError(FidesError):
    """A saved Fides model directory is incomplete or inconsistent with its config."""
