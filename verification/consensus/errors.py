"""Errors of the consensus checks; each is raised, never returned as False.

ConsensusError
 +-- BadReceipt        a node's signed receipt does not verify or does not match the data
 +-- NoConsensus       no output of a span was agreed by a majority of its replicas
 +-- InvalidManifest   a model manifest is malformed or its signature does not verify
 +-- InvalidVerdict    a verdict is malformed, its signature or its evidence does not verify
"""

from __future__ import annotations


class ConsensusError(Exception):
    """Base class of the consensus errors."""


class BadReceipt(ConsensusError):
    """A receipt's signature, digests or fields do not match what was sent and received."""


class NoConsensus(ConsensusError):
    """The replicas of a span disagree and no majority exists (after any escalation)."""


class InvalidManifest(ConsensusError):
    """A manifest does not parse, misses fields, or its publisher signature does not verify."""


class InvalidVerdict(ConsensusError):
    """A verdict does not parse, its client signature or one of its receipts does not verify."""
