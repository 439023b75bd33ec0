"""The client's side of an MPC session on the mesh: pick the parties, share, run, reconstruct.

`run_secure_encoder` secret-shares the client's (B, T, C) embedding-layer output between two
party nodes, has a third node deal CrypTen's correlated randomness, and reconstructs the (B, C)
pooled output from the two parties' output shares. The input share of party 0 is a 16-byte
AES-CTR seed (it expands it itself); party 1 receives x - PRG(seed) as raw ring elements. No
single node ever holds anything but uniformly random shares.

Parties are drawn at random (`secrets.SystemRandom`) among the live nodes that list the model
in `mpc_models`, so a node cannot arrange to be paired with a colluder. When a session fails
(a party dies, stalls or misbehaves), the nodes that failed first are excluded and the session
is retried on a fresh set, up to `attempts` times.
"""

from __future__ import annotations

import math
import queue
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import grpc
import torch

from decentralized import _wire
from decentralized.client import MeshClient, error_from_rpc
from decentralized.errors import (
    InvalidRequest,
    MeshError,
    NoRoute,
    PeerMisbehaved,
    PeerUnavailable,
    SessionAborted,
)
from decentralized.models import get_spec
from decentralized.routing import one_per_name
from decentralized.v1 import common_pb2, mpc_pb2, mpc_pb2_grpc
from mpc.errors import GarbageOutput
from mpc.models import check_output
from mpc.prg import AESCTRGenerator

FRACTIONAL_BITS = 16  # CrypTen's fixed point
CHUNK_BYTES = 4 * 1024 * 1024
RANK_ROLES = ("party 0", "party 1", "dealer")
SILENCE_GRACE_S = 15.0  # past peer_timeout_s, after another rank failed: a rank is silent
OPEN_TIMEOUT_S = 150.0  # a node spawns the rank's process and binds its mailbox


@dataclass(frozen=True, slots=True, kw_only=True)
class MPCOptions:
    """How the client runs an MPC session.

    Attributes:
        threat_model: "input_private" (the parties know the public weights) or
            "weights_private" (PUMA's setting: party 0 owns the weights and secret-shares them).
        attempts: sessions tried before giving up; each retry draws a fresh set of nodes and
            excludes the nodes that failed (with `parties` set, it retries those nodes only).
        parties: node names, in rank order (party 0, party 1, dealer), e.g. nodes the client
            trusts not to collude: every attempt uses them, never other nodes (if one of them
            fails for good, the call fails); None draws three distinct certificate names at
            random.
        peer_timeout_s: how long a party waits for a silent peer before aborting the session.
        deadline_s: the longest a session may run.
    """

    threat_model: str = "input_private"
    attempts: int = 3
    parties: tuple[str, str, str] | None = None
    peer_timeout_s: float = 60.0
    deadline_s: float = 1800.0

    def __post_init__(self) -> None:
        if self.threat_model not in ("input_private", "weights_private"):
            raise InvalidRequest(
                "threat_model must be 'input_private' or 'weights_private', "
                f"got {self.threat_model!r}"
            )
        if self.attempts < 1:
            raise InvalidRequest("attempts must be >= 1")
        if self.parties is not None and (len(self.parties) != 3 or len(set(self.parties)) != 3):
            raise InvalidRequest("parties must name 3 distinct nodes: party 0, party 1, dealer")
        if not 1.0 <= self.peer_timeout_s <= 600.0:
            raise InvalidRequest("peer_timeout_s must be within [1, 600]")
        if self.deadline_s <= 0:
            raise InvalidRequest("deadline_s must be positive")


