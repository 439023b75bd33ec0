"""The node's HE session table: bounded in count, expired when idle, unknown ids refused."""

from __future__ import annotations

import time

import pytest

from decentralized.errors import Overloaded, SessionMismatch
from decentralized.he_service import HELimits, HESessions

ALICE, BOB, CAROL = ("alice",), ("bob",), ("carol",)


def test_sessions_are_bounded_expire_when_idle_and_close() -> None:
    sessions = HESessions(HELimits(max_sessions=2, idle_s=10.0))
    with sessions.reserve(ALICE):
        a = sessions.add(object(), ALICE, ALICE)
    with sessions.reserve(BOB):  # an upload in progress counts against the limit
        with pytest.raises(Overloaded, match="limit 2"), sessions.reserve(CAROL):
            pass
        b = sessions.add(object(), BOB, BOB)
    assert len(a) >= 32 and a != b
    with pytest.raises(Overloaded, match="limit 2"), sessions.reserve(CAROL):
        pass
    assert sessions.close(b, BOB) and not sessions.close(b, BOB)
    with sessions.reserve(CAROL):
        c = sessions.add(object(), CAROL, CAROL)
    sessions.get(a, ALICE)  # touching keeps it alive
    sessions.expire(time.monotonic() + 11.0)
    assert len(sessions) == 0
    for sid, who in ((a, ALICE), (c, CAROL), ("x" * 32, ALICE)):
        with pytest.raises(SessionMismatch, match="unknown or expired"):
            sessions.get(sid, who)


def test_one_client_holds_at_most_half_of_the_sessions() -> None:
    """Sessions held and uploads in progress count against the caller's share, so one
    client cannot take every session (each holds tens of MB) from the others."""
    sessions = HESessions(HELimits(max_sessions=4, idle_s=10.0))
    with sessions.reserve(ALICE):
        first = sessions.add(object(), ALICE, ALICE)
    with sessions.reserve(ALICE):
        with pytest.raises(Overloaded, match=r"holds or is uploading 2 .*limit 2 per client"):
            with sessions.reserve(ALICE):
                pass
        sessions.add(object(), ALICE, ALICE)
    with sessions.reserve(BOB):  # the others' share is still there
        sessions.add(object(), BOB, BOB)
    assert sessions.close(first, ALICE)
    with sessions.reserve(ALICE):  # a closed session gives its place back
        pass


def test_a_session_answers_the_certificate_that_opened_it_only() -> None:
    """A session id that leaks to another mesh member does not let it use or close the
    session: it gets the answer an unknown id gets."""
    sessions = HESessions(HELimits())
    with sessions.reserve(ALICE):
        sid = sessions.add("context", ALICE, ALICE)
    for other in ((), ("bob",), ("alice", "bob")):
        with pytest.raises(SessionMismatch, match="unknown or expired"):
            sessions.get(sid, other)
        assert not sessions.close(sid, other)
    assert sessions.get(sid, ("alice",)) == "context"
    assert sessions.close(sid, ("alice",))
