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
is the sum of the shares' sizes (8 bytes per ring element) plus a small header.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator
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
        recording = getattr(self, "_plan_recording", None)
        if recording is not None:
            recording.append(entry)
        queue: collections.deque[tuple[PlanEntry, torch.Tensor]] | None = getattr(
            self, "_prefetched", None
        )
        if queue:
            planned, share = queue[0]
            if planned != entry:
                raise DealerPlanMismatch(
                    f"dealer request {function}{tuple(args)} is not the planned "
                    f"{planned[0]}{planned[2]}"
                )
            queue.popleft()
            self.prefetched_used = getattr(self, "prefetched_used", 0) + 1
            return share
        self.online_requests = getattr(self, "online_requests", 0) + 1
        return original(self, function, device, *args, **kwargs)  # type: ignore[no-any-return]

    client_cls.ttp_request = ttp_request
    client_cls._secure_infer_original_request = original


def _client(crypten: ModuleType) -> Any:
    return crypten.mpc.provider.ttp_provider.TTPClient.get()


@contextlib.contextmanager
def record_plan(crypten: ModuleType) -> Iterator[list[PlanEntry]]:
    """Party 0: record the dealer requests made inside the block (they are still served)."""
    client = _client(crypten)
    plan: list[PlanEntry] = []
    client._plan_recording = plan
    try:
        yield plan
    finally:
        client._plan_recording = None


def prefetch(crypten: ModuleType, plan: list[PlanEntry], device: str | None = None) -> int:
    """Party 0: fetch the shares for every request of `plan` in one dealer round trip.

    Returns:
        The number of correlated values now queued.
    """
    client = _client(crypten)
    if not plan:
        return 0
    wire_plan = [[f, d, list(a), k] for f, d, a, k in plan]
    flat = client._secure_infer_original_request(BATCH_FUNCTION, device, wire_plan)
    shares = _split(flat)
    if len(shares) != len(plan):
        raise DealerPlanMismatch(f"dealer returned {len(shares)} shares for {len(plan)} requests")
    queue = getattr(client, "_prefetched", None)
    if queue is None:
        queue = client._prefetched = collections.deque()
    queue.extend(zip(plan, shares, strict=True))
    return len(shares)


def pending(crypten: ModuleType) -> int:
    """Prefetched values not used yet (party 0)."""
    queue = getattr(_client(crypten), "_prefetched", None)
    return len(queue) if queue else 0
