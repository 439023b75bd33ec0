"""The client side of plaintext classification (`Classify` service): discovery and calls.

Nodes do not advertise classifiers in their gossip records; the client asks each live node
with `ListModels` (over mTLS) and keeps the answers for its lifetime (`Catalog`), dropping a
node's entry when a call to it fails. Threat model: a classifier node sees the inputs and its
outputs in the clear and may return anything; use `verify="fides"` to check answers.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from decentralized.client import MeshClient, error_from_rpc
from decentralized.errors import InvalidRequest, MeshError, PeerMisbehaved, UnknownModel
from decentralized.v1 import classify_pb2, classify_pb2_grpc
from secure_infer.results import ClassificationResult, Privacy

_LIST_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class NodeModels:
    """One node's `ListModels` answer."""

    address: str
    name: str
    node_id: str
    reply: classify_pb2.ListModelsReply

    def classifier(self, model: str) -> classify_pb2.ClassifierInfo | None:
        return next((c for c in self.reply.classifiers if c.name == model), None)

    def verifier(self, name: str) -> classify_pb2.VerifierInfo | None:
        return next((v for v in self.reply.verifiers if v.name == name), None)


class Catalog:
    """Which live node hosts which classifier / verifier, asked once per node."""

    def __init__(self, mesh: MeshClient) -> None:
        self._mesh = mesh
        self._known: dict[str, NodeModels] = {}  # address -> answer
        self._lock = threading.Lock()

    def forget(self, address: str) -> None:
        with self._lock:
            self._known.pop(address, None)

    def nodes(self) -> list[NodeModels]:
        """Every live node's models (asking the nodes not asked yet)."""
        out = []
        for rec in self._mesh.refresh():
            with self._lock:
                entry = self._known.get(rec.address)
            if entry is None:
                stub = classify_pb2_grpc.ClassifyStub(self._mesh.channel(rec.address, rec.name))
                try:
                    reply = stub.ListModels(
                        classify_pb2.ListModelsRequest(), timeout=_LIST_TIMEOUT_S
                    )
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.UNIMPLEMENTED:  # type: ignore[attr-defined]
                        continue  # unreachable now; asked again next time
                    reply = classify_pb2.ListModelsReply()  # hosts no classifiers
                entry = NodeModels(rec.address, rec.name, rec.node_id, reply)
                with self._lock:
                    self._known[rec.address] = entry
            out.append(entry)
        return out

    def pick(
        self, want: Callable[[NodeModels], bool], what: str, prefer: str | None = None
    ) -> NodeModels:
        """The least loaded node satisfying `want` (or the one named `prefer`). When none
        does, the nodes are asked again once: the answers may predate the model (a verifier
        provisioned since, a restarted node)."""

        def matching() -> list[NodeModels]:
            nodes = [n for n in self.nodes() if want(n)]
            if prefer is not None:
                nodes = [n for n in nodes if prefer in (n.name, n.address, n.node_id)]
            return nodes

        nodes = matching()
        if not nodes:
            with self._lock:
                self._known.clear()
            nodes = matching()
        if not nodes:
            raise UnknownModel(f"no live node hosts {what}" + (f" as {prefer!r}" if prefer else ""))
        loads = {r.address: r.load for r in self._mesh.refresh()}
        return min(nodes, key=lambda n: loads.get(n.address, 0))


def encode_inputs(inputs: Sequence[str] | np.ndarray | Any, kind: str) -> classify_pb2.Inputs:
    """Texts or images on the wire. Images: float32 (N, ...) in [0, 1], sent as they are (the
    node checks the shape and range); texts: a list of strings."""
    if kind == "text":
        if isinstance(inputs, str) or not isinstance(inputs, Sequence):
            raise InvalidRequest("text inputs must be a list of strings")
        return classify_pb2.Inputs(texts=list(inputs))
    if hasattr(inputs, "detach"):  # torch tensor
        inputs = inputs.detach().cpu().numpy()
    x = np.asarray(inputs)
    if x.ndim < 2 or x.shape[0] == 0 or not np.issubdtype(x.dtype, np.number):
        raise InvalidRequest(f"image inputs must be a numeric (N, ...) array, got {x.shape}")
    return classify_pb2.Inputs(images=x.astype("<f4").tobytes(), count=x.shape[0])


def call(channel: grpc.Channel, method: str, request: Any, timeout_s: float) -> Any:
    """One `Classify` RPC; gRPC errors become the mesh's domain errors."""
    stub = classify_pb2_grpc.ClassifyStub(channel)
    try:
        return getattr(stub, method)(request, timeout=timeout_s)
    except grpc.RpcError as exc:
        raise error_from_rpc(exc, f"Classify.{method}") from None


