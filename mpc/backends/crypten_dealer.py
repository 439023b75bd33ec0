"""Batched dealer preprocessing for CrypTen's trusted third party (TTP).

Threat: CrypTen's TTP is a **trusted dealer** (an assumption, not a property): it knows every
triple it deals, so a dealer colluding with any party learns that party's peer's inputs. It sees
no inputs or outputs, only the sequence of request shapes, which it would see anyway.

CrypTen's TTP answers one request per correlated value: before every multiplication, square,
comparison wrap or bit conversion, party 0 sends the request, waits for the size, then for its
share (one blocking round trip, three messages). The other parties never talk to the dealer:
they draw their shares from generators seeded by it.

The sequence of requests of a computation depends only on the shapes it runs on, never on the
values, so it can be planned ahead:

1. `record_plan()` (party 0): run the computation once on placeholder inputs of the real
   shapes; every dealer request is passed through as usual and recorded.
2. `prefetch(plan)` (party 0): one request, `secure_infer_batch`, asks the dealer for party 0's
   shares of every correlated value in the plan. The dealer produces them in plan order from
   the same per-party generators it always uses, so they match what the other parties draw.
   This can run before the private input exists (the offline phase).
3. The real computation: each dealer request of party 0 is answered from the prefetched queue
   with no communication, after checking that it is exactly the next planned request; a
   mismatch raises `DealerPlanMismatch` (the computation is not the one planned) instead of
   silently using the wrong randomness.

Cost: the online phase makes no dealer round trips; preprocessing is one round trip whose reply
is the sum of the shares' sizes (8 bytes per ring element) plus a small header. A recorded plan
also knows each share's size, so `prefetch(..., max_bytes=...)` can split it into chunks of a
bounded size: the first is fetched at once, each later one when the queue runs dry (one round
trip a chunk; a full SmolLM2 prefill needs ~3 GB of party 0's shares, which should not sit in
memory, or in one message, at once).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import Any

import torch

from mpc.errors import MPCError

BATCH_FUNCTION = "secure_infer_batch"
# What the TTP deals.
_DEALT = (
    "additive",
    "square",
    "binary",
    "wraps",
    "B2A",
    "trunc_pair",
    "cmp_mask",
    "fixed_mask",  # mpc.backends.crypten_weights: build masked weights before recording a plan
    "fixed_mask_matmul",
)

PlanEntry = tuple[str, str | None, tuple[Any, ...], dict[str, Any]]
CHUNK_BYTES = 64 * 1024 * 1024  # a good `prefetch(max_bytes=...)`: party 0's shares held at once
_ELEMENT_BYTES = 8  # every dealt share is a tensor of int64 ring elements


class DealerPlan(list[PlanEntry]):
    """The dealer requests of one computation, in order (a list of `PlanEntry`), and beside
    them `sizes`: the number of ring elements of each dealt share, as recorded."""

    def __init__(self, entries: Iterable[PlanEntry] = (), sizes: Iterable[int] = ()) -> None:
        super().__init__(entries)
        self.sizes: list[int] = list(sizes)

    @property
    def share_bytes(self) -> int:
        """Party 0's share bytes for the whole plan (0 when the sizes were not recorded)."""
        return _ELEMENT_BYTES * sum(self.sizes)

    def chunks(self, max_bytes: int | None) -> list[list[PlanEntry]]:
        """Consecutive pieces of at most `max_bytes` of shares each (an entry larger than that
        is a piece of its own); the whole plan as one piece without sizes or a bound."""
        if max_bytes is None or len(self.sizes) != len(self):
            return [list(self)] if self else []
        pieces: list[list[PlanEntry]] = []
        piece: list[PlanEntry] = []
        held = 0
        for entry, size in zip(self, self.sizes, strict=True):
            need = _ELEMENT_BYTES * size
            if piece and held + need > max_bytes:
                pieces.append(piece)
                piece, held = [], 0
            piece.append(entry)
            held += need
        if piece:
            pieces.append(piece)
        return pieces


class DealerPlanMismatch(MPCError):
    """A dealer request differs from the next request of the prefetched plan."""


