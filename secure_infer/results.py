"""Result objects the SDK returns: outputs plus the route, timings and a privacy statement."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from decentralized.mpc_client import RankReport as MPCParty  # one node of an MPC session


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


@dataclass(frozen=True, slots=True, kw_only=True)
class EmbedResult:
    model: str
    embeddings: np.ndarray  # (B, hidden) float32, unit L2 norm
    route: tuple[HopRecord, ...]  # split mode's hops; empty under MPC
    timings: dict[str, float]  # "total_s", "client_s", "network_s", "compute_s"
    privacy: Privacy
    failovers: tuple[Failover, ...] = ()
    mpc: MPCReport | None = None  # set for privacy="mpc"


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


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenEvent:
    """One streamed token; the last event of a stream carries the full result."""

    token_id: int
    text: str  # the text this token added (may be "" for partial UTF-8 or special tokens)
    index: int  # 0-based position in the completion
    route: tuple[str, ...] = ()  # names of the nodes in the chain when this token was made
    result: GenerateResult | None = field(default=None)
