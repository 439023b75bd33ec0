"""One rank of one MPC session, in its own process (spawned by `decentralized.mpc_service`).

CrypTen keeps its communicator, generators and dealer client in process-wide globals, so every
session rank runs in a fresh process: sessions cannot see each other's state, and a rank that
hangs or crashes is killed without touching the node. The node keeps one such process warm
(`serve_spare`: imports done, no session state yet) and hands it the next session.

The process talks to its node over a local pipe (`Connection`, the node's own child: nothing
from the network is unpickled there; the client's share arrives as raw bytes) and to the other
ranks over the session's `RelayTransport` (mTLS gRPC with the node's certificate).

Computation:
    all-MiniLM-L6-v2, rank 0, 1: the client's additive shares of the (B, T, C) embedding-layer
        output (party 0's expands from a 16-byte AES-CTR seed, party 1's arrives as raw ring
        elements) -> `SecureBertEncoder` (6 layers) -> `mean_pool` under the public mask ->
        this rank's share of the (B, C) pooled output, returned to the client unopened.
    SmolLM2-135M-Instruct, rank 0, 1 (`Job.max_new_tokens` greedy steps): per step, shares of
        the client's input (the prompt's embedding rows, then the last token's; or, with the
        weights private, one-hot rows at scale 1 for the secret table) -> `SecureLlama` over a
        KV cache held in shares -> this rank's share of (token id, its logit), sent to the
        client unopened; the client reconstructs the token and shares the next step's input.
    MPC classifiers (`decentralized.mpc_classifiers`, an MPCViT checkpoint), rank 0, 1: shares
        of the client's (B, T, P) image patches -> `mpc.vit.secure.SecureViT` -> this rank's
        share of the (B, classes) logits, returned unopened.
    rank 2: CrypTen's TTP server (the dealer), until party 0 ends the session.

Dealer preprocessing: which correlated values a computation asks the dealer for depends only on
the public shapes, so rank 0 records the dealer requests of its computation (after the model is
built) and returns that plan to its node; the node keeps it (`MPCHost`, keyed by the public
shapes) and hands it to the rank 0 of the next session of the same shapes, which fetches the
planned shares in chunks of `DEALER_CHUNK_BYTES` (`mpc.backends.crypten_dealer.prefetch`): one
dealer round trip a chunk instead of one a request. A request that differs from the plan aborts
the session (`DealerPlanMismatch`) and the node forgets the plan.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import signal
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mpc.backends import crypten_dealer

if TYPE_CHECKING:
    from decentralized.transport import Credentials

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # prctl(2)
ENCODERS = ("all-MiniLM-L6-v2",)  # secure forward: mpc.models.SecureBertEncoder
DECODERS = ("SmolLM2-135M-Instruct",)  # secure greedy generation: mpc.models.llama.SecureLlama
MPC_MODELS = ENCODERS + DECODERS
DEALER_RANK = 2
WORLD_SIZE = 3  # two computing parties and the dealer
THREAT_MODELS = ("input_private", "weights_private")
DEALER_CHUNK_BYTES = crypten_dealer.CHUNK_BYTES  # party 0's prefetched shares held and sent at once


@dataclass(frozen=True, slots=True)
class Job:
    """What one rank needs to run, as the node validated it."""

    session_id: str
    rank: int
    model: str
    threat_model: str
    attention_mask: np.ndarray | None  # (B, T) int64, public; None for classifiers
    rank_names: tuple[str, ...]
    peer_timeout_s: float
    listen_host: str
    hidden_size: int
    vocab_size: int
    max_new_tokens: int = 0  # decoders: greedy steps; 0 for encoders
    checkpoint: str = ""  # MPC classifiers: the checkpoint path (no suffix)
    input_shape: tuple[int, ...] = ()  # MPC classifiers: (B, T, P)
    dealer_plan: Any = None  # rank 0: a `DealerPlan` of an earlier session of the same shapes
    advertise_host: str = ""  # the host peers dial for this rank's mailbox (else listen_host)

    def plan_key(self) -> tuple[Any, ...]:
        """What a computation's dealer requests depend on: the model and the public shapes."""
        mask_shape = () if self.attention_mask is None else tuple(self.attention_mask.shape)
        return (
            self.model,
            self.threat_model,
            self.checkpoint,
            mask_shape,
            self.input_shape,
            self.max_new_tokens,
        )

    def step_shape(self, step: int) -> tuple[int, int, int]:
        """Shape of a party's input share at `step` (encoders, classifiers: step 0 only)."""
        if self.checkpoint:
            batch, tokens, features = self.input_shape
            return (batch, tokens, features)
        if self.attention_mask is None:
            raise ValueError("encoder and decoder sessions have an attention mask")
        batch, tokens = self.attention_mask.shape
        if self.model in ENCODERS:
            return (batch, tokens, self.hidden_size)
        width = self.hidden_size if self.threat_model == "input_private" else self.vocab_size
        return (batch, tokens if step == 0 else 1, width)


