"""Result objects the SDK returns: outputs plus the route, timings and a privacy statement."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from decentralized.mpc_client import MPCOutcome
from decentralized.mpc_client import RankReport as MPCParty  # one node of an MPC session
from verification.consensus import Verdict


@dataclass(frozen=True, slots=True, kw_only=True)
class HopRecord:
    """One forward call that contributed to a result."""

    node_id: str  # hex id derived from the node's Ed25519 key
    name: str  # the node's name (CN of its certificate)
    address: str  # where it was reached
    start: int  # first layer run (inclusive)
    end: int  # last layer run (exclusive)
    weight_digest: str  # SHA-256 of the span's weights, as the node advertised it
    compute_s: float  # compute time the node reported, summed over calls
    calls: int  # forward calls made to this node for this span


@dataclass(frozen=True, slots=True, kw_only=True)
class Privacy:
    """What each party could see, stated plainly. Split mode protects nothing cryptographically."""

    mode: str  # "split" or "mpc"
    channel: str  # "mTLS" or "INSECURE plaintext (--insecure-dev, loopback only)"
    client_keeps: str  # what never leaves the client
    node_views: tuple[str, ...]  # one line per node: what it saw
    caveats: tuple[str, ...]  # what the mode does not protect against

    def __str__(self) -> str:
        lines = [
            f"privacy mode: {self.mode} over {self.channel}",
            f"client keeps: {self.client_keeps}",
        ]
        lines += [f"  {v}" for v in self.node_views]
        lines += [f"caveat: {c}" for c in self.caveats]
        return "\n".join(lines)


@dataclass(frozen=True, slots=True, kw_only=True)
class Failover:
    """A node that failed during a request and what replaced it."""

    node_id: str  # the node that failed
    name: str
    start: int  # layer range it was serving in the route
    end: int
    reason: str  # status code and message
    rebuilt_tokens: int  # tokens of KV cache rebuilt on the replacement (0 for encoders)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsensusSpan:
    """One span of a consensus-checked request: who ran it and what was decided."""

    start: int
    end: int
    tolerance: float  # calibrated: the largest distance two honest replicas may have
    replicas: tuple[str, ...]  # nodes that answered (escalations and replacements included)
    decisions: int  # steps decided (1 per microbatch or generation step)
    escalations: int  # replicas added because the others disagreed without a majority
    max_agreeing_distance: float  # largest distance inside a majority (compare to tolerance)
    convicted: tuple[str, ...]  # replicas that deviated from a strict majority
    faults: tuple[str, ...]  # replicas that failed to answer and were replaced


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsensusReport:
    """How a `verify="consensus"` result was checked (docs/consensus.md)."""

    checked: bool  # False: this request was not drawn for redundant execution (check_rate)
    k: int  # replicas per span
    spans: tuple[ConsensusSpan, ...]
    verdicts: tuple[Verdict, ...]  # client-signed, with the nodes' receipts (and evidence)
    refused: dict[str, str]  # node name -> why it was not eligible (weights, reputation)
    manifest: str  # where the expected weight digests and tolerances came from
    threat_model: str = (
        "integrity by redundant execution: correct when the honest replicas of each span "
        "outnumber colluding ones that return the same wrong output; a deviation below the "
        "calibrated tolerance is accepted as rounding; nodes still see plaintext activations"
    )

    @property
    def convicted(self) -> tuple[str, ...]:
        return tuple(n for s in self.spans for n in s.convicted)


@dataclass(frozen=True, slots=True, kw_only=True)
class MPCReport:
    """How a `privacy="mpc"` result was computed, and under which trust assumptions."""

    threat_model: str  # "input_private" or "weights_private"
    parties: tuple[MPCParty, ...]  # party 0, party 1, dealer
    trusted_dealer: bool  # always True today: the dealer is ASSUMED honest, not verified
    bytes_total: int  # bytes sent by all ranks together
    rounds: int  # the most rounds any rank made
    seconds: float  # wall time of the session, client side
    failed_attempts: tuple[str, ...]  # sessions abandoned (and retried elsewhere) first
    output_check: str  # the garbage check the reconstructed output passed

    @classmethod
    def of(cls, outcome: MPCOutcome, threat_model: str, output_check: str) -> MPCReport:
        """The report of a finished session (`decentralized.mpc_client.MPCOutcome`)."""
        parties = outcome.ranks
        return cls(
            threat_model=threat_model,
            parties=parties,
            trusted_dealer=True,
            bytes_total=sum(p.bytes_sent for p in parties),
            rounds=max(p.rounds for p in parties),
            seconds=outcome.seconds,
            failed_attempts=outcome.failed_attempts,
            output_check=output_check,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class EmbedResult:
    model: str
    embeddings: np.ndarray  # (B, hidden) float32, unit L2 norm
    route: tuple[HopRecord, ...]  # split mode's hops; empty under MPC
    timings: dict[str, float]  # "total_s", "client_s", "network_s", "compute_s"
    privacy: Privacy
    failovers: tuple[Failover, ...] = ()
    mpc: MPCReport | None = None  # set for privacy="mpc"
    consensus: ConsensusReport | None = None  # set for verify="consensus"


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerateResult:
    model: str
    text: str  # decoded completion (special tokens removed)
    token_ids: tuple[int, ...]  # generated ids, including a final stop token if produced
    prompt_tokens: int
    route: tuple[HopRecord, ...]
    timings: dict[str, float]  # "total_s", "prefill_s", "decode_s", "tokens_per_s"
    privacy: Privacy
    failovers: tuple[Failover, ...] = ()
    finish_reason: str = "length"  # "stop" (stop token) or "length" (max_new_tokens)
    mpc: MPCReport | None = None  # set for privacy="mpc"
    consensus: ConsensusReport | None = None  # set for verify="consensus"


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenEvent:
    """One streamed token; the last event of a stream carries the full result."""

    token_id: int
    text: str  # the text this token added (may be "" for partial UTF-8 or special tokens)
    index: int  # 0-based position in the completion
    route: tuple[str, ...] = ()  # names of the nodes in the chain when this token was made
    result: GenerateResult | None = field(default=None)


@dataclass(frozen=True, slots=True, kw_only=True)
class QuoteSummary:
    """The attestation behind a `verify="fides"` result, after the client verified it."""

    platform: str  # "simulated", "sev-snp" or "tdx"
    simulated: bool  # True: INSECURE, the quote proves only that the protocol ran
    measurement: str  # hex code+model measurement of the enclave (the published verifier's)
    provider: str  # configfs-tsm provider, or "simulated"
    verifier_node: str  # name of the node that hosted the enclave
    key_pinning: str  # how the platform key / roots were pinned
    # "request": this quote was made for this request's nonce, input and output; "session":
    # it opened the attested session (tee.session) `session_age_s` ago, and this result's HMAC
    # under the session key (bound by that quote) was checked against this request's input
    attestation: str = "request"
    session_age_s: float | None = None
    # the enclave admitted this client by the enrolment its owner sealed with the verifier
    # (tee.enrolment: quoted in the session's offer); requests were MACed, answers encrypted
    enrolled: bool = False

    def __str__(self) -> str:
        tee = (
            "SIMULATED TEE (INSECURE: no hardware root of trust, protocol only)"
            if self.simulated
            else f"{self.platform} TEE ({self.provider})"
        )
        how = (
            f"session quote from {self.session_age_s:.0f} s ago + per-result HMAC"
            if self.attestation == "session"
            else "per-request quote"
        ) + ("; enrolled client (checked in the enclave)" if self.enrolled else "")
        return (
            f"{tee}; measurement {self.measurement[:16]}...; verifier node {self.verifier_node}; "
            f"{how}"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class FidesCheck:
    """Fides' verdict on one example of a verified classification."""

    service_label: int  # top-1 of the distribution the service node returned
    attacked: bool  # detector score > threshold
    # None under protocol "verdicts" (the enclave judges and reveals only the verdict):
    score: float | None  # detector logit
    threshold: float | None  # calibrated on clean traffic (the bundle's false-positive rate)
    verifier_label: int | None  # top-1 of the enclave's verification model
    reclassified_label: int | None  # the re-classifier's estimate of the honest class if attacked
    # True: escalated, i.e. checked against the service model's own recomputation in the
    # enclave (`attacked` = "differs from it"; `reclassified_label` = its top-1, exact), not
    # by the detector. None under protocol "verdicts" (the enclave does not say).
    exact: bool | None = None

    @property
    def label(self) -> int:
        """The label to use: the re-classified one when an attack was flagged."""
        return (
            self.reclassified_label if self.reclassified_label is not None else self.service_label
        )


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class ClassificationResult:
    """A plaintext classification through the mesh, optionally checked by Fides."""

    model: str
    probs: np.ndarray  # (N, C) float32, the service node's distribution as returned
    predictions: np.ndarray  # (N,) int64 argmax of `probs`
    labels: tuple[str, ...]  # label name of each prediction
    node_id: str  # service node that answered
    node_name: str
    model_digest: str  # what the service node says it ran (a claim, not verified)
    timings: dict[str, float]  # "total_s", "service_s", and with Fides "verifier_s", "check_s"
    privacy: Privacy
    verify: str | None = None  # "fides" or None
    checks: tuple[FidesCheck, ...] = ()  # one per example under verify="fides"
    verifier_probs: np.ndarray | None = None  # (N, C) the enclave's attested distribution
    # (rows, (k, C) distributions): the enclave's recomputation of the service model on the
    # escalated rows (`FidesCheck.exact`), when the verifier escalates (protocol "distribution")
    recomputed: tuple[np.ndarray, np.ndarray] | None = None
    quote: QuoteSummary | None = None
    threat_model: str = ""

    @property
    def simulated(self) -> bool:
        """True when the verification's TEE was SIMULATED (insecure)."""
        return self.quote is not None and self.quote.simulated

    def __repr__(self) -> str:
        parts = [f"model={self.model!r}", f"n={len(self.predictions)}", f"node={self.node_name}"]
        if self.verify:
            flagged = sum(c.attacked for c in self.checks)
            parts += [f"verify={self.verify!r}", f"flagged={flagged}/{len(self.checks)}"]
            exact = sum(bool(c.exact) for c in self.checks)
            if exact:
                parts.append(f"exact={exact}")
        if self.quote is not None:
            parts.append(
                "tee=SIMULATED(INSECURE)" if self.simulated else f"tee={self.quote.platform}"
            )
        return f"ClassificationResult({', '.join(parts)})"


@dataclass(frozen=True, slots=True, kw_only=True)
class MPCClassificationResult:
    """An image classification under MPC (`classify(..., privacy="mpc")`)."""

    model: str
    logits: np.ndarray  # (N, C) float64, reconstructed on the client from the parties' shares
    probs: np.ndarray  # (N, C) float32 softmax of `logits`, computed on the client
    predictions: np.ndarray  # (N,) int64 argmax
    architecture: tuple[str, ...]  # per block: attention kind of each head | MLP kind (public)
    model_digest: str  # SHA-256 of the checkpoint, as the nodes describe it (a claim)
    timings: dict[str, float]  # "total_s", "client_s", "mesh_s"
    privacy: Privacy
    mpc: MPCReport
