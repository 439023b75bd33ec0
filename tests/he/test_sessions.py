"""The node's HE session table: bounded in count, expired when idle, unknown ids refused."""

from __future__ import annotations

import time

import pytest

from decentralized.errors import Overloaded, SessionMismatch
from decentralized.he_service import HELimits, HESessions


def test_sessions_are_bounded_expire_when_idle_and_close() -> None:
    sessions = HESessions(HELimits(max_sessions=2, idle_s=10.0))
    with sessions.reserve():
        a = sessions.add(object())
    with sessions.reserve():  # an upload in progress counts against the limit
        with pytest.raises(Overloaded, match="limit 2"), sessions.reserve():
            pass
        b = sessions.add(object())
    assert len(a) >= 32 and a != b
    with pytest.raises(Overloaded, match="limit 2"), sessions.reserve():
        pass
    assert sessions.close(b) and not sessions.close(b)
    with sessions.reserve():
        c = sessions.add(object())
    sessions.get(a)  # touching keeps it alive
    sessions.expire(time.monotonic() + 11.0)
    assert len(sessions) == 0
    for sid in (a, c, "x" * 32):
        with pytest.raises(SessionMismatch, match="unknown or expired"):
            sessions.get(sid)


def test_a_session_answers_the_certificate_that_opened_it_only() -> None:
    """A session id that leaks to another mesh member does not let it use or close the
    session: it gets the answer an unknown id gets."""
    sessions = HESessions(HELimits())
    with sessions.reserve():
        sid = sessions.add("context", ("alice",))
    for other in ((), ("bob",), ("alice", "bob")):
        with pytest.raises(SessionMismatch, match="unknown or expired"):
            sessions.get(sid, other)
        assert not sessions.close(sid, other)
    assert sessions.get(sid, ("alice",)) == "context"
    assert sessions.close(sid, ("alice",))