@dataclass(frozen=True, slots=True)
class RankReport:
    """What one node did for a session."""

    role: str
    name: str
    node_id: str
    address: str
    bytes_sent: int
    bytes_received: int
    rounds: int
    seconds: float
    # Party 0 only: its dealer requests served online (one blocking round trip each), the
    # round trips that fetched a preprocessed plan's values in chunks instead, and whether it
    # had one (its node ran a computation of the same public shapes before).
    dealer_online_requests: int = 0
    dealer_round_trips: int = 0
    dealer_preprocessed: bool = False

    @classmethod
    def of(cls, rank: int, node: common_pb2.NodeRecord, result: Any) -> RankReport:
        """The report of `rank` on `node` from its final RunResult / StepResult."""
        return cls(
            role=RANK_ROLES[rank],
            name=node.name,
            node_id=node.node_id,
            address=node.address,
            bytes_sent=result.bytes_sent,
            bytes_received=result.bytes_received,
            rounds=result.rounds,
            seconds=result.seconds,
            dealer_online_requests=result.dealer_online_requests,
            dealer_round_trips=result.dealer_round_trips,
            dealer_preprocessed=result.dealer_preprocessed,
        )


@dataclass(frozen=True, slots=True)
class MPCOutcome:
    """The reconstructed output and how it was computed."""

    output: torch.Tensor  # (B, C) float64, reconstructed and decoded
    output_bound: float  # from the parties: the model's largest possible |output|
    ranks: tuple[RankReport, ...]  # party 0, party 1, dealer
    failed_attempts: tuple[str, ...]  # why earlier sessions were abandoned
    seconds: float  # wall time of the successful session, client side


def encode_fixed_point(x: torch.Tensor) -> torch.Tensor:
    """Float -> int64 ring elements with `FRACTIONAL_BITS` fractional bits (round to nearest)."""
    return torch.round(x.double() * (1 << FRACTIONAL_BITS)).long()


def decode_fixed_point(ring: torch.Tensor) -> torch.Tensor:
    """int64 ring elements -> float64: floor(v / 2^f) + (v mod 2^f) / 2^f, exactly."""
    scale = 1 << FRACTIONAL_BITS
    whole = torch.div(ring, scale, rounding_mode="floor")
    return whole.double() + (ring - whole * scale).double() / scale


def _candidates(mesh: MeshClient, model: str) -> list[common_pb2.NodeRecord]:
    banned = mesh.banned()
    return [
        r for r in mesh.refresh(force=True) if model in r.mpc_models and r.node_id not in banned
    ]


def _run_chunks(session_id: str, relays: list[str], share: bytes) -> Iterator[mpc_pb2.RunChunk]:
    yield mpc_pb2.RunChunk(session_id=session_id, relay_addresses=relays, share=share[:CHUNK_BYTES])
    for i in range(CHUNK_BYTES, len(share), CHUNK_BYTES):
        yield mpc_pb2.RunChunk(session_id=session_id, share=share[i : i + CHUNK_BYTES])


def _attempt(
    mesh: MeshClient,
    nodes: list[common_pb2.NodeRecord],
    model: str,
    encoded: torch.Tensor,
    attention_mask: torch.Tensor | None,
    options: MPCOptions,
) -> tuple[torch.Tensor, float, tuple[RankReport, ...], float]:
    """One one-shot session (an encoder with its mask, or a classifier on (B, T, P) input)."""
    session_id = secrets.token_urlsafe(24)
    seed = secrets.token_bytes(16)
    share0 = AESCTRGenerator(seed).random_ring(tuple(encoded.shape))
    share1 = (encoded - share0).contiguous()  # int64 arithmetic wraps mod 2^64
    inputs = [seed, share1.numpy().tobytes(), b""]
    names = [n.name for n in nodes]
    stubs = [mpc_pb2_grpc.MPCSessionStub(mesh.channel(n.address, n.name)) for n in nodes]
    shape: dict[str, Any] = (
        {"input_shape": list(encoded.shape)}
        if attention_mask is None
        else {"attention_mask": _wire.tensor_to_proto(attention_mask.to(torch.int64))}
    )
    failures: dict[int, MeshError] = {}

    def open_rank(rank: int) -> str:
        request = mpc_pb2.OpenSession(
            session_id=session_id,
            rank=rank,
            model=model,
            threat_model=options.threat_model,
            rank_names=names,
            peer_timeout_s=options.peer_timeout_s,
            **shape,
        )
        return str(stubs[rank].Open(request, timeout=OPEN_TIMEOUT_S).relay_address)

    def guarded_open(rank: int) -> str | None:
        try:
            return open_rank(rank)
        except grpc.RpcError as exc:
            failures[rank] = error_from_rpc(exc, _where(rank, names))
            return None

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=3) as pool:
        relays = list(pool.map(guarded_open, range(3)))
    if failures:
        raise _SessionFailed(failures)
    calls = [
        stubs[r].Run.future(_run_chunks(session_id, relays, inputs[r]), timeout=options.deadline_s)
        for r in range(3)
    ]
    where = [_where(r, names) for r in range(3)]
    results = _gather(calls, where, options.peer_timeout_s + SILENCE_GRACE_S, failures)
    if failures:
        raise _SessionFailed(failures)
    seconds = time.perf_counter() - start
    batch = int(encoded.shape[0])
    shares = _shares(
        [results[0].output_share, results[1].output_share],
        names,
        lambda s: s.dim() == 2 and s.shape[0] == batch,
        f"(batch {batch}, features)",
    )
    output = decode_fixed_point(shares[0] + shares[1])
    # Under weights_private only party 0 (the owner) knows the weights, hence the bound.
    bound = _bound((results[0].output_bound, results[1].output_bound), options.threat_model)
    reports = tuple(RankReport.of(r, nodes[r], results[r]) for r in range(3))
    return output, bound, reports, seconds


