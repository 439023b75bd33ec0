"""Entry points loaded INSIDE enclave processes by the tests (imported there, never pickled).

Torch-free on purpose, so these enclaves start fast; the torch model is in `torch_apps`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable


def process_id(model: bytes) -> Callable[[bytes], bytes]:
    """A handler that answers with the model bytes, the input and the enclave's process id."""

    def handle(data: bytes) -> bytes:
        print("stdout noise from loaded code must not corrupt the protocol")
        return model + b"|" + data + b"|" + str(os.getpid()).encode()

    return handle


def failing(model: bytes) -> Callable[[bytes], bytes]:
    """A handler that raises on b"fail", sleeps on b"slow" and echoes anything else."""

    def handle(data: bytes) -> bytes:
        if data == b"fail":
            raise RuntimeError("handler failed on purpose")
        if data == b"slow":
            time.sleep(30)
        return data

    return handle


def strict(model: bytes) -> Callable[[bytes], bytes]:
    """Like `process_id`, but refuses a model that does not start with b"model"."""
    if not model.startswith(b"model"):
        raise ValueError("not a model this code can load")
    return process_id(model)