@contextlib.contextmanager
def _dealer_planned(crypten: Any, job: Job, result: dict[str, Any]) -> Iterator[None]:
    """Rank 0, around the computation proper (after the model is built): serve the dealer's
    values from `job.dealer_plan` when there is one, else record the plan for the node."""
    if job.rank != 0:
        yield
        return
    with crypten_dealer.planned(crypten, job.dealer_plan, max_bytes=DEALER_CHUNK_BYTES) as use:
        yield
    if use.recorded is not None:
        result["dealer_plan"] = use.recorded
    result["dealer"] = {
        "planned": use.planned,
        "round_trips": use.round_trips,
        "online_requests": use.online_requests,
    }


def _encoder_state(model: str) -> dict[str, torch.Tensor]:
    from decentralized.models._files import minilm_dir, read_tensors

    if model not in ENCODERS:
        raise ValueError(f"{model} is not served under MPC as an encoder")
    return read_tensors(minilm_dir(), "encoder.layer.")


def _party(crypten: Any, job: Job, first_input: bytes) -> dict[str, Any]:
    """Ranks 0 and 1: the secure encoder on the client's shares; returns this rank's output."""
    from mpc.models import SecureBertEncoder, ThreatModel, mean_pool
    from mpc.prg import AESCTRGenerator

    shape = job.step_shape(0)
    mask = torch.from_numpy(job.attention_mask)  # type: ignore[arg-type] - step_shape checked
    if job.rank == 0:
        share = AESCTRGenerator(first_input).random_ring(shape)
    else:
        share = torch.frombuffer(bytearray(first_input), dtype=torch.int64).reshape(shape)
    threat = ThreatModel[job.threat_model.upper()]
    state = _encoder_state(job.model)
    if threat is ThreatModel.WEIGHTS_PRIVATE and job.rank != 0:
        state = {k: torch.zeros_like(v) for k, v in state.items()}  # only party 0's are used
    result: dict[str, Any] = {}
    start = time.perf_counter()
    encoder = SecureBertEncoder.from_state_dict(state, threat_model=threat, owner=0)
    with _dealer_planned(crypten, job, result):
        hidden = crypten.mpc.MPCTensor.from_shares(share)  # 16 fractional bits, as encoded
        pooled = mean_pool(encoder(hidden, mask), mask)  # (B, C) secret
    seconds = time.perf_counter() - start
    return result | {
        "output_share": pooled._tensor.share.contiguous().numpy().tobytes(),
        "output_shape": list(pooled.size()),
        "output_bound": encoder.output_bound,
        "seconds": seconds,
    }


def _classifier_party(crypten: Any, job: Job, first_input: bytes) -> dict[str, Any]:
    """Ranks 0 and 1 of a classification session: the secure ViT on the client's patches."""
    from mpc.models.bert import layer_norm_bound
    from mpc.prg import AESCTRGenerator
    from mpc.vit import checkpoint
    from mpc.vit.secure import SecureViT

    model, metadata = checkpoint.load(job.checkpoint)
    shape = job.step_shape(0)
    if job.rank == 0:
        share = AESCTRGenerator(first_input).random_ring(shape)
    else:
        share = torch.frombuffer(bytearray(first_input), dtype=torch.int64).reshape(shape)
    result: dict[str, Any] = {}
    start = time.perf_counter()
    secure = SecureViT(model, relu_bound=float(metadata["relu_bound"]))
    with _dealer_planned(crypten, job, result):
        logits = secure(crypten.mpc.MPCTensor.from_shares(share))  # (B, classes) secret
    seconds = time.perf_counter() - start
    # |logit_c| <= sum_j |W_cj| * (the final LayerNorm's bound) + |b_c|
    state = model.state_dict()
    norm = layer_norm_bound(state["norm.weight"], state["norm.bias"])
    bound = state["head.weight"].abs().sum(1) * norm + state["head.bias"].abs()
    return result | {
        "output_share": logits._tensor.share.contiguous().numpy().tobytes(),
        "output_shape": list(logits.size()),
        "output_bound": float(bound.max()),
        "seconds": seconds,
    }


