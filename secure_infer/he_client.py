"""The client side of the HE mode (`privacy="he"`): local layers, keys, encryption, decryption.

    import grpc
    from secure_infer.he_client import classify_he

    with sync_channel(address, creds) as channel:
        res = classify_he(channel, "sentiment-minilm", ["A wonderful film."])
        print(res.predictions, res.labels, res.privacy)

Method: the client runs its local layers (all-MiniLM-L6-v2 sentence embeddings for text heads,
pixel scaling for MNIST), makes a CKKS key set (`mpc.he.params`), uploads the public evaluation
context once per session in 4 MiB chunks, encrypts the features, and decrypts the node's output
ciphertexts to logits. The secret key never leaves this process.

Layouts (`HESession(layout=...)`, default "auto"): batches of at least the head's
`packed_min_batch` examples (from ListHeads) go feature-major, up to 4,096 examples per batch:
one ciphertext per input feature, streamed with `EvaluatePacked`, one ciphertext per logit
back; smaller batches, and the remainder below that size, go one ciphertext per example
(`Evaluate`). Logits come back per example in input order either way.

Threat model: the node is semi-honest and sees only ciphertexts and public keys; the head's
weights are the node's and in plaintext on it; the client learns the logits, which leak about
the head; no integrity: a malicious node can return a wrong ciphertext and this client cannot
tell. A head deeper than the parameters allow is refused before anything is sent.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import tenseal as ts

from decentralized.client import error_from_rpc
from decentralized.errors import (
    InvalidRequest,
    MeshError,
    PeerMisbehaved,
    SessionMismatch,
    UnknownModel,
)
from decentralized.transport import STREAM_CHUNK_BYTES, Credentials, sync_channel
from decentralized.v1 import he_pb2, he_pb2_grpc
from mpc.he.data import minilm, mnist_features
from mpc.he.engine import (
    PACKED_LAYOUT,
    VECTOR_LAYOUT,
    decrypt,
    decrypt_packed,
    encrypt,
    encrypt_packed,
)
from mpc.he.errors import DepthExceeded, InvalidCiphertext
from mpc.he.params import DEFAULT_PARAMS, CKKSParams, public_context_bytes, secret_context
from secure_infer.results import Privacy

THREAT_MODEL = (
    "semi-honest node: it sees only CKKS ciphertexts and the client's public keys (public, "
    "relinearization, Galois), never the secret key; the head's weights are the node's and in "
    "plaintext on it; the client learns the output logits, which leak information about the "
    "head (no circuit privacy); no integrity: a malicious node can return a wrong ciphertext"
)
_MAX_REQUEST_BYTES = 24 * 1024 * 1024  # ciphertext bytes per Evaluate call
LAYOUTS = ("auto", VECTOR_LAYOUT, PACKED_LAYOUT)


@dataclass(frozen=True, slots=True, kw_only=True)
class HEClassifyResult:
    head: str
    predictions: np.ndarray  # (B,) int64 argmax of the decrypted logits
    labels: tuple[str, ...]  # label name of each prediction
    logits: np.ndarray  # (B, n_out) float64, decrypted (CKKS error ~1e-4 vs plaintext)
    node_id: str  # hex id of the node that evaluated
    head_digest: str  # SHA-256 of the head the node says it used (not verifiable: no integrity)
    params: str  # CKKS parameters and security level
    timings: dict[str, float]  # total, local, keygen, upload, encrypt, evaluate, compute, decrypt
    bytes_sent: dict[str, int]  # "context" (0 when a session was reused), "inputs"
    bytes_received: dict[str, int]  # "outputs"
    privacy: Privacy
    threat_model: str = THREAT_MODEL
    layouts: dict[str, int] = field(default_factory=dict)  # layout -> examples sent in it


def _packed_chunks(
    header: he_pb2.PackedHeader, inputs: list[bytes]
) -> Iterator[he_pb2.PackedChunk]:
    """The header, then whole ciphertexts, about STREAM_CHUNK_BYTES per message."""
    chunk = he_pb2.PackedChunk(header=header)
    size = 0
    for data in inputs:
        if chunk.ciphertexts and size + len(data) > STREAM_CHUNK_BYTES:
            yield chunk
            chunk, size = he_pb2.PackedChunk(), 0
        chunk.ciphertexts.append(data)
        size += len(data)
    yield chunk


def _chunks(data: bytes, params: CKKSParams) -> Iterator[he_pb2.ContextChunk]:
    for offset in range(0, max(len(data), 1), STREAM_CHUNK_BYTES):
        piece = data[offset : offset + STREAM_CHUNK_BYTES]
        if offset == 0:
            yield he_pb2.ContextChunk(params_name=params.name, total_bytes=len(data), data=piece)
        else:
            yield he_pb2.ContextChunk(data=piece)


class HESession:
    """One key set and one node session; reuse it for many calls (the context is sent once)."""

    def __init__(
        self,
        channel: grpc.Channel,
        *,
        params: CKKSParams = DEFAULT_PARAMS,
        timeout_s: float = 600.0,
        layout: str = "auto",
    ) -> None:
        """`layout`: "auto" (packed from the head's `packed_min_batch` examples on, when the
        node offers it), "vector" (one ciphertext per example) or "feature-major/1" (always
        packed; refused if the node does not offer it)."""
        if layout not in LAYOUTS:
            raise InvalidRequest(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self._stub = he_pb2_grpc.HEStub(channel)
        self.params = params
        self.timeout_s = timeout_s
        self.layout = layout
        self._context: ts.Context | None = None
        self._public = b""  # the serialized public context, kept for a re-upload
        self.session_id = ""
        self.context_bytes = 0
        self.keygen_s = 0.0
        self.upload_s = 0.0
        self._heads: dict[str, he_pb2.HeadInfo] | None = None
        self._node_params = ""
        self._node_layouts: tuple[str, ...] = ()
        self._max_batch = 0

    def __enter__(self) -> HESession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Any, request: Any, where: str) -> Any:
        try:
            return method(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, where) from None

    def heads(self) -> dict[str, he_pb2.HeadInfo]:
        """The node's heads (ListHeads)."""
        if self._heads is None:
            reply = self._call(self._stub.ListHeads, he_pb2.ListHeadsRequest(), "HE.ListHeads")
            self._node_params = reply.params_name
            self._node_layouts = tuple(reply.layouts)
            self._max_batch = min(reply.max_batch_examples, self.params.slots)
            self._heads = {h.name: h for h in reply.heads}
        return self._heads

    def head(self, name: str) -> he_pb2.HeadInfo:
        """A head's description; refuses one deeper than the parameters (nothing sent yet)."""
        info = self.heads().get(name)
        if info is None:
            raise UnknownModel(f"node serves no HE head {name!r}; it has {sorted(self.heads())}")
        if info.depth > self.params.depth:
            raise DepthExceeded(
                f"head {name!r} ({', '.join(info.layers)}) needs multiplicative depth "
                f"{info.depth}, but {self.params.name} supports {self.params.depth}; nothing sent"
            )
        return info

    def open(self) -> int:
        """Make keys (once) and upload the public context; returns the bytes sent (0 if open)."""
        if self.session_id:
            return 0
        self.heads()
        if self._node_params != self.params.name:
            raise InvalidRequest(
                f"node evaluates with {self._node_params!r}; this client uses {self.params.name!r}"
            )
        t0 = time.perf_counter()
        if self._context is None:
            self._context = secret_context(self.params)
            self._public = public_context_bytes(self._context)
        public = self._public
        t1 = time.perf_counter()
        try:
            reply = self._stub.OpenSession(_chunks(public, self.params), timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, "HE.OpenSession") from None
        self.keygen_s, self.upload_s = t1 - t0, time.perf_counter() - t1
        self.session_id, self.context_bytes = reply.session_id, len(public)
        return len(public)

    def _evaluate_call(self, head: str, batch: list[bytes]) -> he_pb2.EvaluateReply:
        request = he_pb2.EvaluateRequest(session_id=self.session_id, head=head, inputs=batch)
        return self._call(self._stub.Evaluate, request, "HE.Evaluate")

    def _use_packed(self, info: he_pb2.HeadInfo, n: int) -> bool:
        offered = PACKED_LAYOUT in self._node_layouts and info.packed_min_batch > 0
        if self.layout == PACKED_LAYOUT:
            if not offered:
                raise InvalidRequest(
                    f"the node does not evaluate {PACKED_LAYOUT!r} batches of {info.name!r}"
                )
            return True
        return self.layout == "auto" and offered and n >= info.packed_min_batch

    def evaluate(
        self, info: he_pb2.HeadInfo, features: np.ndarray
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Encrypt (B, input_dim) features, evaluate remotely, decrypt: (B, n_out) logits in
        input order. Batches of up to the node's `max_batch_examples` go packed where
        `_use_packed` says so, the rest one ciphertext per example."""
        if features.ndim != 2 or features.shape[1] != info.input_dim:
            raise InvalidRequest(
                f"head {info.name!r} takes (batch, {info.input_dim}) features, got "
                f"{tuple(features.shape)}"
            )
        if len(features) == 0:
            raise InvalidRequest(f"head {info.name!r}: no examples")
        self.open()
        stats: dict[str, Any] = {"encrypt_s": 0.0, "evaluate_s": 0.0, "layouts": {}}
        stats.update(compute_s=0.0, decrypt_s=0.0, sent=0, received=0, node_id="", digest="")
        logits = np.empty((len(features), len(info.labels)), dtype=np.float64)
        step = self._max_batch or self.params.slots
        for start in range(0, len(features), step):
            part = features[start : start + step]
            packed = self._use_packed(info, len(part))
            run = self._evaluate_packed if packed else self._evaluate_vectors
            logits[start : start + len(part)] = run(info, part, stats)
            layout = PACKED_LAYOUT if packed else VECTOR_LAYOUT
            stats["layouts"][layout] = stats["layouts"].get(layout, 0) + len(part)
        return logits, stats

    def _retrying(self, call: Any, stats: dict[str, Any]) -> Any:
        """`call()`; if the node lost the session, upload the context once more and retry."""
        try:
            return call()
        except SessionMismatch:  # the node expired or lost the session
            self.session_id = ""
            stats["context_resent"] = stats.get("context_resent", 0) + self.open()
            return call()

    def _evaluate_packed(
        self, info: he_pb2.HeadInfo, features: np.ndarray, stats: dict[str, Any]
    ) -> np.ndarray:
        assert self._context is not None  # noqa: S101 - set by open()
        n = len(features)
        t0 = time.perf_counter()
        inputs = encrypt_packed(self._context, features, self.params)
        stats["encrypt_s"] += time.perf_counter() - t0
        total = sum(len(x) for x in inputs)

        def call() -> he_pb2.PackedReply:
            header = he_pb2.PackedHeader(
                session_id=self.session_id,
                head=info.name,
                layout=PACKED_LAYOUT,
                batch_size=n,
                n_ciphertexts=len(inputs),
                total_bytes=total,
            )
            try:
                return self._stub.EvaluatePacked(
                    _packed_chunks(header, inputs), timeout=self.timeout_s
                )
            except grpc.RpcError as exc:
                raise error_from_rpc(exc, "HE.EvaluatePacked") from None

        t1 = time.perf_counter()
        reply = self._retrying(call, stats)
        stats["evaluate_s"] += time.perf_counter() - t1
        if reply.batch_size != n or reply.layout != PACKED_LAYOUT:
            raise PeerMisbehaved(
                f"node answered a {reply.layout!r} batch of {reply.batch_size}, sent {n}"
            )
        t2 = time.perf_counter()
        try:
            logits = decrypt_packed(self._context, list(reply.outputs), n, len(info.labels))
        except InvalidCiphertext as exc:
            raise PeerMisbehaved(f"node output: {exc}") from None
        stats["decrypt_s"] += time.perf_counter() - t2
        stats["compute_s"] += reply.compute_s
        stats["sent"] += total
        stats["received"] += sum(len(o) for o in reply.outputs)
        stats["node_id"], stats["digest"] = reply.node_id, reply.head_digest
        return logits

    def _evaluate_vectors(
        self, info: he_pb2.HeadInfo, features: np.ndarray, stats: dict[str, Any]
    ) -> np.ndarray:
        assert self._context is not None  # noqa: S101 - set by open()
        t0 = time.perf_counter()
        inputs = encrypt(self._context, features)
        stats["encrypt_s"] += time.perf_counter() - t0
        # Calls with a matmul layer take seconds per example: keep each call well inside the
        # deadline; dot-only heads take tens of ms per example.
        limit = 32 if "matmul" not in info.strategies else 4
        per_call = max(1, min(limit, _MAX_REQUEST_BYTES // max(len(inputs[0]), 1)))
        logits = []
        for start in range(0, len(inputs), per_call):
            batch = inputs[start : start + per_call]
            t1 = time.perf_counter()
            reply = self._retrying(lambda b=batch: self._evaluate_call(info.name, b), stats)
            stats["evaluate_s"] += time.perf_counter() - t1
            if len(reply.outputs) != len(batch):
                raise PeerMisbehaved(f"node answered {len(reply.outputs)} of {len(batch)} inputs")
            t2 = time.perf_counter()
            for out in reply.outputs:
                try:
                    logits.append(decrypt(self._context, list(out.ciphertexts), len(info.labels)))
                except InvalidCiphertext as exc:
                    raise PeerMisbehaved(f"node output: {exc}") from None
            stats["decrypt_s"] += time.perf_counter() - t2
            stats["compute_s"] += reply.compute_s
            stats["sent"] += sum(len(x) for x in batch)
            stats["received"] += sum(len(c) for o in reply.outputs for c in o.ciphertexts)
            stats["node_id"], stats["digest"] = reply.node_id, reply.head_digest
        return np.stack(logits)

    def close(self) -> None:
        """Drop the node's copy of the context (best effort) and forget the secret key."""
        if self.session_id:
            with contextlib.suppress(grpc.RpcError):  # the node expires idle sessions anyway
                self._stub.CloseSession(
                    he_pb2.CloseSessionRequest(session_id=self.session_id), timeout=10
                )
            self.session_id = ""
        self._context, self._public = None, b""


def pick_he_node(
    nodes: Sequence[tuple[str, str]], creds: Credentials, head: str
) -> tuple[str, str]:
    """The first (address, name) of `nodes` whose HE service lists `head` (nodes do not
    advertise HE heads in their records; this asks each with ListHeads over mTLS)."""
    for address, name in nodes:
        with sync_channel(address, creds, expect_name=name) as channel:
            try:
                if head in HESession(channel, timeout_s=10).heads():
                    return address, name
            except MeshError:
                continue
    raise UnknownModel(f"no live node serves the HE head {head!r}")


def local_features(input_kind: str, inputs: Any) -> np.ndarray:
    """The client's local layers: texts -> MiniLM embeddings, or pixels -> [0, 1] features."""
    if input_kind == "minilm-embedding":
        if isinstance(inputs, str) or not inputs or not all(isinstance(t, str) for t in inputs):
            raise InvalidRequest("this head takes a non-empty list of texts")
        return minilm()(list(inputs))
    if input_kind == "mnist-pixels":
        try:
            return mnist_features(np.asarray(inputs))
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
    raise InvalidRequest(f"unsupported head input kind {input_kind!r}")


def classify_he(
    channel: grpc.Channel,
    head: str,
    inputs: Sequence[str] | np.ndarray,
    *,
    session: HESession | None = None,
    channel_label: str = "mTLS (mesh CA)",
    layout: str = "auto",
) -> HEClassifyResult:
    """Classify `inputs` with an HE head served by the node behind `channel`.

    Pass a long-lived `session` to reuse keys and the uploaded context across calls; without
    one, a session is opened and closed for this call. `channel_label` describes the channel
    for the privacy statement. `layout` applies to a session made here (see `HESession`).
    """
    own = session is None
    sess = session or HESession(channel, layout=layout)
    t0 = time.perf_counter()
    try:
        info = sess.head(head)  # depth refusal happens here, before keys or bytes go out
        features = local_features(info.input_kind, inputs)
        t_local = time.perf_counter() - t0
        context_sent = sess.open()
        logits, stats = sess.evaluate(info, features)
    finally:
        if own:
            sess.close()
    predictions = logits.argmax(axis=1).astype(np.int64)
    return HEClassifyResult(
        head=head,
        predictions=predictions,
        labels=tuple(info.labels[i] for i in predictions),
        logits=logits,
        node_id=stats["node_id"],
        head_digest=stats["digest"],
        params=sess.params.describe(),
        timings={
            "total_s": time.perf_counter() - t0,
            "local_s": t_local,
            "keygen_s": sess.keygen_s if context_sent else 0.0,
            "upload_s": sess.upload_s if context_sent else 0.0,
            "encrypt_s": stats["encrypt_s"],
            "evaluate_s": stats["evaluate_s"],
            "compute_s": stats["compute_s"],
            "decrypt_s": stats["decrypt_s"],
        },
        bytes_sent={
            "context": context_sent + stats.get("context_resent", 0),
            "inputs": stats["sent"],
        },
        bytes_received={"outputs": stats["received"]},
        layouts=dict(stats["layouts"]),
        privacy=Privacy(
            mode="he",
            channel=channel_label,
            client_keeps="inputs, features, logits, predictions and the CKKS secret key",
            node_views=(
                f"node {stats['node_id'][:8]} saw CKKS ciphertexts of the features of "
                f"{len(predictions)} examples ({', '.join(stats['layouts'])}) and of their "
                f"logits, and the public evaluation keys",
            ),
            caveats=(
                "the head's weights are the node's and in plaintext on it",
                "the logits leak information about the head (extraction by many queries); "
                "no circuit privacy: CKKS noise and unused slots may leak more",
                "no integrity: a malicious node can return a wrong ciphertext undetected",
                "do not show the decrypted logits to the node's operator: CKKS decryptions "
                "carry noise that leaks information about the secret key (Li-Micciancio "
                "2021), and this client keeps its keys per node for the Client's lifetime",
            ),
        ),
    )
