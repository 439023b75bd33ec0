"""Reputation: a convicted node is excluded at once and for a full exclusion period from the
moment of its conviction; repeated convictions ban it for good.

Keys. Convictions, agreements and bans are kept per node **name** (on the mesh: the name its
mTLS node certificate carries), not per node id: an id is derived from an Ed25519 key the node
chooses itself, so a convicted operator could otherwise come back under a fresh key. Faults are
kept per node **id** (one signed record): a fault is not proof of anything, and anybody can
gossip a record that names another node and fails to answer; keying faults by name would let
such records exclude an honest name.

Periods. `epoch_s` is the exclusion period: a conviction at time t excludes the name until
t + `exclusion_epochs` * `epoch_s` (not until the end of a fixed clock window, which could be
a second away). `max_faults` faults within the last `epoch_s` seconds exclude a record until
the oldest of them is `epoch_s` old. `epoch()` (fixed windows of `epoch_s`) only labels verdicts.

Signatures. `agree`, `convict`, `excluded` and `standing` take the node's name first; the
record's id, where it matters, is the keyword-only `node_id` (a call written for the old
`excluded(node_id)` fails loudly instead of looking a name up by an id).

Events:
    agree      the node's output was in the majority of a checked span.
    convict    the node's output deviated from a strict majority (evidence: a signed verdict).
    fault      the node failed to answer (dead, timeout, refusal, malformed reply).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class NodeStanding:
    agreements: int = 0
    convictions: list[tuple[float, int, str]] = field(default_factory=list)  # (t, epoch, verdict)
    banned: bool = False


class Reputation:
    """Thread-safe standings of the nodes a client has used."""

    def __init__(
        self,
        *,
        epoch_s: float = 600.0,
        exclusion_epochs: int = 1,
        ban_after: int = 3,
        max_faults: int = 3,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if epoch_s <= 0 or exclusion_epochs < 1 or ban_after < 1 or max_faults < 1:
            raise ValueError("epoch_s > 0, exclusion_epochs >= 1, ban_after >= 1, max_faults >= 1")
        self.epoch_s = epoch_s
        self.exclusion_epochs = exclusion_epochs
        self.ban_after = ban_after
        self.max_faults = max_faults
        self._clock = clock
        self._names: dict[str, NodeStanding] = {}
        self._faults: dict[str, list[float]] = {}  # node id -> times of its faults
        self._lock = threading.Lock()

    def epoch(self) -> int:
        return int(self._clock() // self.epoch_s)

    def _get(self, name: str) -> NodeStanding:
        return self._names.setdefault(name, NodeStanding())

    def agree(self, name: str) -> None:
        with self._lock:
            self._get(name).agreements += 1

    def convict(self, name: str, verdict_id: str) -> None:
        with self._lock:
            st = self._get(name)
            now = self._clock()
            st.convictions.append((now, int(now // self.epoch_s), verdict_id))
            if len(st.convictions) >= self.ban_after:
                st.banned = True

    def fault(self, node_id: str) -> None:
        with self._lock:
            now = self._clock()
            self._prune(now)
            self._faults.setdefault(node_id, []).append(now)

    def _prune(self, now: float) -> None:
        """Forget faults older than a period, and records left with none (gossip can bring
        any number of records; their entries must not stay forever)."""
        for node_id in list(self._faults):
            self._recent_faults(node_id, now)

    def _recent_faults(self, node_id: str, now: float) -> list[float]:
        times = [t for t in self._faults.get(node_id, ()) if now - t < self.epoch_s]
        if times:
            self._faults[node_id] = times
        else:
            self._faults.pop(node_id, None)
        return times

    def tracked_faults(self) -> int:
        """How many records have faults within the last period (for tests and monitoring)."""
        with self._lock:
            self._prune(self._clock())
            return len(self._faults)

    def excluded(self, name: str, *, node_id: str = "") -> str | None:
        """Why the node (its name; its record's id for faults) is excluded now, or None."""
        with self._lock:
            now = self._clock()
            st = self._names.get(name)
            if st is not None:
                if st.banned:
                    return f"banned after {len(st.convictions)} convictions"
                period = self.exclusion_epochs * self.epoch_s
                for t, epoch, verdict in reversed(st.convictions):
                    if now - t < period:
                        return (
                            f"convicted in epoch {epoch} (verdict {verdict[:12]}), excluded for "
                            f"{period - (now - t):.0f} s more"
                        )
            faults = self._recent_faults(node_id, now) if node_id else []
            if len(faults) >= self.max_faults:
                return f"{len(faults)} faults in the last {self.epoch_s:.0f} s"
            return None

    def standing(self, name: str, *, node_id: str = "") -> dict[str, object]:
        with self._lock:
            st = self._names.get(name, NodeStanding())
            return {
                "agreements": st.agreements,
                "convictions": len(st.convictions),
                "recent_faults": len(self._recent_faults(node_id, self._clock())) if node_id else 0,
                "banned": st.banned,
            }
