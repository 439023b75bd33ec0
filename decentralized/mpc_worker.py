"""One rank of one MPC session, in its own process (spawned by `decentralized.mpc_service`).

CrypTen keeps its communicator, generators and dealer client in process-wide globals, so every
session rank runs in a fresh process: sessions cannot see each other's state, and a rank that
hangs or crashes is killed without touching the node.

The process talks to its node over a local pipe (`Connection`, the node's own child: nothing
from the network is unpickled there; the client's share arrives as raw bytes) and to the other
ranks over the session's `RelayTransport` (mTLS gRPC with the node's certificate).

Computation (`all-MiniLM-L6-v2`, the only model served under MPC so far):
    rank 0, 1: the client's additive shares of the (B, T, C) embedding-layer output (party 0's
        expands from a 16-byte AES-CTR seed, party 1's arrives as raw ring elements) ->
        `SecureBertEncoder` (6 layers) -> `mean_pool` under the public mask -> this rank's
        share of the (B, C) pooled output, returned to the client unopened.
    rank 2: CrypTen's TTP server (the dealer), until party 0 ends the session.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from decentralized.transport import Credentials

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # prctl(2)
MPC_MODELS = ("all-MiniLM-L6-v2",)  # models with a secure forward (mpc.models)
DEALER_RANK = 2
WORLD_SIZE = 3  # two computing parties and the dealer
THREAT_MODELS = ("input_private", "weights_private")


@dataclass(frozen=True, slots=True)
class Job:
    """What one rank needs to run, as the node validated it."""

    session_id: str
    rank: int
    model: str
    threat_model: str
    attention_mask: np.ndarray  # (B, T) int64, public
    rank_names: tuple[str, ...]
    peer_timeout_s: float
    listen_host: str
    hidden_size: int


def _encoder_state(model: str) -> dict[str, torch.Tensor]:
    from decentralized.models._files import minilm_dir
    from decentralized.models.bert import _read

    if model not in MPC_MODELS:
        raise ValueError(f"{model} is not served under MPC")
    return _read(minilm_dir(), "encoder.layer.")


def _party(crypten: Any, job: Job, first_input: bytes) -> dict[str, Any]:
    """Ranks 0 and 1: the secure encoder on the client's shares; returns this rank's output."""
    from mpc.models import SecureBertEncoder, ThreatModel, mean_pool
    from mpc.prg import AESCTRGenerator

    mask = torch.from_numpy(job.attention_mask)
    batch, tokens = mask.shape
    shape = (batch, tokens, job.hidden_size)
    if job.rank == 0:
        share = AESCTRGenerator(first_input).random_ring(shape)
    else:
        share = torch.frombuffer(bytearray(first_input), dtype=torch.int64).reshape(shape)
    threat = ThreatModel[job.threat_model.upper()]
    state = _encoder_state(job.model)
    if threat is ThreatModel.WEIGHTS_PRIVATE and job.rank != 0:
        state = {k: torch.zeros_like(v) for k, v in state.items()}  # only party 0's are used
    start = time.perf_counter()
    encoder = SecureBertEncoder.from_state_dict(state, threat_model=threat, owner=0)
    hidden = crypten.mpc.MPCTensor.from_shares(share)  # 16 fractional bits, as encoded
    pooled = mean_pool(encoder(hidden, mask), mask)  # (B, C) secret
    seconds = time.perf_counter() - start
    return {
        "output_share": pooled._tensor.share.contiguous().numpy().tobytes(),
        "output_shape": list(pooled.size()),
        "output_bound": encoder.output_bound,
        "seconds": seconds,
    }


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when the node process dies, so a killed
    node leaves no orphaned party computing on (and its peers see the rank go silent)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def run(conn: Connection, job: Job, creds: Credentials) -> None:
    """Process entry point. Messages on `conn` (plain dicts; see `decentralized.mpc_service`):

    out {"relay_address"} -> in {"peers", "input"} -> out {"ok", ...} | out {"error", "kind"}.
    """
    _die_with_parent()
    torch.set_num_threads(1)
    transport = None
    try:
        from decentralized.mpc_relay import RelayTransport
        from mpc.backends import crypten_comm
        from mpc.backends.crypten import load

        transport = RelayTransport(
            job.session_id,
            job.rank,
            WORLD_SIZE,
            creds,
            listen=f"{job.listen_host}:0",
            expect_names=dict(enumerate(job.rank_names)),
            send_timeout_s=job.peer_timeout_s,
        )
        conn.send({"relay_address": transport.address})
        message = conn.recv()
        transport.connect(dict(enumerate(message["peers"])))
        crypten = load()
        crypten.cfg.mpc.provider = "TTP"
        crypten_comm.install(
            transport, timeout_s=job.peer_timeout_s, ttp_idle_timeout_s=job.peer_timeout_s
        )
        result: dict[str, Any] = {"ok": True}
        start = time.perf_counter()
        if job.rank == DEALER_RANK:
            crypten.mpc.provider.ttp_provider.TTPServer()
        else:
            crypten.init()
            try:
                result.update(_party(crypten, job, message["input"]))
            except BaseException:
                with contextlib.suppress(Exception):  # the original error is what matters
                    crypten.uninit()
                raise
            crypten.uninit()
        stats = transport.stats
        result.update(
            bytes_sent=stats.bytes_sent,
            bytes_received=stats.bytes_received,
            rounds=stats.rounds,
        )
        result.setdefault("seconds", time.perf_counter() - start)
        transport.close()  # answers in-flight deliveries before the node reaps this process
        conn.send(result)
    except BaseException as exc:  # noqa: BLE001 - reported to the node, which maps it
        from mpc.comm import PeerDisconnected, PeerTimeout

        kind = "peer" if isinstance(exc, PeerDisconnected | PeerTimeout) else "internal"
        logger.debug("session rank failed:\n%s", traceback.format_exc())
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.close()
        with contextlib.suppress(OSError):  # the node is gone: nobody to tell
            conn.send({"error": f"{type(exc).__name__}: {exc}", "kind": kind})