def _decoder_party(crypten: Any, job: Job, conn: Connection, first_input: bytes) -> dict[str, Any]:
    """Ranks 0 and 1 of a generation session: `job.max_new_tokens` greedy steps.

    Each step's token shares go to the node as {"step", "token_share", "logit_bound"}; party 1
    then waits for the next step's input share ({"input"}) from the node; party 0 draws its
    next share from the same AES-CTR stream as the client.
    """
    from decentralized.models._files import smollm2_dir
    from mpc.models import ThreatModel
    from mpc.models.llama import SecureLlama
    from mpc.prg import AESCTRGenerator

    threat = ThreatModel[job.threat_model.upper()]
    zero = threat is ThreatModel.WEIGHTS_PRIVATE and job.rank != 0  # only the owner's are used
    model = SecureLlama.from_pretrained(smollm2_dir(), zero=zero, threat_model=threat, owner=0)
    precision = 0 if threat is ThreatModel.WEIGHTS_PRIVATE else None  # one-hot at scale 1
    stream = AESCTRGenerator(first_input) if job.rank == 0 else None
    cache = model.new_cache()
    payload = first_input
    result: dict[str, Any] = {}
    start = time.perf_counter()
    with _dealer_planned(crypten, job, result):
        for step in range(job.max_new_tokens):
            shape = job.step_shape(step)
            if stream is not None:
                share = stream.random_ring(shape)
            else:
                share = torch.frombuffer(bytearray(payload), dtype=torch.int64).reshape(shape)
            x = crypten.mpc.MPCTensor.from_shares(share, precision=precision)
            hidden = model.embed_one_hot(x) if precision == 0 else x
            token = model.token_shares(model.forward(hidden, cache))  # (2, B) secret
            bound = model.logits_bound if math.isfinite(model.logits_bound) else 0.0
            conn.send(
                {
                    "step": step,
                    "token_share": token._tensor.share.contiguous().numpy().tobytes(),
                    "token_shape": list(token.size()),
                    # 0: not known to this party (WEIGHTS_PRIVATE: the owner's alone)
                    "logit_bound": bound,
                }
            )
            if stream is None and step + 1 < job.max_new_tokens:
                payload = conn.recv()["input"]
    return result | {"seconds": time.perf_counter() - start}


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when the node process dies, so a killed
    node leaves no orphaned party computing on (and its peers see the rank go silent)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def serve_spare(conn: Connection) -> None:
    """Process entry point of a warm spare: import what a session needs (torch, CrypTen with
    its fixes, the relay, the secure models), then wait for the node to hand over one session
    ({"job", "creds"}) and run it as `run` would. The node keeps one spare ready, so a session
    does not wait for a fresh interpreter's imports; a closed pipe (the node did not need it)
    ends the spare quietly."""
    _die_with_parent()
    torch.set_num_threads(1)
    try:
        from decentralized import mpc_relay  # noqa: F401 - imported ahead for the session
        from decentralized.models import _files  # noqa: F401
        from mpc import models  # noqa: F401
        from mpc.backends.crypten import load
        from mpc.models import llama  # noqa: F401
        from mpc.vit import secure  # noqa: F401

        load()
        message = conn.recv()
    except (EOFError, OSError, KeyboardInterrupt):
        return
    run(conn, message["job"], message["creds"])


def _serve_dealer(crypten: Any) -> None:
    """The dealer's loop (CrypTen's TTP server, which takes requests from rank 0 only). An
    error while serving is attributed to the request's sender, rank 0, so that the client
    does not take it for the dealer failing on its own (`mpc_client._assess`)."""
    from mpc.comm import CommFailure

    try:
        crypten.mpc.provider.ttp_provider.TTPServer()
    except CommFailure:
        raise  # names its peer already
    except Exception as exc:
        raise RuntimeError(
            f"serving a dealer request of rank 0: {type(exc).__name__}: {exc}"
        ) from exc


def run(conn: Connection, job: Job, creds: Credentials) -> None:
    """Process entry point. Messages on `conn` (plain dicts; see `decentralized.mpc_service`):

    out {"relay_address"} -> in {"peers", "input"} -> [decoders, per step: out {"step", ...},
    party 1: in {"input"}] -> out {"ok", ...} | out {"error", "kind"}.
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
            advertise_host=job.advertise_host,
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
            _serve_dealer(crypten)
        else:
            crypten.init()
            try:
                if job.max_new_tokens:
                    result.update(_decoder_party(crypten, job, conn, message["input"]))
                elif job.checkpoint:
                    result.update(_classifier_party(crypten, job, message["input"]))
                else:
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