def _shares(
    messages: list[common_pb2.Tensor],
    names: list[str],
    fits: Callable[[torch.Tensor], bool],
    expected: str,
) -> list[torch.Tensor]:
    """Parties 0 and 1's output shares. A share that does not decode, is not int64 or not of
    the expected shape is its sender's fault (what the client received itself); two shares
    that fit but differ in shape are a dispute between the parties."""
    shares: list[torch.Tensor] = []
    bad: dict[int, MeshError] = {}
    for rank, message in enumerate(messages):
        where = _where(rank, names)
        try:
            share = _wire.tensor_from_proto(message, "output share")
        except InvalidRequest as exc:
            bad[rank] = PeerMisbehaved(f"{where}: {exc}")
            continue
        if share.dtype != torch.int64 or not fits(share):
            bad[rank] = PeerMisbehaved(
                f"{where}: a {share.dtype} share of shape {tuple(share.shape)}, "
                f"expected int64 {expected}"
            )
        shares.append(share)
    if bad:
        raise _SessionFailed(bad)
    if shares[0].shape != shares[1].shape:
        a, b = tuple(shares[0].shape), tuple(shares[1].shape)
        raise _SessionFailed(
            {
                0: PeerMisbehaved(f"party 0 {names[0]}: a share of shape {a}, rank 1's is {b}"),
                1: PeerMisbehaved(f"party 1 {names[1]}: a share of shape {b}, rank 0's is {a}"),
            }
        )
    return shares


def _gather(
    calls: list[Any], where: list[str], grace_s: float, failures: dict[int, MeshError]
) -> list[Any]:
    """The results of the ranks' concurrent calls (`grpc.Future`s); failures go to `failures`.

    Once one rank has failed, an honest rank ends within `peer_timeout_s` (it waits that long
    at most for a silent peer, and a dead peer fails its sends at once). A rank still running
    `grace_s` later is silent in the client's own eyes: its call is cancelled and it is
    blamed as unreachable, instead of holding the request until `deadline_s` (30 minutes by
    default).
    """
    cond = threading.Condition()
    finished: set[int] = set()

    def done(rank: int) -> None:
        with cond:
            finished.add(rank)
            cond.notify_all()

    for rank, call in enumerate(calls):
        call.add_done_callback(lambda _call, rank=rank: done(rank))
    give_up: float | None = None
    with cond:
        while len(finished) < len(calls):
            if give_up is None and any(calls[r].code() != grpc.StatusCode.OK for r in finished):
                give_up = time.monotonic() + grace_s
            left = None if give_up is None else give_up - time.monotonic()
            if left is not None and left <= 0:
                break
            cond.wait(left)
        silent = [r for r in range(len(calls)) if r not in finished]
    results: list[Any] = [None] * len(calls)
    for rank, call in enumerate(calls):
        if rank in silent:
            call.cancel()
            failures[rank] = _Silent.of(where[rank], grace_s)
            continue
        try:
            results[rank] = call.result()
        except grpc.RpcError as exc:
            failures[rank] = error_from_rpc(exc, where[rank])
    return results