def _normalize(
    function: str, device: object, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> PlanEntry:
    return (function, None if device is None else str(device), tuple(args), dict(kwargs))


def _server_batch(self: Any, plan: list[Any]) -> torch.Tensor:
    """Dealer side: party 0's shares for every planned request, in order, in one tensor.

    Layout (int64): [count, ndim_0, *shape_0, ndim_1, *shape_1, ..., data_0, data_1, ...].
    """
    header: list[int] = [len(plan)]
    data: list[torch.Tensor] = []
    for entry in plan:
        function, device, args, kwargs = entry
        if function not in _DEALT:
            raise ValueError(f"dealer: {function!r} is not a dealer function")
        self.device = device
        share = getattr(self, function)(*args, **kwargs)
        header += [share.dim(), *share.shape]
        data.append(share.reshape(-1))
    return torch.cat([torch.tensor(header, dtype=torch.long), *data])


def _split(flat: torch.Tensor) -> list[torch.Tensor]:
    count = int(flat[0])
    pos, shapes = 1, []
    for _ in range(count):
        ndim = int(flat[pos])
        shapes.append(tuple(int(d) for d in flat[pos + 1 : pos + 1 + ndim]))
        pos += 1 + ndim
    out = []
    for shape in shapes:
        n = 1
        for d in shape:
            n *= d
        out.append(flat[pos : pos + n].reshape(shape))
        pos += n
    if pos != flat.numel():
        raise DealerPlanMismatch(f"dealer batch has {flat.numel() - pos} unexplained elements")
    return out


def install(crypten: ModuleType) -> None:
    """Add the batch function to the TTP server and the prefetch queue to its client."""
    ttp = crypten.mpc.provider.ttp_provider
    if getattr(ttp.TTPServer, BATCH_FUNCTION, None) is not None:
        return
    setattr(ttp.TTPServer, BATCH_FUNCTION, _server_batch)
    client_cls = ttp.TTPClient._TTPClient__TTPClient  # the singleton's inner class
    original = client_cls.ttp_request

    def ttp_request(
        self: Any, function: str, device: object, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        entry = _normalize(function, device, args, kwargs)
        share = _serve_planned(self, entry, device)
        if share is None:
            self.online_requests = getattr(self, "online_requests", 0) + 1
            share = original(self, function, device, *args, **kwargs)
        recording: DealerPlan | None = getattr(self, "_plan_recording", None)
        if recording is not None:
            recording.append(entry)
            recording.sizes.append(share.numel())
        return share  # type: ignore[no-any-return]

    client_cls.ttp_request = ttp_request
    client_cls._secure_infer_original_request = original


def _serve_planned(client: Any, entry: PlanEntry, device: object) -> torch.Tensor | None:
    """The next prefetched share if a plan is being served (fetching its next chunk when the
    queue ran dry), after checking that `entry` is the planned request; None without a plan."""
    queue: collections.deque[tuple[PlanEntry, torch.Tensor]] | None = getattr(
        client, "_prefetched", None
    )
    deferred: collections.deque[list[PlanEntry]] | None = getattr(client, "_deferred", None)
    if not queue and deferred:
        _fetch(client, deferred.popleft(), None if device is None else str(device))
        queue = client._prefetched
    if not queue:
        return None
    planned, share = queue[0]
    if planned != entry:
        raise DealerPlanMismatch(
            f"dealer request {entry[0]}{entry[2]} is not the planned {planned[0]}{planned[2]}"
        )
    queue.popleft()
    client.prefetched_used = getattr(client, "prefetched_used", 0) + 1
    return share


def _fetch(client: Any, entries: list[PlanEntry], device: str | None) -> None:
    """One dealer round trip: party 0's shares of `entries`, appended to the queue."""
    wire_plan = [[f, d, list(a), k] for f, d, a, k in entries]
    flat = client._secure_infer_original_request(BATCH_FUNCTION, device, wire_plan)
    shares = _split(flat)
    if len(shares) != len(entries):
        raise DealerPlanMismatch(
            f"dealer returned {len(shares)} shares for {len(entries)} requests"
        )
    client.prefetch_round_trips = getattr(client, "prefetch_round_trips", 0) + 1
    queue = getattr(client, "_prefetched", None)
    if queue is None:
        queue = client._prefetched = collections.deque()
    queue.extend(zip(entries, shares, strict=True))


def _client(crypten: ModuleType) -> Any:
    return crypten.mpc.provider.ttp_provider.TTPClient.get()


@contextlib.contextmanager
def record_plan(crypten: ModuleType) -> Iterator[DealerPlan]:
    """Party 0: record the dealer requests made inside the block (they are still served), with
    each share's size."""
    client = _client(crypten)
    plan = DealerPlan()
    client._plan_recording = plan
    try:
        yield plan
    finally:
        client._plan_recording = None


def prefetch(
    crypten: ModuleType,
    plan: list[PlanEntry],
    device: str | None = None,
    *,
    max_bytes: int | None = None,
) -> int:
    """Party 0: fetch the shares for every request of `plan` ahead of the computation.

    Without `max_bytes` (or for a plan without recorded sizes) this is one dealer round trip.
    With it, a `DealerPlan` is split into chunks of at most `max_bytes` of shares: the first is
    fetched now, each later one when the queue runs dry during the computation.

    Returns:
        The number of correlated values planned (queued now or in later chunks).
    """
    client = _client(crypten)
    pieces = plan.chunks(max_bytes) if isinstance(plan, DealerPlan) else [list(plan)]
    pieces = [piece for piece in pieces if piece]
    if not pieces:
        return 0
    _fetch(client, pieces[0], device)
    deferred = getattr(client, "_deferred", None)
    if deferred is None:
        deferred = client._deferred = collections.deque()
    deferred.extend(pieces[1:])
    return sum(len(piece) for piece in pieces)


@dataclasses.dataclass
class PlanUse:
    """What `planned` did around one computation (party 0)."""

    recorded: DealerPlan | None = None  # the plan recorded, when none was given
    planned: int = 0  # correlated values served from the given plan
    round_trips: int = 0  # chunk fetches of the given plan
    online_requests: int = 0  # requests the dealer answered one at a time


@contextlib.contextmanager
def planned(
    crypten: ModuleType, plan: DealerPlan | None, *, max_bytes: int | None = CHUNK_BYTES
) -> Iterator[PlanUse]:
    """Party 0, around a computation: with `plan`, serve its dealer values from chunked
    prefetches (`prefetch`); without, record the computation's plan (`record_plan`) into the
    yielded `PlanUse`, whose counters are filled in when the block ends."""
    client = _client(crypten)
    use = PlanUse()
    online = getattr(client, "online_requests", 0)
    trips = getattr(client, "prefetch_round_trips", 0)
    if plan is not None:
        use.planned = prefetch(crypten, plan, max_bytes=max_bytes)
        yield use
    else:
        with record_plan(crypten) as recorded:
            yield use
        use.recorded = recorded
    use.online_requests = getattr(client, "online_requests", 0) - online
    use.round_trips = getattr(client, "prefetch_round_trips", 0) - trips


def pending(crypten: ModuleType) -> int:
    """Planned values not used yet (party 0): queued, or in chunks not fetched yet."""
    client = _client(crypten)
    queue = getattr(client, "_prefetched", None)
    deferred = getattr(client, "_deferred", None)
    return (len(queue) if queue else 0) + (sum(map(len, deferred)) if deferred else 0)