# Long-lived threads for the side of a request that runs beside the caller's own call. gRPC's
# `.future()` starts a new "channel spin" thread whenever its channel has no other call in
# flight, i.e. on every request here, and waits until that thread runs: 2-3 ms per call on a
# busy 2-core machine (cProfile of `verify="fides"` at batch 64, bench/fides_mesh.py's mesh).
def _new_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=16, thread_name_prefix="classify-rpc")


_THREADS = _new_pool()


def _after_fork() -> None:  # a forked child has none of the parent's threads: start afresh
    global _THREADS
    _THREADS = _new_pool()


os.register_at_fork(after_in_child=_after_fork)


def run_async(fn: Callable[[], Any]) -> Future:
    """Run `fn` (blocking RPCs and their checks) on a pooled thread; `result()` re-raises."""
    return _THREADS.submit(fn)


def decode_probs(reply: classify_pb2.ClassifyReply, n: int) -> np.ndarray:
    """(n, C) float32 from a reply; PeerMisbehaved if the size does not match."""
    c = reply.n_classes
    if c == 0 or len(reply.probs) != n * c * 4:
        raise PeerMisbehaved(f"classifier answered {len(reply.probs)} bytes for {n}x{c} floats")
    return np.frombuffer(reply.probs, dtype="<f4").reshape(n, c).copy()


def count(inputs: classify_pb2.Inputs) -> int:
    return len(inputs.texts) if inputs.texts else inputs.count


@contextlib.contextmanager
def forgetting(catalog: Catalog, address: str) -> Any:
    """Drop a node's catalog entry when a call to it fails with a mesh error."""
    try:
        yield
    except MeshError:
        catalog.forget(address)
        raise


def plain_privacy(channel: str, service: str) -> Privacy:
    """What the node saw in a plaintext classification (everything)."""
    return Privacy(
        mode="none (plaintext classification)",
        channel=channel,
        client_keeps="nothing beyond the channel's protection",
        node_views=(f"service node {service} saw every input and its output distribution",),
        caveats=(
            "no confidentiality: use privacy='he' for that",
            "no integrity: the node may return anything; use verify='fides' to check answers",
        ),
    )


def classify_plain(
    catalog: Catalog,
    mesh: MeshClient,
    model: str,
    inputs: Any,
    *,
    channel_label: str,
    node: str | None = None,
    timeout_s: float = 30.0,
) -> ClassificationResult:
    """The output distribution of `model` on `inputs`, from the least loaded node hosting it."""
    t0 = time.perf_counter()
    picked = catalog.pick(lambda n: n.classifier(model) is not None, f"classifier {model!r}", node)
    info = picked.classifier(model)
    assert info is not None  # noqa: S101 - picked for it
    wire = encode_inputs(inputs, info.input_kind)
    with forgetting(catalog, picked.address):
        reply = call(
            mesh.channel(picked.address, picked.name),
            "Classify",
            classify_pb2.ClassifyRequest(model=model, inputs=wire),
            timeout_s,
        )
    probs = decode_probs(reply, count(wire))
    predictions = probs.argmax(1)
    total = time.perf_counter() - t0
    return ClassificationResult(
        model=model,
        probs=probs,
        predictions=predictions,
        labels=tuple(info.labels[i] for i in predictions),
        node_id=reply.node_id,
        node_name=picked.name,
        model_digest=reply.model_digest,
        timings={"total_s": total, "service_s": total},
        privacy=plain_privacy(channel_label, picked.name),
    )


def result_dict(res: ClassificationResult) -> dict[str, Any]:
    """A classification result as a JSON-able dict (labels, verdicts, quote)."""
    examples: list[dict[str, Any]] = [{"label": lab} for lab in res.labels]
    for ex, check in zip(examples, res.checks, strict=False):  # no checks without Fides
        ex.update(
            attacked=check.attacked,
            score=check.score,
            threshold=check.threshold,
            verifier_label=check.verifier_label,
            reclassified=check.reclassified_label,
            exact=check.exact,
        )
    doc: dict[str, Any] = {
        "model": res.model,
        "node": res.node_name,
        "examples": examples,
        "timings": res.timings,
        "verify": res.verify,
    }
    if res.quote is not None:
        doc["tee"] = {
            "platform": res.quote.platform,
            "simulated": res.quote.simulated,
            "label": "SIMULATED (INSECURE)" if res.quote.simulated else res.quote.platform,
            "measurement": res.quote.measurement,
            "verifier_node": res.quote.verifier_node,
            "key_pinning": res.quote.key_pinning,
            "attestation": res.quote.attestation,
            "session_age_s": res.quote.session_age_s,
            "enrolled": res.quote.enrolled,
        }
        doc["threat_model"] = res.threat_model
    return doc