def _bound(bounds: tuple[float, float], threat_model: str) -> float:
    """The output bound the client checks against: party 0's under weights_private (only it
    knows the weights), else the smaller; a bound that is not a positive finite number is a
    party deviating (`min(nan, b)` is nan, and nothing compares above nan)."""
    used = bounds[:1] if threat_model == "weights_private" else bounds
    if not all(math.isfinite(b) and b > 0 for b in used):
        raise GarbageOutput(f"a party reported the output bound {used}: not a positive number")
    return min(used)


class _SessionFailed(Exception):
    def __init__(self, failures: dict[int, MeshError]) -> None:
        super().__init__("; ".join(f"{e}" for e in failures.values()))
        self.failures = failures


# Any rank a failing rank's error text names besides itself ("rank 1 sent nothing", "rank 1
# (addr): UNAVAILABLE", "message 3 from rank 1 ...", "rank 1 disconnected ..."): what it says
# about its peers. The node prefixes its own rank ("rank 0 on node-a: ..."), removed by rank.
_ACCUSATION = re.compile(r"\brank (\d)\b")


class _Silent(PeerUnavailable):
    """A rank still running well after another rank failed (`_gather`)."""

    @classmethod
    def of(cls, where: str, grace_s: float) -> _Silent:
        return cls(
            f"{where} was still running {grace_s:g} s after another rank failed "
            "(an honest rank ends within peer_timeout_s): silent, cancelled"
        )


def _where(rank: int, names: list[str]) -> str:
    """How errors name a rank: its role and node, e.g. "party 1 node-b"."""
    return f"{RANK_ROLES[rank]} {names[rank]}"


@dataclass(frozen=True, slots=True)
class _Blame:
    """What one failed attempt says about its three nodes (ranks)."""

    ban: frozenset[int]  # failed in a way only they can have caused
    exclude: frozenset[int]  # not drawn again for this request (ban included)
    disputes: tuple[tuple[int, int], ...]  # (accuser, accused) pairs nobody can settle


def _assess(failures: dict[int, MeshError]) -> _Blame:
    """Whom an abandoned attempt is blamed on, under the 2-party + dealer model's own
    assumption that at most one of the three nodes deviates.

    - What the client saw itself: a node it could not reach (UNAVAILABLE on its own call) is
      banned, and the other ranks' failures are consequences. A rank alone in failing by
      running out the deadline is banned; several doing so are only left out (the deadline
      may be too short for the work, or one kept the others busy).
    - A busy node (RESOURCE_EXHAUSTED) is not drawn again for this request, not banned.
    - A failing rank's error text naming a peer ("rank 1 sent nothing") is hearsay: a
      deviating party can write it about an honest one. A rank that both other ranks accuse
      is banned (two accusers cannot both lie when at most one node deviates). One accusation
      is a dispute: accuser and accused are left out of this request's next attempts and the
      dispute is recorded (`MeshClient.dispute`), never a ban by itself. A rank still running
      long after another failed (`_Silent`) is in dispute with each rank that failed: a
      deviating party can keep an honest peer busy while itself failing at once.
    - A rank that failed without naming anyone failed on its own: banned.
    """

    def code(err: MeshError) -> object:
        return getattr(err, "code", None)

    silent = {r for r, e in failures.items() if isinstance(e, _Silent)}
    unreachable = {
        r for r, e in failures.items() if code(e) == grpc.StatusCode.UNAVAILABLE and r not in silent
    }
    if unreachable:
        return _Blame(frozenset(unreachable), frozenset(unreachable), ())
    timeouts = {r for r, e in failures.items() if code(e) == grpc.StatusCode.DEADLINE_EXCEEDED}
    if timeouts:
        alone = frozenset(timeouts) if len(failures) == 1 else frozenset()
        return _Blame(alone, frozenset(failures), ())
    busy = {r for r, e in failures.items() if code(e) == grpc.StatusCode.RESOURCE_EXHAUSTED}
    accused: dict[int, set[int]] = {}
    ban: set[int] = set()
    failed = [r for r in failures if r not in busy and r not in silent]
    for rank in failed:
        named = {int(m) for m in _ACCUSATION.findall(str(failures[rank]))} - {rank}
        if not named and not silent:
            ban.add(rank)
        for other in named:
            accused.setdefault(other, set()).add(rank)
    disputes = set()
    for rank, accusers in accused.items():
        if len(accusers) >= 2 and rank not in silent:
            ban.add(rank)
        elif rank not in ban:
            disputes |= {(a, rank) for a in accusers}
    disputes |= {(f, s) for s in silent for f in failed}
    exclude = ban | busy | silent | {r for pair in disputes for r in pair}
    return _Blame(frozenset(ban), frozenset(exclude), tuple(sorted(disputes)))


