"""Client-side route planning over live nodes, as Petals does it.

The layers of a model are the points 0..L; a node serving span [s, e) is an edge s -> e whose
cost is the measured round-trip time to the node plus the span's compute time estimated from
the node's advertised throughput, inflated by its current load. The route is the cheapest path
0 -> L (Dijkstra). Nodes the client has seen fail are excluded for `ban_s` seconds.
"""

from __future__ import annotations

import heapq
import itertools
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from decentralized.errors import InvalidRequest, NoRoute
from decentralized.v1 import common_pb2

T = TypeVar("T")

_DEFAULT_RTT_S = 0.002  # assumed round trip to a node not yet measured
_DEFAULT_LAYERS_PER_S = 100.0  # assumed throughput of a node that reports none


@dataclass(frozen=True, slots=True)
class Hop:
    """One step of a route: layers [start, end) of a model on one node."""

    node_id: str
    name: str
    address: str
    start: int
    end: int
    weight_digest: str
    public_key: bytes = b""  # the node's raw Ed25519 key (checks its forward receipts)

    @classmethod
    def of(cls, record: common_pb2.NodeRecord, span: common_pb2.Span) -> Hop:
        """The hop of `span` (one of `record.spans`) on the node `record` describes."""
        return cls(
            record.node_id,
            record.name,
            record.address,
            span.start,
            span.end,
            span.weight_digest,
            record.public_key,
        )


class _Named(Protocol):
    @property
    def name(self) -> str: ...


Named = TypeVar("Named", bound=_Named)


def one_per_name(items: Sequence[Named], rng: secrets.SystemRandom) -> list[Named]:
    """One item per node name, drawn at random among that name's: a node signs its records
    with keys it chooses, so one certificate name can announce many records, and whoever
    draws nodes that must be distinct operators (consensus replicas, MPC parties) draws names."""
    by_name: dict[str, list[Named]] = {}
    for item in items:
        by_name.setdefault(item.name, []).append(item)
    return [rng.choice(group) for group in by_name.values()]


def takes(record: common_pb2.NodeRecord, tokens: int) -> bool:
    """Whether a node's stated token limit (`max_tokens`, 0: not stated) takes `tokens`."""
    return not (tokens and record.max_tokens and record.max_tokens < tokens)


def hop_cost(record: common_pb2.NodeRecord, layers: int, rtt_s: float | None) -> float:
    rate = record.layers_per_s if record.layers_per_s > 0 else _DEFAULT_LAYERS_PER_S
    compute = layers / rate * (1 + record.load)
    return (rtt_s if rtt_s is not None else _DEFAULT_RTT_S) + compute


def plan_route(
    model: str,
    num_layers: int,
    records: list[common_pb2.NodeRecord],
    *,
    exclude: set[str] = frozenset(),  # type: ignore[assignment]
    rtt_s: dict[str, float] | None = None,
    start: int = 0,
    end: int | None = None,
    tokens: int = 0,
) -> list[Hop]:
    """Cheapest chain of served spans covering layers [start, end) of model, over nodes whose
    stated token limit (`NodeRecord.max_tokens`, 0: not stated) takes `tokens`.

    Raises:
        InvalidRequest: a route exists, but only over nodes whose limit is below `tokens` (the
            request is too long for this mesh; no node is at fault).
        NoRoute: no route at all.
    """
    end = num_layers if end is None else end
    rtt_s = rtt_s or {}
    edges: dict[int, list[tuple[float, Hop]]] = {}
    too_small: dict[str, int] = {}
    for rec in records:
        if rec.node_id in exclude:
            continue
        if not takes(rec, tokens):
            if any(s.model == model for s in rec.spans):
                too_small[rec.name] = rec.max_tokens
            continue
        for span in rec.spans:
            if span.model != model or span.start < start or span.end > end:
                continue
            hop = Hop.of(rec, span)
            cost = hop_cost(rec, span.end - span.start, rtt_s.get(rec.node_id))
            edges.setdefault(span.start, []).append((cost, hop))
    route = shortest_path(
        {s: [(c, h.end, h) for c, h in hs] for s, hs in edges.items()}, start, end
    )
    if route is None:
        if too_small:
            try:  # would the nodes whose limit is too small have made a route?
                plan_route(model, num_layers, records, exclude=exclude, start=start, end=end)
            except NoRoute:
                pass
            else:
                limits = ", ".join(f"{n} {m}" for n, m in sorted(too_small.items()))
                raise InvalidRequest(
                    f"{tokens} tokens exceed the token limit of the nodes that would serve "
                    f"{model} layers [{start}, {end}) ({limits}): send fewer tokens "
                    "(a shorter prompt, fewer new tokens)"
                )
        covered = sorted({(h.start, h.end) for hs in edges.values() for _, h in hs})
        raise NoRoute(
            f"no live nodes cover {model} layers [{start}, {end}); live spans: "
            f"{', '.join(f'[{a}, {b})' for a, b in covered) or 'none'}"
        )
    return route


def shortest_path(
    edges: dict[int, list[tuple[float, int, T]]], start: int, end: int
) -> list[T] | None:
    """Dijkstra over layer boundaries: edges[s] holds (cost, e, payload) for an edge s -> e.
    The payloads along the cheapest path start -> end, or None when end is unreachable."""
    counter = itertools.count()  # tie-breaker so heapq never compares payloads
    best: dict[int, float] = {start: 0.0}
    previous: dict[int, tuple[int, T]] = {}
    queue: list[tuple[float, int, int]] = [(0.0, next(counter), start)]
    while queue:
        cost, _, layer = heapq.heappop(queue)
        if layer == end:
            break
        if cost > best.get(layer, float("inf")):
            continue
        for edge_cost, edge_end, payload in edges.get(layer, []):
            total = cost + edge_cost
            if total < best.get(edge_end, float("inf")):
                best[edge_end] = total
                previous[edge_end] = (layer, payload)
                heapq.heappush(queue, (total, next(counter), edge_end))
    if end != start and end not in previous:
        return None
    path: list[T] = []
    layer = end
    while layer != start:
        layer, payload = previous[layer]
        path.append(payload)
    return path[::-1]
