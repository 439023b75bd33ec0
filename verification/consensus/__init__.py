"""Consensus checks: redundant execution of a span on k nodes, compared within a calibrated
tolerance, decided by majority, with signed receipts, signed verdicts and per-epoch reputation.

Threat model (also in docs/threat-model.md): nodes may return anything (wrong weights, noise,
zeros, stale or replayed outputs) or stop answering. The client picks the k replicas of each
span at random among eligible nodes, so a node cannot tell a checked request from an unchecked
one. The decision is correct when the honest replicas of a span outnumber the colluding ones
that return the *same* wrong output; a deviation smaller than the calibrated tolerance (honest
floating-point differences across hardware, times a margin) is indistinguishable from honest
rounding and is accepted. Nodes see the plaintext activations of the spans they run, as in split
inference: consensus adds integrity, not privacy.

Modules:
    digests: canonical tensor digests and span weight digests built from per-layer digests.
    receipts: a node's Ed25519-signed statement "for this input I returned this output".
    compare: the distance between two outputs, tolerance calibration, the majority decision.
    manifest: a model publisher's signed list of per-layer weight digests and span tolerances.
    reputation: per-epoch exclusion of convicted nodes, effective immediately.
    verdict: the client's signed record of one decision, with the receipts as evidence.

No gRPC, no `decentralized`: the mesh wiring is `decentralized/consensus.py`.
"""

from verification.consensus.compare import Decision, Tolerance, decide, decide_distances, distance
from verification.consensus.digests import layer_set_digest, span_digest, tensor_digest
from verification.consensus.errors import (
    BadReceipt,
    ConsensusError,
    InvalidManifest,
    InvalidVerdict,
    NoConsensus,
)
from verification.consensus.manifest import Manifest, SpanTolerance
from verification.consensus.receipts import Receipt, node_id_of, receipt_message
from verification.consensus.reputation import Reputation
from verification.consensus.verdict import Verdict, sign_verdict, verify_verdict

__all__ = [
    "BadReceipt",
    "ConsensusError",
    "Decision",
    "InvalidManifest",
    "InvalidVerdict",
    "Manifest",
    "NoConsensus",
    "Receipt",
    "Reputation",
    "SpanTolerance",
    "Tolerance",
    "Verdict",
    "decide",
    "decide_distances",
    "distance",
    "layer_set_digest",
    "node_id_of",
    "receipt_message",
    "sign_verdict",
    "span_digest",
    "tensor_digest",
    "verify_verdict",
]
