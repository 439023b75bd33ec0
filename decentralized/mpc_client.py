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

import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import torch

from decentralized import _wire
from decentralized.client import MeshClient, error_from_rpc
from decentralized.errors import InvalidRequest, MeshError, NoRoute, SessionAborted
from decentralized.v1 import common_pb2, mpc_pb2, mpc_pb2_grpc
from mpc.prg import AESCTRGenerator

FRACTIONAL_BITS = 16  # CrypTen's fixed point
CHUNK_BYTES = 4 * 1024 * 1024
RANK_ROLES = ("party 0", "party 1", "dealer")
OPEN_TIMEOUT_S = 150.0  # a node spawns the rank's process and binds its mailbox


@dataclass(frozen=True, slots=True, kw_only=True)
class MPCOptions:
    """How the client runs an MPC session.

    Attributes:
        threat_model: "input_private" (the parties know the public weights) or
            "weights_private" (PUMA's setting: party 0 owns the weights and secret-shares them).
        attempts: sessions tried before giving up; each retry draws a fresh set of nodes and
            excludes the nodes that failed.
        parties: node names for the first attempt, in rank order (party 0, party 1, dealer),
            e.g. nodes the client trusts not to collude; None draws them at random.
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
    attention_mask: torch.Tensor,
    options: MPCOptions,
) -> tuple[torch.Tensor, float, tuple[RankReport, ...], float]:
    session_id = secrets.token_urlsafe(24)
    seed = secrets.token_bytes(16)
    share0 = AESCTRGenerator(seed).random_ring(tuple(encoded.shape))
    share1 = (encoded - share0).contiguous()  # int64 arithmetic wraps mod 2^64
    inputs = [seed, share1.numpy().tobytes(), b""]
    names = [n.name for n in nodes]
    stubs = [mpc_pb2_grpc.MPCSessionStub(mesh.channel(n.address, n.name)) for n in nodes]
    mask = _wire.tensor_to_proto(attention_mask.to(torch.int64))
    failures: dict[int, MeshError] = {}

    def open_rank(rank: int) -> str:
        request = mpc_pb2.OpenSession(
            session_id=session_id,
            rank=rank,
            model=model,
            threat_model=options.threat_model,
            attention_mask=mask,
            rank_names=names,
            peer_timeout_s=options.peer_timeout_s,
        )
        return str(stubs[rank].Open(request, timeout=OPEN_TIMEOUT_S).relay_address)

    def run_rank(rank: int, relays: list[str]) -> mpc_pb2.RunResult:
        chunks = _run_chunks(session_id, relays, inputs[rank])
        return stubs[rank].Run(chunks, timeout=options.deadline_s)

    def guarded(rank: int, fn: object, *args: object) -> object:
        try:
            return fn(rank, *args)  # type: ignore[operator]
        except grpc.RpcError as exc:
            failures[rank] = error_from_rpc(exc, f"{RANK_ROLES[rank]} {names[rank]}")
            return None

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=3) as pool:
        relays = list(pool.map(lambda r: guarded(r, open_rank), range(3)))
        if failures:
            raise _SessionFailed(failures)
        results = list(pool.map(lambda r: guarded(r, run_rank, relays), range(3)))
    if failures:
        raise _SessionFailed(failures)
    seconds = time.perf_counter() - start
    shares = [_wire.tensor_from_proto(results[r].output_share, "output share") for r in (0, 1)]
    if shares[0].shape != shares[1].shape or shares[0].dtype != torch.int64:
        raise SessionAborted("the parties returned output shares of different shapes")
    output = decode_fixed_point(shares[0] + shares[1])
    # Under weights_private only party 0 (the owner) knows the weights, hence the bound.
    bounds = [results[r].output_bound for r in (0, 1)]
    bound = bounds[0] if options.threat_model == "weights_private" else min(bounds)
    reports = tuple(
        RankReport(
            role=RANK_ROLES[r],
            name=nodes[r].name,
            node_id=nodes[r].node_id,
            address=nodes[r].address,
            bytes_sent=results[r].bytes_sent,
            bytes_received=results[r].bytes_received,
            rounds=results[r].rounds,
            seconds=results[r].seconds,
        )
        for r in range(3)
    )
    return output, bound, reports, seconds


class _SessionFailed(Exception):
    def __init__(self, failures: dict[int, MeshError]) -> None:
        super().__init__("; ".join(f"{e}" for e in failures.values()))
        self.failures = failures


def _culprits(failures: dict[int, MeshError]) -> set[int]:
    """Ranks to blame: those that were unreachable or silent, else every failing rank."""
    codes = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
    hard = {r for r, e in failures.items() if getattr(e, "code", None) in codes}
    if hard:
        return hard
    named = set()
    for err in failures.values():  # "rank N sent nothing ..." from a surviving party
        text = str(err)
        for rank in range(3):
            if f"rank {rank} sent nothing" in text or f"rank {rank} (" in text:
                named.add(rank)
    return named or set(failures)


def _pick(
    pool: list[common_pb2.NodeRecord], pinned: tuple[str, str, str] | None
) -> list[common_pb2.NodeRecord]:
    if pinned is None:
        return secrets.SystemRandom().sample(pool, 3)
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
    encoded = encode_fixed_point(hidden)
    failed: list[str] = []
    excluded: set[str] = set()
    for attempt in range(options.attempts):
        pool = [r for r in _candidates(mesh, model) if r.node_id not in excluded]
        if len(pool) < 3:
            raise NoRoute(
                f"need 3 live nodes running {model} under MPC (2 parties + dealer), "
                f"found {len(pool)}" + (f"; earlier attempts: {failed}" if failed else "")
            )
        nodes = _pick(pool, options.parties if attempt == 0 else None)
        try:
            output, bound, reports, seconds = _attempt(
                mesh, nodes, model, encoded, attention_mask, options
            )
        except _SessionFailed as exc:
            failed.append(str(exc))
            for rank in _culprits(exc.failures):
                excluded.add(nodes[rank].node_id)
                mesh.ban(nodes[rank].node_id)
            continue
        return MPCOutcome(
            output=output,
            output_bound=bound,
            ranks=reports,
            failed_attempts=tuple(failed),
            seconds=seconds,
        )
    raise SessionAborted(f"MPC session failed {options.attempts} times: {failed}")