def _pick(
    pool: list[common_pb2.NodeRecord], pinned: tuple[str, str, str] | None
) -> list[common_pb2.NodeRecord]:
    if pinned is None:
        # Three distinct certificate NAMES: a node signs its records with keys it chooses, so
        # one operator can announce many records; drawing records would let it fill the draw
        # (and sit in both party seats far more often than one name in the pool should).
        rng = secrets.SystemRandom()
        return rng.sample(one_per_name(pool, rng), 3)
    by_name = {r.name: r for r in pool}
    missing = [name for name in pinned if name not in by_name]
    if missing:
        raise NoRoute(f"requested MPC nodes are not live or do not run the model: {missing}")
    return [by_name[name] for name in pinned]


def run_secure_encoder(
    mesh: MeshClient,
    model: str,
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    options: MPCOptions,
) -> MPCOutcome:
    """Run the secure encoder of `model` on the client's embedding output; see the module doc.

    Args:
        hidden: (B, T, C) float, the embedding layer's output (the client's private input).
        attention_mask: (B, T) 0/1, PUBLIC: every node learns the sequence lengths.

    Raises:
        NoRoute: fewer than 3 live nodes run the model under MPC (after exclusions), or a
            pinned party is not live.
        SessionAborted: every attempt failed; the message lists why.
    """
    return _one_shot(mesh, model, encode_fixed_point(hidden), attention_mask, options)


def describe_classifier(mesh: MeshClient, model: str) -> mpc_pb2.ModelDescription:
    """How to prepare inputs for an MPC classifier, from a live node that hosts it.

    Raises:
        NoRoute: no live node lists `model` in its `mpc_models`.
    """
    for record in _candidates(mesh, model):
        stub = mpc_pb2_grpc.MPCSessionStub(mesh.channel(record.address, record.name))
        try:
            return stub.Describe(mpc_pb2.DescribeRequest(model=model), timeout=10.0)
        except grpc.RpcError:
            continue
    raise NoRoute(f"no live node describes the MPC classifier {model}")


def run_secure_classifier(
    mesh: MeshClient, model: str, inputs: torch.Tensor, options: MPCOptions
) -> MPCOutcome:
    """Run an MPC classifier on the client's (B, T, P) float input (see `describe_classifier`);
    the outcome's output is the (B, classes) logits, reconstructed on the client."""
    return _one_shot(mesh, model, encode_fixed_point(inputs), None, options)


def _one_shot(
    mesh: MeshClient,
    model: str,
    encoded: torch.Tensor,
    attention_mask: torch.Tensor | None,
    options: MPCOptions,
) -> MPCOutcome:
    retries = _Retries(mesh, model, options)
    for nodes in retries:
        try:
            output, bound, reports, seconds = _attempt(
                mesh, nodes, model, encoded, attention_mask, options
            )
        except _SessionFailed as exc:
            retries.failed(nodes, exc)
            continue
        return MPCOutcome(
            output=output,
            output_bound=bound,
            ranks=reports,
            failed_attempts=tuple(retries.failures),
            seconds=seconds,
        )
    raise SessionAborted(f"MPC session failed {options.attempts} times: {retries.failures}")


