"""The spans a node serves and the generation sessions (KV caches) it holds for clients.

This is the domain object behind the Shard service: it validates a forward job against the
spans it serves, runs it on the node's device, and keeps per-session caches with an idle
timeout and a cap, so a client that disappears cannot pin memory forever.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from decentralized import _wire
from decentralized.errors import InvalidRequest, Overloaded, SessionMismatch, UnknownModel
from decentralized.models import SpanRuntime, get_spec, load_span

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardJob:
    """One validated forward request."""

    model: str
    start: int
    end: int
    hidden: torch.Tensor  # (B, T, H) float
    attention_mask: torch.Tensor | None  # (B, T) 0/1, encoders only
    session_id: str  # "" for stateless calls
    past_length: int  # tokens the client believes the session's cache holds
    input_digest: bytes = b""  # SHA-256 of the input as it travelled (for the receipt)
    caller: tuple[str, ...] = ()  # the caller's certificate names: a session's owner


@dataclass(slots=True)
class _Session:
    span: SpanRuntime
    cache: Any
    owner: tuple[str, ...] = ()  # certificate names of the client that started it
    last_used: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)


class ShardHost:
    """Loaded spans plus session state; thread-safe; forwards run on the caller's thread."""

    def __init__(
        self,
        spans: list[tuple[str, int, int]],
        device: torch.device,
        *,
        max_sessions: int = 64,
        session_idle_s: float = 300.0,
        max_tokens: int = 2048,
    ) -> None:
        self.device = device
        self.max_sessions = max_sessions
        self.session_idle_s = session_idle_s
        self.max_tokens = max_tokens
        self._spans: dict[tuple[str, int, int], SpanRuntime] = {}
        for model, start, end in spans:
            logger.info("loading %s layers [%d, %d) on %s", model, start, end, device)
            self._spans[(model, start, end)] = load_span(model, start, end, device)
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()

    def spans(self) -> list[tuple[str, int, int, str]]:
        """(model, start, end, weight digest) of every served span."""
        return [(m, s, e, rt.weight_digest) for (m, s, e), rt in self._spans.items()]

    @property
    def session_count(self) -> int:
        with self._lock:
            return len(self._sessions)

    def _span(self, model: str, start: int, end: int) -> SpanRuntime:
        get_spec(model)  # raises UnknownModel for models that do not exist at all
        span = self._spans.get((model, start, end))
        if span is None:
            served = [f"[{s}, {e})" for (m, s, e) in self._spans if m == model]
            raise UnknownModel(
                f"this node does not serve {model} layers [{start}, {end}); "
                f"it serves {', '.join(served) if served else 'no span of that model'}"
            )
        return span

    def validate(self, job: ForwardJob) -> SpanRuntime:
        """Check a job against the span it names; raises InvalidRequest/UnknownModel."""
        span = self._span(job.model, job.start, job.end)
        spec = get_spec(job.model)
        _wire.check_hidden(job.hidden, spec.hidden_size)
        if job.hidden.shape[1] > self.max_tokens:
            raise InvalidRequest(
                f"hidden: {job.hidden.shape[1]} tokens exceeds this node's limit {self.max_tokens}"
            )
        if job.attention_mask is not None:
            if span.stateful:
                raise InvalidRequest("attention_mask is not supported by decoder spans")
            _wire.check_mask(job.attention_mask, job.hidden)
        if job.session_id:
            if not span.stateful:
                raise InvalidRequest(f"{job.model} is an encoder: it takes no session_id")
            if not _wire.SESSION_ID_RE.match(job.session_id):
                raise InvalidRequest("session_id must be 16-64 characters of [A-Za-z0-9_-]")
            if job.hidden.shape[0] != 1:
                raise InvalidRequest("generation sessions take batch size 1")
        return span

    def forward(
        self,
        job: ForwardJob,
        span: SpanRuntime | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> torch.Tensor:
        """Run a job (validating it unless `span` comes from `validate`); with a session,
        extend its KV cache. A job without a session stops between layers once `stop()` is
        True (`Abandoned`); a session's step always runs whole (its cache must stay whole)."""
        span = span if span is not None else self.validate(job)
        if not job.session_id:
            return span.forward(job.hidden, job.attention_mask, None, stop)
        session = self._session(job, span)
        with session.lock:
            have = span.cache_length(session.cache)  # type: ignore[attr-defined]
            if have != job.past_length:
                raise SessionMismatch(
                    f"session {job.session_id[:8]}...: client expects {job.past_length} cached "
                    f"tokens, node holds {have}"
                )
            if have + job.hidden.shape[1] > self.max_tokens:
                raise InvalidRequest(f"session would exceed {self.max_tokens} tokens")
            out = span.forward(job.hidden, None, session.cache)
            session.last_used = time.monotonic()
            return out

    def _session(self, job: ForwardJob, span: SpanRuntime) -> _Session:
        with self._lock:
            self._expire_locked()
            session = self._sessions.get(job.session_id)
            if session is not None and session.owner != job.caller:
                # Session ids travel in receipts and verdicts: one that leaked must not let
                # another certificate read, extend or end the owner's cache. A step is
                # answered as for an unknown id; a new session cannot take the id over.
                if not job.past_length:
                    raise SessionMismatch(
                        f"session {job.session_id[:8]}... is taken: start a new session id"
                    )
                session = None
            if session is not None:
                if session.span is not span:
                    raise SessionMismatch(
                        f"session {job.session_id[:8]}... belongs to another span"
                    )
                return session
            if job.past_length != 0:
                raise SessionMismatch(
                    f"session {job.session_id[:8]}... is unknown here (expired or never "
                    f"started) but the client expects {job.past_length} cached tokens"
                )
            if len(self._sessions) >= self.max_sessions:
                raise Overloaded(f"this node holds its maximum of {self.max_sessions} sessions")
            session = _Session(span=span, cache=span.new_cache(), owner=job.caller)  # type: ignore[attr-defined]
            self._sessions[job.session_id] = session
            return session

    def end_session(self, session_id: str, caller: tuple[str, ...] = ()) -> bool:
        """End a session of the certificate `caller` (another's is left alone: False)."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None or session.owner != caller:
                return False
            del self._sessions[session_id]
            return True

    def _expire_locked(self) -> None:
        now = time.monotonic()
        for sid in [
            s for s, v in self._sessions.items() if now - v.last_used > self.session_idle_s
        ]:
            del self._sessions[sid]
            logger.info("session %s... expired after %.0f s idle", sid[:8], self.session_idle_s)

    def benchmark(self) -> float:
        """Measured throughput in layers per second for one token (used for routing)."""
        rates = []
        for (model, _, _), span in self._spans.items():
            hidden = torch.zeros(1, 1, get_spec(model).hidden_size)
            cache = span.new_cache() if span.stateful else None  # type: ignore[attr-defined]
            span.forward(hidden, None, cache)  # warm-up
            t0 = time.perf_counter()
            for _ in range(3):
                span.forward(hidden, None, span.new_cache() if span.stateful else None)  # type: ignore[attr-defined]
            dt = (time.perf_counter() - t0) / 3
            rates.append((span.end - span.start) / max(dt, 1e-6))
        return min(rates) if rates else 0.0
