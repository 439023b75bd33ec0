"""Redundant execution on the mesh: each span of a request runs on k nodes and a majority decides.

`ConsensusChain` is the consensus counterpart of `decentralized.client.Chain`. For a request:

1. **Eligible nodes.** A node may serve span [s, e) only if the manifest covers the span (inside
   the model, with a calibrated tolerance), the weight digest in its signed record equals the
   manifest's digest for [s, e) (its weight commitment), the client's reputation does not
   exclude its name, and its record has not failed recently. A record's span that fails one of
   these is refused (with the reason in the report) for that span only; it never fails the
   request.
2. **Plan.** The cheapest chain of spans each served by at least k eligible node *names*
   (certificate names: one operator's many keys count once); for every span the client draws k
   distinct names with the OS's CSPRNG, so a node cannot predict whether, or with whom, it is
   being compared.
3. **Execute and decide.** Every replica of a span gets the same input, in parallel. Each reply
   carries the node's signed receipt (checked in `MeshClient.forward`). The outputs are compared
   at the span's calibrated tolerance (`verification.consensus.decide`); the majority's output
   goes on to the next span. Without a strict majority (e.g. k = 2 and the two disagree) the
   client escalates: it adds a fresh replica, up to `max_replicas`, and decides again.
4. **Convict.** A replica outside a strict majority is convicted at once: the client signs a
   verdict holding every receipt (and, with `evidence=True`, every replica's input and output),
   the reputation excludes the node's name from this moment on, its session is ended and, for
   generation, a fresh node takes its place, rebuilt by replaying the span's inputs.
5. **Faults.** A replica whose call fails, whatever the gRPC status (it dies, stalls, refuses,
   or sends an invalid reply), is counted as a fault of its record (not a conviction) and
   replaced by a fresh node when there is one: another name, or another record of the same
   name (faults are per record: a stale record of a restarted node, or on an insecure-dev
   mesh a gossiped record claiming an honest name, must not shut that name out), at most
   `MeshClient.max_failovers` replacements per span and step.
   Whatever the faults, a span is decided only by a strict majority of the **planned** k
   replicas (more than k // 2 agreeing outputs): fewer answers, or a smaller majority among
   them, escalate to a fresh node when one is left and otherwise fail the request (`NoRoute`
   when too few answered, `NoConsensus` when too few agree), so two colluders cannot decide a
   span of k = 4 or 5 alone by having the others fail. One exception: when no replica of a
   step answered and at least two refused with one and the same status other than a transport
   failure (UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED), e.g. every node's INVALID_ARGUMENT for a
   prompt over its `max_tokens` (a limit the client does not know), the request fails with
   that error, its status and message, and none of those replicas is faulted or banned.

With `check_rate` < 1 only that fraction of requests is executed redundantly (drawn per
request); the others run on one random eligible node per span of the same kind of route: it is
planned over the same spans (those with k eligible names) at the same costs, so being on a route
does not tell a node whether the request is checked.
"""

from __future__ import annotations

