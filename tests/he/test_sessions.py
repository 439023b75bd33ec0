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
