"""`secure_infer.classify_client`'s pooled threads (the verifier's side of a Fides request)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from secure_infer.classify_client import run_async


def test_run_async_returns_and_reraises() -> None:
    assert run_async(lambda: 41 + 1).result(timeout=10) == 42

    def fail() -> None:
        raise ValueError("from the pool")

    with pytest.raises(ValueError, match="from the pool"):
        run_async(fail).result(timeout=10)


_FORKED = """
import os
from secure_infer.classify_client import run_async
assert run_async(lambda: 1).result(timeout=10) == 1  # the parent's pool now has a thread
pid = os.fork()
if pid == 0:
    try:
        os._exit(0 if run_async(lambda: 2).result(timeout=5) == 2 else 1)
    except BaseException:
        os._exit(1)
_, status = os.waitpid(pid, 0)
raise SystemExit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_run_async_works_in_a_forked_child() -> None:
    # A forked child has none of the parent's pool threads; an executor carried over would
    # queue the work forever (multiprocessing forks by default on Linux). In a fresh
    # interpreter, so that no other thread of the test process is forked mid-work.
    out = subprocess.run([sys.executable, "-c", _FORKED], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
