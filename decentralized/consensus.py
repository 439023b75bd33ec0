"""Redundant execution on the mesh: each span of a request runs on k nodes and a majority decides.

`ConsensusChain` is the consensus counterpart of `decentralized.client.Chain`. For a request:

1. **Eligible nodes.** A node may serve span [s, e) only if the weight digest in its signed record
   equals the manifest's digest for [s, e) (its weight commitment), the client's reputation does
   not exclude it, and it is not banned for recent failures.
2. **Plan.** The cheapest chain of spans each served by at least k eligible nodes; for every span
   the client draws k of them with the OS's CSPRNG, so a node cannot predict whether, or with
   whom, it is being compared.
3. **Execute and decide.** Every replica of a span gets the same input, in parallel. Each reply
   carries the node's signed receipt (checked in `MeshClient.forward`). The outputs are compared
   at the span's calibrated tolerance (`verification.consensus.decide`); the majority's output
   goes on to the next span. Without a strict majority (e.g. k = 2 and the two disagree) the
   client escalates: it adds a fresh replica, up to `max_replicas`, and decides again.
4. **Convict.** A replica outside a strict majority is convicted at once: the client signs a
   verdict holding every receipt (and, with `evidence=True`, the input and the disputed outputs),
   the reputation excludes the node from this moment on, its session is ended and, for
   generation, a fresh node takes its place, rebuilt by replaying the span's inputs.
5. **Faults.** A replica that dies, stalls or sends an invalid reply is replaced the same way
   (and counted as a fault, not a conviction).

With `check_rate` < 1 only that fraction of requests is executed redundantly (drawn per
request); the others run on one random eligible node per span. Nodes cannot tell the two apart.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from decentralized import _wire
from decentralized.client import _FAILOVER_CODES, MeshClient
from decentralized.errors import MeshError, NoRoute
from decentralized.models import get_spec
from decentralized.routing import Hop, hop_cost, shortest_path
from decentralized.v1 import common_pb2
from verification.consensus import (
    Decision,
    Manifest,
    NoConsensus,
    Receipt,
    Reputation,
    Verdict,
    decide,
    sign_verdict,
)
from verification.consensus.verdict import WireTensor

logger = logging.getLogger(__name__)
_RNG = secrets.SystemRandom()
_EVIDENCE_MAX_BYTES = 8 * 1024 * 1024  # per tensor kept in a verdict; larger ones: digests only


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsensusOptions:
    """How a request is checked by redundant execution.

    Attributes:
        k: replicas per span (2 or more).
        max_replicas: replicas a span may escalate to when its replicas disagree.
        check_rate: fraction of requests executed redundantly, drawn per request.
        candidates: restrict the replicas to these node names (diagnostics, tests); empty = all.
        evidence: keep the input and the disputed outputs in conviction verdicts.
        manifest: the model publisher's manifest (JSON); None = build one from this machine's
            copy of the weights (cached; the client is then its own publisher).
        publisher_key: the pinned raw Ed25519 key of the manifest's publisher (required with
            `manifest`; a manifest signed by any other key is refused).
        verdict_log: append every signed verdict to this JSON-lines file.
    """

    k: int = 2
    max_replicas: int = 4
    check_rate: float = 1.0
    candidates: tuple[str, ...] = ()
    evidence: bool = True
    manifest: Path | None = None
    publisher_key: bytes | None = None
    verdict_log: Path | None = None

    def __post_init__(self) -> None:
        if self.k < 2:
            raise ValueError("consensus needs k >= 2 replicas per span")
        if self.max_replicas < self.k:
            raise ValueError("max_replicas must be >= k")
        if not 0.0 < self.check_rate <= 1.0:
            raise ValueError("check_rate must be in (0, 1]")
        if self.manifest is not None and self.publisher_key is None:
            raise ValueError("a published manifest needs publisher_key (the pinned Ed25519 key)")


@dataclass(slots=True)
class Replica:
    """One node running one span of the request."""

    hop: Hop
    session_id: str
    past: int = 0  # tokens this replica's cache holds
    calls: int = 0
    compute_s: float = 0.0
    agreed: int = 0


@dataclass(slots=True)
class SlotReport:
    start: int
    end: int
    tolerance: float
    replicas: list[str] = field(default_factory=list)  # names of those that answered
    decisions: int = 0
    escalations: int = 0
    max_agreeing_distance: float = 0.0  # largest distance inside a majority
    convicted: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Answer:
    output: torch.Tensor  # this step's rows of the reply
    receipt: Receipt
    sent: torch.Tensor  # exactly what was sent (history + step for a replica catching up)
    reply: torch.Tensor  # exactly what came back


@dataclass(slots=True)
class _Slot:
    start: int
    end: int
    tolerance: float
    replicas: list[Replica]
    report: SlotReport
    inputs: list[torch.Tensor] = field(default_factory=list)  # generation: span input per step


class ConsensusChain:
    """A request's route where every span runs on k nodes; see the module docstring."""

    def __init__(
        self,
        client: MeshClient,
        model: str,
        *,
        stateful: bool,
        manifest: Manifest,
        reputation: Reputation,
        options: ConsensusOptions,
        signing_key: Ed25519PrivateKey,
        on_verdict: Callable[[Verdict], None] | None = None,
    ) -> None:
        if manifest.model != model:
            raise ValueError(f"manifest is for {manifest.model}, not {model}")
        self.client = client
        self.model = model
        self.stateful = stateful
        self.manifest = manifest
        self.reputation = reputation
        self.options = options
        self.signing_key = signing_key
        self.on_verdict = on_verdict
        self.num_layers = get_spec(model).num_layers
        self.checked = _RNG.random() < options.check_rate
        self.k = options.k if self.checked else 1
        self.verdicts: list[Verdict] = []
        self.failovers: list[object] = []  # Chain's interface; faults are in the slot reports
        self.retired: list[Replica] = []  # replicas replaced or convicted, for the route
        self.refused: dict[str, str] = {}  # node name -> why it was not eligible at planning
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=options.max_replicas)
        self.slots = self._plan()

    # -- planning ------------------------------------------------------------------------------
    def _eligible(self, records: list[common_pb2.NodeRecord]) -> dict[tuple[int, int], list[Hop]]:
        banned = self.client.banned()
        by_span: dict[tuple[int, int], list[Hop]] = {}
        for rec in records:
            if self.options.candidates and rec.name not in self.options.candidates:
                continue
            why = self.reputation.excluded(rec.node_id)
            if why is None and rec.node_id in banned:
                why = "failed recently"
            for span in rec.spans:
                if span.model != self.model:
                    continue
                if why is None and span.weight_digest != self.manifest.span_digest(
                    span.start, span.end
                ):
                    self.refused[rec.name] = (
                        f"weight digest of [{span.start}, {span.end}) does not match the manifest"
                    )
                    continue
                if why is not None:
                    self.refused[rec.name] = why
                    continue
                hop = Hop.of(rec, span)
                by_span.setdefault((span.start, span.end), []).append(hop)
        return by_span

    def _plan(self, start: int = 0) -> list[_Slot]:
        for force in (False, True):
            records = self.client.refresh(force=force)
            by_span = self._eligible(records)
            edges: dict[int, list[tuple[float, int, tuple[int, int]]]] = {}
            costs = {r.node_id: r for r in records}
            for (s, e), hops in by_span.items():
                if s < start or len(hops) < self.k:
                    continue
                per_node = sorted(
                    hop_cost(costs[h.node_id], e - s, self.client.rtt(h.node_id)) for h in hops
                )
                edges.setdefault(s, []).append((per_node[self.k - 1], e, (s, e)))
            path = shortest_path(edges, start, self.num_layers)
            if path is not None:
                break
        else:
            served = {k: len(v) for k, v in by_span.items()}
            refused = "; ".join(f"{n}: {w}" for n, w in sorted(self.refused.items()))
            raise NoRoute(
                f"no chain of {self.model} spans with {self.k} eligible nodes each covers layers "
                f"[{start}, {self.num_layers}); eligible nodes per span: "
                f"{ {f'[{s}, {e})': c for (s, e), c in sorted(served.items())} or 'none' }"
                + (f"; refused: {refused}" if refused else "")
            )
        slots = []
        for s, e in path:
            hops = _RNG.sample(by_span[(s, e)], self.k)
            tol = self.manifest.tolerance(s, e).value
            replicas = [self._replica(h) for h in hops]
            slots.append(_Slot(s, e, tol, replicas, SlotReport(s, e, tol)))
        return slots

    def _replica(self, hop: Hop) -> Replica:
        return Replica(hop, secrets.token_urlsafe(18) if self.stateful else "")

    def _fresh_hop(self, slot: _Slot) -> Hop | None:
        """An eligible node for the slot's span that is not already one of its replicas."""
        in_use = {r.hop.node_id for r in slot.replicas}
        by_span = self._eligible(self.client.refresh())
        fresh = [h for h in by_span.get((slot.start, slot.end), []) if h.node_id not in in_use]
        return _RNG.choice(fresh) if fresh else None

    # -- execution -----------------------------------------------------------------------------
    def step(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Send (B, T, H) hidden states through every span; returns the agreed output."""
        spec = get_spec(self.model)
        _wire.check_hidden(hidden, spec.hidden_size)
        if attention_mask is not None:
            _wire.check_mask(attention_mask, hidden)
        x = hidden
        for slot in self.slots:
            x = self._run_slot(slot, x, attention_mask)
        return x

    def _call(
        self, slot: _Slot, rep: Replica, x: torch.Tensor, mask: torch.Tensor | None
    ) -> _Answer:
        """One replica's forward of this step; a replica that is behind (new, or replacing
        another) gets the span's whole history plus this step in one call."""
        step_tokens = x.shape[1]
        if self.stateful and rep.past < sum(i.shape[1] for i in slot.inputs):
            sent = torch.cat([*slot.inputs, x], dim=1)
            past = 0
        else:
            sent, past = x, rep.past
        y, compute_s, receipt = self.client.forward(
            rep.hop,
            self.model,
            sent,
            attention_mask=mask,
            session_id=rep.session_id,
            past_length=past,
            timeout_s=self.client.hop_timeout_s * max(1.0, sent.shape[1] / 256),
        )
        rep.calls += 1
        rep.compute_s += compute_s
        if self.stateful:
            rep.past = past + sent.shape[1]
        return _Answer(y[:, -step_tokens:], receipt, sent, y)

    def _run_slot(self, slot: _Slot, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # A node convicted earlier in this request (or by a concurrent one) is out at once.
        excluded = [
            i
            for i, r in enumerate(slot.replicas)
            if self.reputation.excluded(r.hop.node_id) is not None
        ]
        if excluded:
            self._drop(slot, excluded)
        if len(slot.replicas) < min(self.k, 2):
            raise NoRoute(
                f"{self.model} [{slot.start}, {slot.end}): {len(slot.replicas)} eligible "
                f"replica(s) left after exclusions; a checked span needs at least 2"
            )
        results: dict[int, _Answer] = {}
        pending = list(range(len(slot.replicas)))
        while True:
            futures = {
                i: self._pool.submit(self._call, slot, slot.replicas[i], x, mask) for i in pending
            }
            pending = []
            for i, fut in futures.items():
                try:
                    results[i] = fut.result()
                except MeshError as exc:
                    if exc.code not in _FAILOVER_CODES:
                        raise
                    pending.extend(self._replace_faulty(slot, i, exc))
            if pending:
                continue
            order = sorted(results)
            for i in order:
                if slot.replicas[i].hop.name not in slot.report.replicas:
                    slot.report.replicas.append(slot.replicas[i].hop.name)
            outputs = [results[i].output for i in order]
            decision = decide(outputs, slot.tolerance)
            slot.report.decisions += 1
            if decision.decided:
                break
            if len(slot.replicas) >= self.options.max_replicas:
                self._record_verdict(slot, order, results, decision, mask)
                raise NoConsensus(
                    f"{self.model} [{slot.start}, {slot.end}): {len(order)} replicas "
                    f"({', '.join(slot.replicas[i].hop.name for i in order)}) disagree beyond "
                    f"tolerance {slot.tolerance:.2e} and no node is left to escalate to"
                )
            hop = self._fresh_hop(slot)
            if hop is None:
                self._record_verdict(slot, order, results, decision, mask)
                raise NoConsensus(
                    f"{self.model} [{slot.start}, {slot.end}): replicas disagree beyond tolerance "
                    f"{slot.tolerance:.2e} and no other eligible node serves the span"
                )
            slot.replicas.append(self._replica(hop))
            slot.report.escalations += 1
            pending = [len(slot.replicas) - 1]
            logger.warning(
                "consensus: %s [%d, %d) undecided, escalating to %s",
                self.model,
                slot.start,
                slot.end,
                hop.name,
            )
        order = sorted(results)
        winner = order[decision.winner]  # type: ignore[index]
        agree = {order[j] for j in decision.agree}
        for i in agree:
            slot.replicas[i].agreed += 1
            self.reputation.agree(slot.replicas[i].hop.node_id)
            for j in agree:
                slot.report.max_agreeing_distance = max(
                    slot.report.max_agreeing_distance,
                    decision.distances[order.index(i)][order.index(j)],
                )
        deviants = [order[j] for j in decision.deviate]
        if deviants:
            verdict = self._record_verdict(slot, order, results, decision, mask)
            for i in deviants:
                rep = slot.replicas[i]
                self.reputation.convict(rep.hop.node_id, verdict.id)
                slot.report.convicted.append(rep.hop.name)
                logger.warning(
                    "consensus: convicted %s on %s [%d, %d) (verdict %s)",
                    rep.hop.name,
                    self.model,
                    slot.start,
                    slot.end,
                    verdict.id[:12],
                )
            self._drop(slot, deviants)
        if self.stateful:
            slot.inputs.append(x)
        return results[winner].output

    def _replace_faulty(self, slot: _Slot, i: int, exc: MeshError) -> list[int]:
        """A replica failed to answer: count the fault, put a fresh node in its place."""
        rep = slot.replicas[i]
        logger.warning(
            "consensus: %s failed on [%d, %d): %s", rep.hop.name, slot.start, slot.end, exc
        )
        self.reputation.fault(rep.hop.node_id)
        self.client.ban(rep.hop.node_id)
        slot.report.faults.append(f"{rep.hop.name}: {exc}")
        self._end(rep)
        self.retired.append(rep)
        hop = self._fresh_hop(slot)
        if hop is None:
            raise NoRoute(
                f"{rep.hop.name} failed on {self.model} [{slot.start}, {slot.end}) and no other "
                f"eligible node serves the span: {exc}"
            ) from None
        slot.replicas[i] = self._replica(hop)
        return [i]

    def _drop(self, slot: _Slot, indices: Sequence[int]) -> None:
        """Remove convicted replicas; refill the slot to k from eligible nodes if possible."""
        for i in sorted(indices, reverse=True):
            rep = slot.replicas.pop(i)
            self._end(rep)
            self.retired.append(rep)
        while len(slot.replicas) < self.k:
            hop = self._fresh_hop(slot)
            if hop is None:
                break  # the next step of this slot runs with the replicas left
            slot.replicas.append(self._replica(hop))

    def _end(self, rep: Replica) -> None:
        if rep.session_id:
            self.client.end_session(rep.hop, rep.session_id)

    def _record_verdict(
        self,
        slot: _Slot,
        order: list[int],
        results: dict[int, _Answer],
        decision: Decision,
        mask: torch.Tensor | None,
    ) -> Verdict:
        """Sign, keep and publish the verdict on one decision; with evidence, the sent inputs
        and the replies of the winner and of every deviating replica."""
        receipts = [results[i].receipt for i in order]
        evidence: dict[int, tuple[WireTensor, WireTensor]] = {}
        if self.options.evidence and decision.deviate:
            extra = _wire.proto_digest(_wire.tensor_to_proto(mask)) if mask is not None else b""
            keep = set(decision.deviate)
            if decision.winner is not None:
                keep.add(decision.winner)
            for j in sorted(keep):
                answer = results[order[j]]
                sent = _wire.tensor_to_proto(answer.sent)
                reply = _wire.tensor_to_proto(answer.reply)
                if len(sent.data) + len(reply.data) > _EVIDENCE_MAX_BYTES:
                    evidence.clear()  # too large to carry: the receipts' digests only
                    break
                evidence[j] = (
                    WireTensor(sent.dtype, tuple(sent.shape), sent.data, extra),
                    WireTensor(reply.dtype, tuple(reply.shape), reply.data),
                )
        verdict = sign_verdict(
            self.signing_key,
            model=self.model,
            start=slot.start,
            end=slot.end,
            epoch=self.reputation.epoch(),
            time_s=time.time(),
            receipts=receipts,
            decision=decision,
            step_tokens=results[order[0]].output.shape[1],
            evidence=evidence,
        )
        with self._lock:
            self.verdicts.append(verdict)
        if self.on_verdict is not None:
            self.on_verdict(verdict)
        return verdict

    # -- reporting -----------------------------------------------------------------------------
    def reports(self) -> list[SlotReport]:
        return [s.report for s in self.slots]

    def hop_states(self) -> list[Replica]:
        """Every replica that ran (or was asked to run) a span of this request."""
        return self.retired + [r for s in self.slots for r in s.replicas]

    @property
    def states(self) -> list[Replica]:
        return [r for s in self.slots for r in s.replicas]

    def close(self) -> None:
        for slot in self.slots:
            for rep in slot.replicas:
                self._end(rep)
        self._pool.shutdown(wait=False)
