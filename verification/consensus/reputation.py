"""Per-epoch reputation: a convicted node is excluded at once, for the rest of its epoch and the
next `exclusion_epochs - 1` epochs; repeated convictions ban it for good.

Epochs are fixed windows of `epoch_s` seconds of the given clock. "Excluded during the epoch,
not after it" means: the conviction takes effect for the very next span the client plans (in
the same request, and for every request after it), not at the next epoch boundary.

Events:
    agree      the node's output was in the majority of a checked span.
    convict    the node's output deviated from a strict majority (evidence: a signed verdict).
    fault      the node failed to answer (dead, timeout, malformed reply). Not proof of
               malice; `max_faults` faults within one epoch exclude it for that epoch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class NodeStanding:
    agreements: int = 0
    convictions: list[tuple[int, str]] = field(default_factory=list)  # (epoch, verdict id)
    faults: dict[int, int] = field(default_factory=dict)  # epoch -> count
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
        self._nodes: dict[str, NodeStanding] = {}
        self._lock = threading.Lock()

    def epoch(self) -> int:
        return int(self._clock() // self.epoch_s)

    def _get(self, node_id: str) -> NodeStanding:
        return self._nodes.setdefault(node_id, NodeStanding())

    def agree(self, node_id: str) -> None:
        with self._lock:
            self._get(node_id).agreements += 1

    def convict(self, node_id: str, verdict_id: str) -> None:
        with self._lock:
            st = self._get(node_id)
            st.convictions.append((self.epoch(), verdict_id))
            if len(st.convictions) >= self.ban_after:
                st.banned = True

    def fault(self, node_id: str) -> None:
        with self._lock:
            st = self._get(node_id)
            e = self.epoch()
            st.faults[e] = st.faults.get(e, 0) + 1

    def excluded(self, node_id: str) -> str | None:
        """Why the node is excluded now, or None when it is eligible."""
        with self._lock:
            st = self._nodes.get(node_id)
            if st is None:
                return None
            if st.banned:
                return f"banned after {len(st.convictions)} convictions"
            now = self.epoch()
            for epoch, verdict in reversed(st.convictions):
                if now - epoch < self.exclusion_epochs:
                    return f"convicted in epoch {epoch} (verdict {verdict[:12]})"
            if st.faults.get(now, 0) >= self.max_faults:
                return f"{st.faults[now]} faults in epoch {now}"
            return None

    def standing(self, node_id: str) -> dict[str, object]:
        with self._lock:
            st = self._nodes.get(node_id, NodeStanding())
            return {
                "agreements": st.agreements,
                "convictions": len(st.convictions),
                "faults_this_epoch": st.faults.get(self.epoch(), 0),
                "banned": st.banned,
            }