class _Retries:
    """Node sets for successive attempts: pinned parties first, then random draws that
    exclude (and ban) the nodes blamed for earlier failures."""

    def __init__(self, mesh: MeshClient, model: str, options: MPCOptions) -> None:
        self.mesh = mesh
        self.model = model
        self.options = options
        self.failures: list[str] = []
        self.excluded: set[str] = set()  # certificate names

    def __iter__(self) -> Iterator[list[common_pb2.NodeRecord]]:
        for _ in range(self.options.attempts):
            pool = [r for r in _candidates(self.mesh, self.model) if r.name not in self.excluded]
            names = {r.name for r in pool}
            if len(names) < 3:
                raise NoRoute(
                    f"need 3 live nodes (distinct names) running {self.model} under MPC "
                    f"(2 parties + dealer), found {len(names)}"
                    + (f"; earlier attempts: {self.failures}" if self.failures else "")
                )
            try:
                picked = _pick(pool, self.options.parties)
            except NoRoute as exc:
                if self.failures:
                    raise NoRoute(f"{exc}; earlier attempts: {self.failures}") from None
                raise
            yield picked

    def failed(self, nodes: list[common_pb2.NodeRecord], exc: _SessionFailed) -> None:
        # Name every node that may hold the input's shares: each attempt is another pair that
        # must not collude, and the result should say so, not only the pair that succeeded.
        self.failures.append(
            f"{exc} (this attempt's parties, which may hold shares of the input: "
            f"{nodes[0].name}, {nodes[1].name}; dealer {nodes[2].name})"
        )
        blame = _assess(exc.failures)
        banned = {nodes[r].name for r in blame.ban}
        for accuser, accused in blame.disputes:
            # A node in unsettled disputes with several distinct peers is the likely liar
            # (an honest node disputes only with the one deviating node it met).
            banned |= self.mesh.dispute(nodes[accuser].name, nodes[accused].name)
        self.excluded |= {nodes[r].name for r in blame.exclude} | banned
        # Every record of a banned certificate name (one operator may announce several).
        for record in self.mesh.refresh():
            if record.name in banned:
                self.mesh.ban(record.node_id)


@dataclass(frozen=True, slots=True)
class DecodedToken:
    """One greedy token of a secure generation, reconstructed and checked by the client."""

    step: int
    token_id: int
    logit: float  # its logit, within the model's bound (else GarbageOutput)


def run_secure_decoder(
    mesh: MeshClient,
    model: str,
    prompt: torch.Tensor,
    next_input: Callable[[int], torch.Tensor],
    max_new_tokens: int,
    options: MPCOptions,
) -> Iterator[DecodedToken | MPCOutcome]:
    """Greedy generation by a decoder `model` under MPC; yields each token, then the outcome.

    Args:
        prompt: (1, T, D) int64 ring elements of the client's prompt input: fixed-point
            embedding rows (input_private) or a one-hot at scale 1 (weights_private).
        next_input: the (1, 1, D) ring input for a generated token id (same encoding).
        max_new_tokens: steps the parties run (fixed in advance and known to them).

    Each step's (token id, logit) comes back as two additive shares, one per party; the client
    reconstructs it, checks the logit against the model's bound (`GarbageOutput` beyond it),
    and secret-shares the next input. Retries on a fresh node set happen only before the first
    token (a token already handed to the caller cannot be taken back); a later failure raises
    `SessionAborted`. `MPCOutcome.output` holds the (2, max_new_tokens) ids and logits.
    """
    retries = _Retries(mesh, model, options)
    for nodes in retries:
        session = _DecoderSession(mesh, nodes, model, max_new_tokens, options)
        produced = 0
        try:
            session.start(prompt)
            for token in session.steps(next_input):
                produced += 1
                yield token
            reports, seconds = session.finish()
        except _SessionFailed as exc:
            session.cancel()
            if produced:
                raise SessionAborted(
                    f"MPC generation failed after {produced} tokens: {exc}"
                ) from None
            retries.failed(nodes, exc)
            continue
        except BaseException:
            session.cancel()
            raise
        yield MPCOutcome(
            output=session.tokens(),
            output_bound=session.bound,
            ranks=reports,
            failed_attempts=tuple(retries.failures),
            seconds=seconds,
        )
        return
    raise SessionAborted(f"MPC session failed {options.attempts} times: {retries.failures}")