import itertools
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
from decentralized.client import MeshClient, refusal_status, same_refusal
from decentralized.errors import MeshError, NoRoute
from decentralized.models import get_spec
from decentralized.routing import Hop, hop_cost, one_per_name, shortest_path, takes
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
_REPLICA_KEYS = itertools.count()


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsensusOptions:
    """How a request is checked by redundant execution.

    Attributes:
        k: replicas per span (2 or more).
        max_replicas: replicas a span may escalate to when its replicas disagree.
        check_rate: fraction of requests executed redundantly, drawn per request.
        candidates: restrict the replicas to these node names (diagnostics, tests); empty = all.
        evidence: keep, in verdicts that convict or leave a span undecided, every replica's
            input (as sent) and output (as returned), so that a third party can recompute the
            decision.
        evidence_max_bytes: the most bytes of one replica's evidence (its input plus its
            output) a verdict carries. A conviction verifies only with the evidence of every
            replica, so when one replica's is larger the verdict keeps none (digests only: it
            still counts in this client's reputation, but `verify_verdict` refuses it as
            unverifiable) and a warning is logged. None = no cap.
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
    evidence_max_bytes: int | None = 8 * 1024 * 1024
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
        if self.evidence_max_bytes is not None and self.evidence_max_bytes < 1:
            raise ValueError("evidence_max_bytes must be positive (or None: no cap)")
        if self.manifest is not None and self.publisher_key is None:
            raise ValueError("a published manifest needs publisher_key (the pinned Ed25519 key)")


@dataclass(slots=True)
class Replica:
    """One node running one span of the request."""

    hop: Hop
    session_id: str
    past: int = 0  # tokens this replica's cache holds
    key: int = field(default_factory=lambda: next(_REPLICA_KEYS))  # identifies it in a step
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
        tokens: int = 0,
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
        self.tokens = tokens  # the request's most tokens: nodes with a smaller limit are skipped
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
        """Eligible hops per span. A record's span the manifest does not cover (outside the
        model, no calibrated tolerance) or whose weight digest differs is refused, with the
        reason, for that span only; a name the reputation excludes, or a record recently
        failed, for every span."""
        banned = self.client.banned()
        by_span: dict[tuple[int, int], list[Hop]] = {}
        for rec in records:
            if self.options.candidates and rec.name not in self.options.candidates:
                continue
            why = self.reputation.excluded(rec.name, node_id=rec.node_id)
            if why is None and rec.node_id in banned:
                why = "failed recently"
            if why is None and not takes(rec, self.tokens):
                why = f"its token limit {rec.max_tokens} is below the request's {self.tokens}"
            for span in rec.spans:
                if span.model != self.model:
                    continue
                if why is not None:
                    self.refused[rec.name] = why
                    continue
                uncovered = self.manifest.uncovered(span.start, span.end)
                if uncovered is not None:
                    self.refused[rec.name] = uncovered
                    continue
                if span.weight_digest != self.manifest.span_digest(span.start, span.end):
                    self.refused[rec.name] = (
                        f"weight digest of [{span.start}, {span.end}) does not match the manifest"
                    )
                    continue
                by_span.setdefault((span.start, span.end), []).append(Hop.of(rec, span))
        return by_span

    def _plan(self, start: int = 0) -> list[_Slot]:
        # Checked or not, the route is planned the same way: over spans with at least
        # `options.k` eligible names, at the cost of the k-th cheapest of them. Only the number
        # of replicas drawn differs, so being on a route says nothing about being checked.
        need = self.options.k
        for force in (False, True):
            records = self.client.refresh(force=force)
            by_span = self._eligible(records)
            edges: dict[int, list[tuple[float, int, tuple[int, int]]]] = {}
            costs = {r.node_id: r for r in records}
            for (s, e), hops in by_span.items():
                names: dict[str, float] = {}
                for h in hops:
                    cost = hop_cost(costs[h.node_id], e - s, self.client.rtt(h.node_id))
                    names[h.name] = min(cost, names.get(h.name, cost))
                if s < start or len(names) < need:
                    continue
                edges.setdefault(s, []).append((sorted(names.values())[need - 1], e, (s, e)))
            path = shortest_path(edges, start, self.num_layers)
            if path is not None:
                break
        else:
            served = {k: len({h.name for h in v}) for k, v in by_span.items()}
            refused = "; ".join(f"{n}: {w}" for n, w in sorted(self.refused.items()))
            raise NoRoute(
                f"no chain of {self.model} spans with {need} eligible nodes each covers layers "
                f"[{start}, {self.num_layers}); eligible nodes per span: "
                f"{ {f'[{s}, {e})': c for (s, e), c in sorted(served.items())} or 'none' }"
                + (f"; refused: {refused}" if refused else "")
            )
        slots = []
        for s, e in path:
            hops = _RNG.sample(one_per_name(by_span[(s, e)], _RNG), self.k)
            tol = self.manifest.tolerance(s, e).value
            replicas = [self._replica(h) for h in hops]
            slots.append(_Slot(s, e, tol, replicas, SlotReport(s, e, tol)))
        return slots

    def _replica(self, hop: Hop) -> Replica:
        return Replica(hop, secrets.token_urlsafe(18) if self.stateful else "")

    def _fresh_hop(
        self, slot: _Slot, exclude_ids: set[str] | frozenset[str] = frozenset()
    ) -> Hop | None:
        """An eligible node for the slot's span whose name is not already one of its replicas'
        and whose record is not one of `exclude_ids` (those that failed in this step)."""
        in_use = {r.hop.name for r in slot.replicas}
        by_span = self._eligible(self.client.refresh())
        fresh = [
            h
            for h in by_span.get((slot.start, slot.end), [])
            if h.name not in in_use and h.node_id not in exclude_ids
        ]
        return _RNG.choice(one_per_name(fresh, _RNG)) if fresh else None

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
            if self.reputation.excluded(r.hop.name, node_id=r.hop.node_id) is not None
        ]
        if excluded:
            self._drop(slot, excluded)
        # A decision needs a strict majority of the replicas planned, whatever happens to
        # them: otherwise colluders could decide a span alone once the others failed.
        need = self.k // 2 + 1
        if len(slot.replicas) < need:
            raise NoRoute(
                f"{self.model} [{slot.start}, {slot.end}): {len(slot.replicas)} eligible "
                f"replica(s) left after exclusions; a decision needs {need} agreeing of the "
                f"{self.k} planned"
            )
        answers: dict[int, _Answer] = {}  # Replica.key -> its answer to this step
        failures: list[tuple[Replica, MeshError]] = []  # this step's, recorded as faults below
        excused: set[int] = set()  # indices into failures that are not the node's fault
        try:
            decision, order = self._decide_step(slot, x, mask, need, answers, failures, excused)
        finally:
            for i, (rep, exc) in enumerate(failures):
                if i not in excused:
                    self.reputation.fault(rep.hop.node_id)
                    self.client.ban(rep.hop.node_id)
                    slot.report.faults.append(f"{rep.hop.name}: {exc}")
        winner = order[decision.winner]  # type: ignore[index]
        agree = [order[j] for j in decision.agree]
        for i, rep in zip(decision.agree, agree, strict=True):
            rep.agreed += 1
            self.reputation.agree(rep.hop.name)
            for j in decision.agree:
                slot.report.max_agreeing_distance = max(
                    slot.report.max_agreeing_distance, decision.distances[i][j]
                )
        deviants = [order[j] for j in decision.deviate]
        if deviants:
            verdict = self._record_verdict(slot, order, answers, decision, mask)
            for rep in deviants:
                self.reputation.convict(rep.hop.name, verdict.id)
                slot.report.convicted.append(rep.hop.name)
                logger.warning(
                    "consensus: convicted %s on %s [%d, %d) (verdict %s)",
                    rep.hop.name,
                    self.model,
                    slot.start,
                    slot.end,
                    verdict.id[:12],
                )
            self._drop(slot, [slot.replicas.index(rep) for rep in deviants])
        if self.stateful:
            slot.inputs.append(x)
        return answers[winner.key].output

    def _decide_step(
        self,
        slot: _Slot,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        need: int,
        answers: dict[int, _Answer],
        failures: list[tuple[Replica, MeshError]],
        excused: set[int],
    ) -> tuple[Decision, list[Replica]]:
        """Call the slot's replicas (replacing failed ones, escalating when undecided) until
        `need` of them agree; returns the decision and the replicas in its order."""
        replaced = 0
        todo = list(slot.replicas)
        while True:
            futures = [(rep, self._pool.submit(self._call, slot, rep, x, mask)) for rep in todo]
            todo = []
            failed: list[tuple[Replica, MeshError]] = []
            for rep, fut in futures:
                try:
                    answers[rep.key] = fut.result()
                except MeshError as exc:
                    failed.append((rep, exc))
            failures.extend(failed)
            if not answers:
                refused = same_refusal([exc for _, exc in failures])
                if refused is not None:
                    # Every node that answered with a status refused this step the same way
                    # and none accepted it: the request (e.g. over the nodes' token limit) is
                    # the likely cause, not the nodes. Nobody is faulted for it.
                    excused.update(
                        i for i, (_, exc) in enumerate(failures) if refusal_status(exc) is not None
                    )
                    raise refused
            for rep, exc in failed:
                # Whatever the status, a replica that does not answer a request its peers are
                # sent too is at fault: it is replaced (bounded) or taken out of the slot.
                allow = replaced < self.client.max_failovers
                fresh = self._replace_faulty(
                    slot, rep, exc, {r.hop.node_id for r, _ in failures}, allow
                )
                if fresh is not None:
                    replaced += 1
                    todo.append(fresh)
            if todo:
                continue
            faults = "; ".join(f"{r.hop.name}: {e}" for r, e in failures)
            if len(slot.replicas) < need:
                raise NoRoute(
                    f"{self.model} [{slot.start}, {slot.end}): {len(slot.replicas)} replica(s) "
                    f"answered and no other eligible node serves the span"
                    + (f" (replacements capped at {replaced})" if replaced else "")
                    + f", so no decision is possible (it needs {need} agreeing of the "
                    f"{self.k} planned); faults: {faults}"
                )
            for rep in slot.replicas:
                if rep.hop.name not in slot.report.replicas:
                    slot.report.replicas.append(rep.hop.name)
            order = list(slot.replicas)
            outputs = [answers[r.key].output for r in order]
            decision = decide(outputs, slot.tolerance)
            slot.report.decisions += 1
            if decision.decided and len(decision.agree) >= need:
                return decision, order
            if decision.decided:
                why = (
                    f"only {len(decision.agree)} of {len(order)} answering replicas agree, and a "
                    f"decision needs {need} agreeing of the {self.k} planned; faults: {faults}"
                )
            else:
                why = f"{len(order)} replicas disagree beyond tolerance {slot.tolerance:.2e}"
            if len(slot.replicas) >= self.options.max_replicas:
                if not decision.decided:
                    self._record_verdict(slot, order, answers, decision, mask)
                raise NoConsensus(
                    f"{self.model} [{slot.start}, {slot.end}): {why} "
                    f"({', '.join(r.hop.name for r in order)}) and no node is left to escalate to"
                )
            hop = self._fresh_hop(slot, {r.hop.node_id for r, _ in failures})
            if hop is None:
                if not decision.decided:
                    self._record_verdict(slot, order, answers, decision, mask)
                raise NoConsensus(
                    f"{self.model} [{slot.start}, {slot.end}): {why} and no other eligible node "
                    f"serves the span"
                )
            fresh = self._replica(hop)
            slot.replicas.append(fresh)
            slot.report.escalations += 1
            todo = [fresh]
            logger.warning(
                "consensus: %s [%d, %d) undecided (%s), escalating to %s",
                self.model,
                slot.start,
                slot.end,
                why,
                hop.name,
            )

    def _replace_faulty(
        self,
        slot: _Slot,
        rep: Replica,
        exc: MeshError,
        failed_ids: set[str],
        allow: bool,
    ) -> Replica | None:
        """A replica failed to answer: put a fresh node in its place when there is one and
        `allow` (returned), else just take it out of the slot. The fresh node may carry the
        failed one's name (another record of it), never a record that failed in this step.
        The fault itself is recorded by `_run_slot` at the end of the step."""
        logger.warning(
            "consensus: %s failed on [%d, %d): %s", rep.hop.name, slot.start, slot.end, exc
        )
        self._end(rep)
        self.retired.append(rep)
        i = slot.replicas.index(rep)
        slot.replicas.pop(i)
        hop = self._fresh_hop(slot, failed_ids) if allow else None
        if hop is None:
            return None
        fresh = self._replica(hop)
        slot.replicas.insert(i, fresh)
        return fresh

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
        order: list[Replica],
        answers: dict[int, _Answer],
        decision: Decision,
        mask: torch.Tensor | None,
    ) -> Verdict:
        """Sign, keep and publish the verdict on one decision; with evidence, the inputs sent to
        and the replies of every replica, so that anybody can recompute the decision."""
        results = [answers[r.key] for r in order]
        receipts = [a.receipt for a in results]
        evidence: dict[int, tuple[WireTensor, WireTensor]] = {}
        if self.options.evidence and decision.deviate:
            extra = _wire.proto_digest(_wire.tensor_to_proto(mask)) if mask is not None else b""
            for j, answer in enumerate(results):
                sent = _wire.tensor_to_proto(answer.sent)
                reply = _wire.tensor_to_proto(answer.reply)
                cap = self.options.evidence_max_bytes
                if cap is not None and len(sent.data) + len(reply.data) > cap:
                    # A conviction verifies only with every replica's evidence: partial
                    # evidence would be dead weight. Digests only, and say so.
                    logger.warning(
                        "consensus: evidence of %s on [%d, %d) is %d bytes, over "
                        "evidence_max_bytes %d: this verdict carries digests only and will "
                        "not verify for anybody else",
                        order[j].hop.name,
                        slot.start,
                        slot.end,
                        len(sent.data) + len(reply.data),
                        cap,
                    )
                    evidence.clear()
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
            step_tokens=results[0].output.shape[1],
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