class _DecoderSession:
    """One attempt at a generation session: parties on `Generate` streams, dealer on `Run`."""

    def __init__(
        self,
        mesh: MeshClient,
        nodes: list[common_pb2.NodeRecord],
        model: str,
        max_new_tokens: int,
        options: MPCOptions,
    ) -> None:
        self.nodes = nodes
        self.model = model
        self.names = [n.name for n in nodes]
        self.options = options
        self.max_new_tokens = max_new_tokens
        self.session_id = secrets.token_urlsafe(24)
        self.bound = 0.0
        self._decoded: list[DecodedToken] = []
        self._stubs = [mpc_pb2_grpc.MPCSessionStub(mesh.channel(n.address, n.name)) for n in nodes]
        self._pool = ThreadPoolExecutor(max_workers=3)
        self._inputs: queue.Queue[bytes | None] = queue.Queue()  # party 1's later steps
        self._calls: list[Any] = []
        self._started = time.perf_counter()
        self._seed = secrets.token_bytes(16)
        self._stream = AESCTRGenerator(self._seed)  # party 0's shares, expanded on both ends
        self._streams: list[Any] = []
        self._dealer: Any = None

    def start(self, prompt: torch.Tensor) -> None:
        """Open the three ranks and start their calls with step 0's input shares."""
        seed = self._seed
        share1 = self._share(prompt)
        mask = _wire.tensor_to_proto(torch.ones(1, prompt.shape[1], dtype=torch.int64))
        relays = self._open(self.model, mask)
        first = [
            mpc_pb2.RunChunk(session_id=self.session_id, relay_addresses=relays, share=seed),
            *_run_chunks(self.session_id, relays, share1),
        ]
        deadline = self.options.deadline_s
        self._streams = [
            self._stubs[0].Generate(iter(first[:1]), timeout=deadline),
            self._stubs[1].Generate(self._party1_chunks(first[1:]), timeout=deadline),
        ]
        self._calls = list(self._streams)
        dealer = [mpc_pb2.RunChunk(session_id=self.session_id, relay_addresses=relays)]
        self._dealer = self._stubs[2].Run.future(iter(dealer), timeout=deadline)
        self._calls.append(self._dealer)

    def _share(self, x: torch.Tensor) -> bytes:
        """Party 1's share of a ring tensor: x - PRG (party 0 expands the PRG itself)."""
        share0 = self._stream.random_ring(tuple(x.shape))
        return (x - share0).contiguous().numpy().tobytes()  # int64 wraps mod 2^64

    def _party1_chunks(self, first: list[mpc_pb2.RunChunk]) -> Iterator[mpc_pb2.RunChunk]:
        yield from first
        while (share := self._inputs.get()) is not None:
            for i in range(0, len(share), CHUNK_BYTES):
                yield mpc_pb2.RunChunk(share=share[i : i + CHUNK_BYTES])

    def _open(self, model: str, mask: common_pb2.Tensor) -> list[str]:
        failures: dict[int, MeshError] = {}

        def open_rank(rank: int) -> str:
            request = mpc_pb2.OpenSession(
                session_id=self.session_id,
                rank=rank,
                model=model,
                threat_model=self.options.threat_model,
                attention_mask=mask,
                rank_names=self.names,
                peer_timeout_s=self.options.peer_timeout_s,
                max_new_tokens=self.max_new_tokens,
            )
            try:
                return str(self._stubs[rank].Open(request, timeout=OPEN_TIMEOUT_S).relay_address)
            except grpc.RpcError as exc:
                failures[rank] = error_from_rpc(exc, _where(rank, self.names))
                return ""

        relays = list(self._pool.map(open_rank, range(3)))
        if failures:
            raise _SessionFailed(failures)
        return relays

    def _next(self) -> tuple[mpc_pb2.StepResult, mpc_pb2.StepResult]:
        """Both parties' next messages (read concurrently: either may be the one that fails)."""
        futures = [self._pool.submit(next, stream) for stream in self._streams]
        failures: dict[int, MeshError] = {}
        replies = []
        _, running = wait(futures, return_when=FIRST_EXCEPTION)
        if running:  # one failed: the other ends within peer_timeout_s if honest (`_gather`)
            _, running = wait(running, timeout=self.options.peer_timeout_s + SILENCE_GRACE_S)
        for rank, future in enumerate(futures):
            if future in running:
                self._streams[rank].cancel()
                grace_s = self.options.peer_timeout_s + SILENCE_GRACE_S
                failures[rank] = _Silent.of(_where(rank, self.names), grace_s)
                continue
            try:
                replies.append(future.result())
            except grpc.RpcError as exc:
                failures[rank] = error_from_rpc(exc, _where(rank, self.names))
            except StopIteration:
                failures[rank] = SessionAborted(f"{_where(rank, self.names)} ended early")
        if failures:
            self._blame_dealer(failures)
            raise _SessionFailed(failures)
        return replies[0], replies[1]

    def _blame_dealer(self, failures: dict[int, MeshError]) -> None:
        if self._dealer is not None and self._dealer.done():
            try:
                self._dealer.result()
            except grpc.RpcError as exc:
                failures[2] = error_from_rpc(exc, _where(2, self.names))

    def steps(self, next_input: Callable[[int], torch.Tensor]) -> Iterator[DecodedToken]:
        for step in range(self.max_new_tokens):
            r0, r1 = self._next()
            if r0.done or r1.done or r0.step != step or r1.step != step:
                raise SessionAborted(f"the parties answered out of step at step {step}")
            token = self._reconstruct(step, r0, r1)
            self._decoded.append(token)
            if step + 1 < self.max_new_tokens:
                self._inputs.put(self._share(next_input(token.token_id)))
            else:
                self._inputs.put(None)
            yield token

    def _reconstruct(
        self, step: int, r0: mpc_pb2.StepResult, r1: mpc_pb2.StepResult
    ) -> DecodedToken:
        shares = _shares(
            [r0.token_share, r1.token_share], self.names, lambda s: s.shape == (2, 1), "(2, 1)"
        )
        # Under weights_private only party 0 (the owner) knows the weights, hence the bound.
        self.bound = _bound((r0.logit_bound, r1.logit_bound), self.options.threat_model)
        decoded = decode_fixed_point(shares[0] + shares[1])  # (2, 1)
        logit = float(check_output(decoded[1], self.bound)[0])  # GarbageOutput beyond it
        token_id = int(decoded[0, 0].round())
        vocab = get_spec(self.model).vocab_size
        if abs(float(decoded[0, 0]) - token_id) > 1e-3 or not 0 <= token_id < vocab:
            raise GarbageOutput(f"step {step}: the reconstructed token id {float(decoded[0, 0])}")
        return DecodedToken(step=step, token_id=token_id, logit=logit)

    def tokens(self) -> torch.Tensor:
        return torch.tensor(
            [[t.token_id for t in self._decoded], [t.logit for t in self._decoded]],
            dtype=torch.float64,
        )

    def finish(self) -> tuple[tuple[RankReport, ...], float]:
        r0, r1 = self._next()
        if not (r0.done and r1.done):
            raise SessionAborted("the parties sent more steps than asked for")
        try:
            dealer = self._dealer.result()
        except grpc.RpcError as exc:
            raise _SessionFailed({2: error_from_rpc(exc, _where(2, self.names))}) from None
        self._pool.shutdown(wait=False)
        seconds = time.perf_counter() - self._started
        stats = (r0, r1, dealer)
        reports = tuple(RankReport.of(r, self.nodes[r], stats[r]) for r in range(3))
        return reports, seconds

    def cancel(self) -> None:
        """End every call of the session (the nodes then kill its processes)."""
        self._inputs.put(None)
        for call in self._calls:
            call.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
