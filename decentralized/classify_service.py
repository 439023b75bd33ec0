"""gRPC servicer of plaintext classifiers and of Fides verification models in enclaves.

A node started with `--classifier NAME=DIR` hosts a classifier directory
(`verification.fides.service_model`: a spec from a small known family + safetensors weights)
and answers `Classify` with the output distribution. With `--fides-verifier NAME=DIR` it starts
one enclave per verifier (`tee.ConfigfsTsmEnclave` inside an SEV-SNP/TDX guest; otherwise, or
with `--enclave simulated`, an INSECURE `tee.SimulatedEnclave`), loads the verification model
into it (`verification.fides.enclave_app`), and answers `Verify` with the enclave's output and
its quote, which binds the client's nonce, the code+model measurement and the digests of the
input the enclave ran on and of its output; or, within an attested session (`OpenSession`,
`tee.session`: one quote when the session opens), with the output and its HMAC tag.

With `--fides-sealed NAME=OWNER` the node opens a verifier SLOT instead: an enclave that runs
the verifier code with no model. Its owner (the CN of a mesh certificate) attests it
(`OfferProvisioning`: a quoted X25519 key under the code's "awaiting" measurement) and sends the
full verifier bundle sealed to that key (`Provision`, `tee.provisioning`); the host relays
ciphertext only, so on SEV-SNP/TDX hardware the node's operator never holds the verifier's
weights (a service that knew them could answer with the verifier's distribution unflagged).

Threat model: a classifier node sees inputs and outputs in the clear and is not trusted for
integrity (that is what Fides checks). The verifier node's host process sees the input in the
clear too and relays bytes to and from the enclave; it cannot change the enclave's output
without breaking the quote, but with a SIMULATED enclave the host holds the platform key and
could forge anything: simulated quotes prove only that the protocol runs. Errors map through
`decentralized.errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc.aio
import numpy as np
import torch

from decentralized.errors import (
    AlreadyProvisioned,
    Draining,
    EnclaveFailed,
    InvalidRequest,
    NotPermitted,
    Overloaded,
    SessionMismatch,
    UnknownModel,
)
from decentralized.service import ComputeQueue, _serving
from decentralized.transport import admission_key, caller_names
from decentralized.v1 import classify_pb2, classify_pb2_grpc
from tee import (
    ClientNotEnrolled,
    ConfigfsTsmEnclave,
    Enclave,
    EnclaveError,
    MalformedEvidence,
    SealedModel,
    SealedModelRejected,
    SimulatedEnclave,
    UnknownSession,
    tsm_available,
)
from tee.measurement import NONCE_SIZE
from tee.provisioning import parse_loaded_output
from tee.session import SESSION_ID_SIZE
from verification.fides import InvalidInput
from verification.fides.enclave_app import (
    DIGEST_SIZE,
    ENTRY,
    PROTOCOLS,
    encode_request,
    image_request,
    judge_request,
    max_sealed_size,
    prepare_request,
    verifier_bundle,
)
from verification.fides.nets import read_json
from verification.fides.service_model import Classifier, load_classifier
from verification.fides.verifier import TASKS

if TYPE_CHECKING:
    from decentralized.node import Node

logger = logging.getLogger(__name__)
HEALTH_NAME = "decentralized.v1.Classify"
MAX_INPUTS_PER_CALL = 256
# Classify, Verify and enclave calls admitted at once (received and waiting for, or running on,
# the classifier's or an enclave's thread), and per client certificate: more get "node busy".
MAX_QUEUED_CALLS = 16
REQUEST_TAG_SIZE = 48  # tee.session.request_tag: HMAC-SHA384
MAX_CERTIFICATE = 16 * 1024  # a client's mesh certificate, PEM
MAX_SIGNATURE = 256  # its ECDSA signature over a session's opening (DER)
ENCLAVE_KINDS = ("auto", "simulated", "configfs-tsm")


def _checked(msg: classify_pb2.Inputs, kind: str, shape: tuple[int, ...]) -> Any:
    """Texts (list) or images (a read-only float32 view (N, *shape)); InvalidRequest if bad."""
    if msg.texts and msg.images:
        raise InvalidRequest("send either texts or images, not both")
    n = len(msg.texts) if msg.texts else msg.count
    if n == 0:
        raise InvalidRequest("no inputs")
    if n > MAX_INPUTS_PER_CALL:
        raise Overloaded(f"{n} inputs in one call; the limit is {MAX_INPUTS_PER_CALL}")
    if kind == "text":
        if not msg.texts:
            raise InvalidRequest("this model takes texts")
        return list(msg.texts)
    if not msg.images:
        raise InvalidRequest("this model takes images (float32 bytes)")
    want = n * int(np.prod(shape)) * 4
    if len(msg.images) != want:
        raise InvalidRequest(
            f"{len(msg.images)} image bytes for {n} examples of shape {list(shape)} "
            f"(float32: expected {want})"
        )
    return np.frombuffer(msg.images, dtype="<f4").reshape(n, *shape)


def decode_inputs(msg: classify_pb2.Inputs, kind: str, shape: tuple[int, ...]) -> Any:
    """Texts (list) or images (float32 tensor (N, *shape)) from the wire; InvalidRequest if bad."""
    x = _checked(msg, kind, shape)
    return x if kind == "text" else torch.from_numpy(x.copy())


def enclave_request(inputs: classify_pb2.Inputs, task: str) -> bytes:
    """The bytes a verifier's enclave runs on for these wire inputs (`InvalidRequest` if bad).

    The enclave's quote or session tag binds their digest, so a client computes the same bytes
    from the inputs it sent (this function) and checks that the enclave answered its question.
    Images are passed as the wire's bytes (no decoding or copying beyond one concatenation).
    """
    if task == "text":
        try:
            return encode_request(_checked(inputs, task, ()), task)
        except InvalidInput as exc:
            raise InvalidRequest(str(exc)) from None
    x = _checked(inputs, task, (1, 28, 28))
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise InvalidRequest("image inputs must be finite and scaled to [0, 1]")
    return image_request(inputs.images, len(x))


@dataclass
class HostedVerifier:
    """A Fides verification model loaded in its own enclave, with its own worker thread."""

    name: str
    task: str
    n_classes: int
    enclave: Enclave
    executor: Executor
    protocol: str = "distribution"  # or "verdicts" (enclave_app: never reveals the distribution)
    enclave_kind: str = "auto"
    directory: Path | None = None  # the Fides directory it was loaded from; None: sealed
    owner: str = ""  # sealed: the certificate CN that provisioned it
    sealed_enrolment: bool = False  # sealed with an enrolment: the enclave admits its clients

    def info(self) -> classify_pb2.VerifierInfo:
        return classify_pb2.VerifierInfo(
            name=self.name,
            task=self.task,
            n_classes=self.n_classes,
            platform=_platform(self.enclave),
            simulated=self.enclave.simulated,
            measurement=self.enclave.measurement,
            simulated_platform_key=simulated_key(self.enclave),
            protocol=self.protocol,
            sealed_owner=self.owner,
        )

    def slot_info(self) -> classify_pb2.VerifierSlotInfo:
        """As an awaiting slot (a sealed verifier whose enclave stopped)."""
        return _slot_info(self.name, self.owner, self.enclave)


def _platform(enclave: Enclave) -> str:
    platform = enclave.platform
    return platform.value if platform is not None else "configfs-tsm"


def _slot_info(name: str, owner: str, enclave: Enclave) -> classify_pb2.VerifierSlotInfo:
    return classify_pb2.VerifierSlotInfo(
        name=name, owner=owner, platform=_platform(enclave), simulated=enclave.simulated
    )


def _lost(hosted: HostedVerifier) -> bool:
    """A sealed verifier whose enclave stopped: its model is gone, its next use turns it back
    into an awaiting slot (`ClassifyServicer._alive`), so it is listed as one."""
    return bool(hosted.owner) and not hosted.enclave.running


def simulated_key(enclave: Enclave) -> bytes:
    """A simulated enclave's platform public key (PEM); b"" for hardware enclaves."""
    if not isinstance(enclave, SimulatedEnclave):
        return b""
    from cryptography.hazmat.primitives import serialization

    return enclave.platform_public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _new_enclave(name: str, enclave_kind: str) -> Enclave:
    use_tsm = enclave_kind == "configfs-tsm" or (enclave_kind == "auto" and tsm_available())
    if use_tsm:
        return ConfigfsTsmEnclave()
    logger.warning(
        "Fides verifier %r runs in a SIMULATED enclave: INSECURE, its quotes prove nothing "
        "about isolation; the host can read inputs, the verifier's weights (even when they are "
        "provisioned sealed) and forge results",
        name,
    )
    return SimulatedEnclave()


@dataclass
class SealedSlot:
    """A verifier slot awaiting its model: an enclave with no model, which only `owner` (the
    CN of a mesh certificate) may provision (`tee.provisioning`)."""

    name: str
    owner: str
    enclave: Enclave
    executor: Executor
    enclave_kind: str = "auto"

    def info(self) -> classify_pb2.VerifierSlotInfo:
        return _slot_info(self.name, self.owner, self.enclave)


def start_slot(name: str, owner: str, enclave_kind: str) -> SealedSlot:
    """Start an enclave of `enclave_kind` for a verifier that `owner` provisions sealed."""
    enclave = _new_enclave(name, enclave_kind)
    logger.info("Fides verifier slot %r awaits its sealed model from %r", name, owner)
    return SealedSlot(
        name=name,
        owner=owner,
        enclave=enclave,
        executor=ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"enclave-{name}"),
        enclave_kind=enclave_kind,
    )


def start_verifier(
    name: str, directory: Path, enclave_kind: str, protocol: str = "distribution"
) -> HostedVerifier:
    """Start an enclave of `enclave_kind` and load the Fides verifier of `directory` into it,
    for `protocol` ("distribution" or "verdicts", `verification.fides.enclave_app`)."""
    config = read_json(directory / "fides.json")
    bundle = verifier_bundle(directory, protocol)
    enclave = _new_enclave(name, enclave_kind)
    try:
        measurement = enclave.load(ENTRY, bundle)
    except BaseException:
        enclave.close()
        raise
    logger.info(
        "Fides verifier %r loaded (protocol %s), measurement %s…",
        name,
        protocol,
        measurement.hex()[:16],
    )
    return HostedVerifier(
        name=name,
        task=str(config["task"]),
        n_classes=int(config["nets"]["verifier"]["n_classes"]),
        enclave=enclave,
        executor=ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"enclave-{name}"),
        protocol=protocol,
        enclave_kind=enclave_kind,
        directory=directory,
    )


class ClassifyServicer(classify_pb2_grpc.ClassifyServicer):
    """ListModels, Classify and Verify over the node's classifiers and enclaved verifiers."""

    def __init__(
        self,
        node: Node,
        classifiers: dict[str, Classifier],
        verifiers: dict[str, HostedVerifier],
        slots: dict[str, SealedSlot] | None = None,
        clients: dict[str, frozenset[str]] | None = None,
    ) -> None:
        self._node = node
        self._classifiers = classifiers
        self._verifiers = verifiers
        self._slots = dict(slots or {})
        # verifier -> the client certificate CNs it answers (--fides-client); absent: everyone
        self._clients = dict(clients or {})
        self._restarting = asyncio.Lock()  # one enclave restart at a time
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="classify")
        self._queue = ComputeQueue(
            "classification and enclave calls", MAX_QUEUED_CALLS, MAX_QUEUED_CALLS // 2
        )

    async def _run(
        self, context: grpc.aio.ServicerContext, executor: Executor, fn: Any, *args: Any
    ) -> Any:
        if self._node.draining:
            raise Draining("node is shutting down; retry on another node")
        with self._queue.admit(admission_key(context)) as place:
            return await place.run(self._node, executor, fn, *args)

    async def ListModels(  # noqa: N802 - gRPC method name
        self, request: classify_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> classify_pb2.ListModelsReply:
        async with _serving("Classify.ListModels", context, self._node.metrics):
            return classify_pb2.ListModelsReply(
                classifiers=[
                    classify_pb2.ClassifierInfo(
                        name=name,
                        input_kind=c.input_kind,
                        input_shape=list(c.input_shape),
                        labels=list(c.labels),
                        arch=c.describe(),
                        digest=c.digest,
                    )
                    for name, c in self._classifiers.items()
                ],
                verifiers=[self._listed(v) for v in self._verifiers.values() if not _lost(v)],
                max_inputs_per_call=MAX_INPUTS_PER_CALL,
                slots=[
                    *(s.info() for s in self._slots.values()),
                    *(v.slot_info() for v in self._verifiers.values() if _lost(v)),
                ],
            )
        raise AssertionError("unreachable")  # pragma: no cover - abort raises

    async def Classify(  # noqa: N802 - gRPC method name
        self, request: classify_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> classify_pb2.ClassifyReply:
        async with _serving("Classify.Classify", context, self._node.metrics):
            model = self._classifiers.get(request.model)
            if model is None:
                raise UnknownModel(f"unknown classifier {request.model!r}; see ListModels")
            x = decode_inputs(request.inputs, model.input_kind, model.input_shape)
            t0 = time.perf_counter()
            try:
                probs = await self._run(
                    context, self._executor, self.predict, request.model, model, x
                )
            except InvalidInput as exc:
                raise InvalidRequest(str(exc)) from None
            self._node.metrics.bytes_in.inc(len(request.inputs.images))
            return classify_pb2.ClassifyReply(
                probs=probs.astype("<f4").tobytes(),
                n_classes=model.n_classes,
                compute_s=time.perf_counter() - t0,
                node_id=self._node.identity.node_id,
                model_digest=model.digest,
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def predict(self, name: str, model: Classifier, x: Any) -> np.ndarray:
        """Classifier `name`'s (N, C) distribution: the one place a reply's numbers come from."""
        return model.probs(x).numpy()

    def _listed(self, hosted: HostedVerifier) -> classify_pb2.VerifierInfo:
        info = hosted.info()
        info.enrolled_only = hosted.name in self._clients or hosted.sealed_enrolment
        return info

    def _lookup(self, name: str) -> HostedVerifier:
        hosted = self._verifiers.get(name)
        if hosted is None:
            if name in self._slots:
                raise UnknownModel(f"verifier {name!r} awaits its sealed model (Provision)")
            raise UnknownModel(f"unknown verifier {name!r}; see ListModels")
        return hosted

    def _verifier(self, name: str, context: grpc.aio.ServicerContext) -> HostedVerifier:
        """Verifier `name`, if the caller may use it: a verifier with enrolled clients
        (--fides-client) answers only their certificates' CNs. Without that, any mesh client may
        query it, including a service's operator, which can then answer its own clients with the
        verifier's output (docs/fides.md, threat model)."""
        hosted = self._lookup(name)
        enrolled = self._clients.get(name)
        if enrolled is not None:
            names = caller_names(context)
            if not enrolled.intersection(names):
                raise NotPermitted(
                    f"verifier {name!r} answers enrolled clients only; the caller's "
                    f"certificate is {names or 'absent'}"
                )
        return hosted

    async def _alive(self, hosted: HostedVerifier) -> HostedVerifier:
        """`hosted`, or its replacement if its enclave stopped (crashed, killed, timed out):
        a verifier loaded from disk is loaded into a new enclave (same bundle, so the same
        measurement; clients re-open their sessions); a sealed one's model died with its
        enclave, so it becomes an awaiting slot again (`UnknownModel` until re-provisioned)."""
        if hosted.enclave.running:
            return hosted
        async with self._restarting:
            current = self._verifiers.get(hosted.name)
            if current is not hosted:  # replaced while this request waited for the lock
                return self._lookup(hosted.name)
            loop = asyncio.get_running_loop()
            _stop(hosted)
            del self._verifiers[hosted.name]
            if hosted.directory is None:
                slot = await loop.run_in_executor(
                    None, start_slot, hosted.name, hosted.owner, hosted.enclave_kind
                )
                self._slots[hosted.name] = slot
                logger.warning(
                    "verifier %r: its enclave stopped and its sealed model with it; the slot "
                    "awaits %r's provisioning again",
                    hosted.name,
                    hosted.owner,
                )
                return self._lookup(hosted.name)  # UnknownModel: awaits its sealed model
            try:
                new = await loop.run_in_executor(
                    None,
                    start_verifier,
                    hosted.name,
                    hosted.directory,
                    hosted.enclave_kind,
                    hosted.protocol,
                )
            except Exception as exc:  # noqa: BLE001 - reported; the verifier stays unlisted
                logger.exception("verifier %r: its enclave stopped; restart failed", hosted.name)
                raise EnclaveFailed(
                    f"verifier {hosted.name!r}: its enclave stopped and could not be restarted: "
                    f"{type(exc).__name__}: {exc}"
                ) from None
            self._verifiers[hosted.name] = new
            logger.warning(
                "verifier %r: its enclave stopped; restarted from %s (measurement %s…)",
                hosted.name,
                hosted.directory,
                new.enclave.measurement.hex()[:16],
            )
            return new

    async def _live_slot(self, slot: SealedSlot) -> SealedSlot:
        """`slot`, with a new enclave (and so a new provisioning key) if its enclave stopped."""
        if slot.enclave.running:
            return slot
        async with self._restarting:
            current = self._slots.get(slot.name)
            if current is not slot:
                if current is None:
                    raise AlreadyProvisioned(f"verifier {slot.name!r} already holds its model")
                return current
            _stop(slot)
            new = await asyncio.get_running_loop().run_in_executor(
                None, start_slot, slot.name, slot.owner, slot.enclave_kind
            )
            self._slots[slot.name] = new
            logger.warning("verifier slot %r: its enclave stopped; started a new one", slot.name)
            return new

    async def _enclave(
        self, hosted: HostedVerifier, fn: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        """Run `fn(enclave)` on the verifier's own worker thread; enclave errors map here.

        An enclave found stopped is restarted first (`_alive`); one that dies under the call is
        restarted and the call tried once more there (a session the new enclave does not
        hold then gets FAILED_PRECONDITION, and the client re-opens it)."""
        for attempt in (0, 1):
            hosted = await self._alive(hosted)
            try:
                return await self._run(context, hosted.executor, fn, hosted.enclave)
            except UnknownSession as exc:
                raise SessionMismatch(f"verifier {hosted.name!r}: {exc}") from None
            except ClientNotEnrolled as exc:  # the enclave's sealed enrolment refused it
                raise NotPermitted(f"verifier {hosted.name!r}: {exc}") from None
            except EnclaveError as exc:
                if attempt or hosted.enclave.running:
                    raise EnclaveFailed(f"verifier {hosted.name!r}: {exc}") from None
                logger.warning("verifier %r: its enclave died under a call: %s", hosted.name, exc)
        raise AssertionError("unreachable")  # pragma: no cover

    async def Verify(  # noqa: N802 - gRPC method name
        self, request: classify_pb2.VerifyRequest, context: grpc.aio.ServicerContext
    ) -> classify_pb2.VerifyReply:
        async with _serving("Classify.Verify", context, self._node.metrics):
            hosted = self._verifier(request.verifier, context)
            session = request.session_id
            if session and (len(session) != SESSION_ID_SIZE or not 0 < request.seq < 1 << 64):
                raise InvalidRequest(
                    f"a session id is {SESSION_ID_SIZE} bytes and its sequence numbers start at 1"
                )
            if not session:
                _check_nonce(request.nonce)
            if len(request.request_tag) not in (0, REQUEST_TAG_SIZE):
                raise InvalidRequest(f"request_tag is {REQUEST_TAG_SIZE} bytes (HMAC-SHA384)")
            data = verify_data(request, hosted)
            t0 = time.perf_counter()
            if session:
                result = await self._enclave(
                    hosted,
                    lambda e: e.run_in_session(
                        data, session_id=session, seq=request.seq, request_tag=request.request_tag
                    ),
                    context,
                )
                return classify_pb2.VerifyReply(
                    output=result.output,
                    tag=result.tag,
                    seq=result.seq,
                    compute_s=time.perf_counter() - t0,
                    node_id=self._node.identity.node_id,
                )
            attested = await self._enclave(
                hosted, lambda e: e.run(data, nonce=request.nonce), context
            )
            return classify_pb2.VerifyReply(
                output=attested.output,
                quote_json=attested.quote.to_json(),
                compute_s=time.perf_counter() - t0,
                node_id=self._node.identity.node_id,
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def OpenSession(  # noqa: N802 - gRPC method name
        self, request: classify_pb2.AttestedSessionRequest, context: grpc.aio.ServicerContext
    ) -> classify_pb2.AttestedSessionReply:
        async with _serving("Classify.OpenSession", context, self._node.metrics):
            hosted = self._verifier(request.verifier, context)
            _check_nonce(request.nonce)
            if len(request.client_public) != 32:
                raise InvalidRequest("client_public must be a 32-byte X25519 public key")
            if (
                len(request.client_certificate) > MAX_CERTIFICATE
                or len(request.identity_signature) > MAX_SIGNATURE
            ):
                raise InvalidRequest(
                    f"client_certificate is at most {MAX_CERTIFICATE} bytes and "
                    f"identity_signature at most {MAX_SIGNATURE}"
                )
            offer = await self._enclave(
                hosted,
                lambda e: e.open_session(
                    request.client_public,
                    nonce=request.nonce,
                    certificate=request.client_certificate,
                    signature=request.identity_signature,
                ),
                context,
            )
            return classify_pb2.AttestedSessionReply(
                offer=offer.offer,
                quote_json=offer.quote.to_json(),
                node_id=self._node.identity.node_id,
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def _slot(self, name: str, context: grpc.aio.ServicerContext) -> SealedSlot:
        """The awaiting slot `name`, if the caller's certificate names its owner."""
        slot = self._slots.get(name)
        if slot is None:
            if name in self._verifiers:
                raise AlreadyProvisioned(f"verifier {name!r} already holds its model")
            raise UnknownModel(f"no sealed verifier slot {name!r} on this node")
        if self._node.creds.insecure_dev:
            return slot  # plaintext loopback development: no certificates to check
        names = caller_names(context)
        if slot.owner not in names:
            raise NotPermitted(
                f"only {slot.owner!r} may provision verifier {name!r}; the caller is {names}"
            )
        return slot

    async def _awaiting_slot(self, name: str, context: grpc.aio.ServicerContext) -> SealedSlot:
        """The live awaiting slot `name` for its owner: a sealed verifier whose enclave died
        becomes a slot again here too (not only when a client next uses it)."""
        hosted = self._verifiers.get(name)
        if hosted is not None and hosted.directory is None and not hosted.enclave.running:
            with contextlib.suppress(UnknownModel):  # it now awaits its model
                await self._alive(hosted)
        return await self._live_slot(self._slot(name, context))

    async def _slot_enclave(
        self, slot: SealedSlot, fn: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        try:
            return await self._run(context, slot.executor, fn, slot.enclave)
        except SealedModelRejected as exc:
            if slot.name in self._verifiers:  # a concurrent Provision got there first
                message = f"verifier {slot.name!r} already holds its model"
                raise AlreadyProvisioned(message) from None
            raise InvalidRequest(f"verifier {slot.name!r}: {exc}") from None
        except EnclaveError as exc:
            raise EnclaveFailed(f"verifier slot {slot.name!r}: {exc}") from None

    async def OfferProvisioning(  # noqa: N802 - gRPC method name
        self, request: classify_pb2.ProvisioningOfferRequest, context: grpc.aio.ServicerContext
    ) -> classify_pb2.ProvisioningOfferReply:
        async with _serving("Classify.OfferProvisioning", context, self._node.metrics):
            slot = await self._awaiting_slot(request.verifier, context)
            _check_nonce(request.nonce)
            offer = await self._slot_enclave(
                slot, lambda e: e.offer_provisioning(ENTRY, nonce=request.nonce), context
            )
            return classify_pb2.ProvisioningOfferReply(
                offer=offer.offer,
                quote_json=offer.quote.to_json(),
                entry=ENTRY,
                simulated_platform_key=simulated_key(slot.enclave),
                node_id=self._node.identity.node_id,
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def Provision(  # noqa: N802 - gRPC method name
        self, request: classify_pb2.ProvisionRequest, context: grpc.aio.ServicerContext
    ) -> classify_pb2.ProvisionReply:
        async with _serving("Classify.Provision", context, self._node.metrics):
            slot = await self._awaiting_slot(request.verifier, context)
            _check_nonce(request.nonce)
            if len(request.owner_public) != 32 or not request.sealed_model:
                raise InvalidRequest("a 32-byte X25519 owner key and a sealed model are needed")
            if request.task not in TASKS or request.protocol not in PROTOCOLS:
                raise InvalidRequest(
                    f"task must be one of {TASKS} and protocol one of {PROTOCOLS}, got "
                    f"{request.task!r} and {request.protocol!r}"
                )
            if not 2 <= request.n_classes <= 100_000:
                raise InvalidRequest(f"n_classes must lie in [2, 100000], got {request.n_classes}")
            sealed = SealedModel(owner_public=request.owner_public, ciphertext=request.sealed_model)
            result = await self._slot_enclave(
                slot, lambda e: e.load_sealed(sealed, nonce=request.nonce), context
            )
            hosted = HostedVerifier(
                name=slot.name,
                task=request.task,
                n_classes=request.n_classes,
                enclave=slot.enclave,
                executor=slot.executor,
                protocol=request.protocol,
                enclave_kind=slot.enclave_kind,
                owner=slot.owner,
                sealed_enrolment=_sealed_enrolment(result.output),
            )
            del self._slots[slot.name]
            self._verifiers[slot.name] = hosted
            logger.info(
                "Fides verifier %r provisioned sealed by %r (protocol %s), measurement %s…",
                slot.name,
                slot.owner,
                request.protocol,
                slot.enclave.measurement.hex()[:16],
            )
            return classify_pb2.ProvisionReply(
                output=result.output,
                quote_json=result.quote.to_json(),
                verifier=self._listed(hosted),
                node_id=self._node.identity.node_id,
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        for hosted in [*self._verifiers.values(), *self._slots.values()]:
            _stop(hosted)
        self._executor.shutdown(wait=False)


def _sealed_enrolment(loaded: bytes) -> bool:
    """Whether the enclave's answer to a sealed load (`tee.provisioning.loaded_output`) names an
    enrolment (the node's reading, for listings: the owner checks the quote itself)."""
    try:
        return bool(parse_loaded_output(loaded)[2])
    except MalformedEvidence:
        return False


def _stop(hosted: HostedVerifier | SealedSlot) -> None:
    """End an enclave and its worker thread."""
    hosted.enclave.close()
    hosted.executor.shutdown(wait=False)


def _check_nonce(nonce: bytes) -> None:
    if len(nonce) < NONCE_SIZE:
        raise InvalidRequest(f"nonce must be at least {NONCE_SIZE} bytes")


def verify_data(request: classify_pb2.VerifyRequest, hosted: HostedVerifier) -> bytes:
    """The bytes the enclave runs on for a Verify request (`InvalidRequest` if malformed or in
    the wrong phase for the verifier's protocol). The client builds the same bytes itself."""
    phase = request.phase
    if hosted.protocol == "distribution":
        if phase != classify_pb2.DISTRIBUTION:
            raise InvalidRequest(
                f"verifier {hosted.name!r} returns distributions (protocol 'distribution'): "
                "phase must be DISTRIBUTION"
            )
        return enclave_request(request.inputs, hosted.task)
    if phase == classify_pb2.PREPARE:
        return prepare_request(enclave_request(request.inputs, hosted.task))
    if phase != classify_pb2.JUDGE:
        raise InvalidRequest(
            f"verifier {hosted.name!r} answers verdicts only (protocol 'verdicts'): "
            "send PREPARE, then JUDGE"
        )
    if len(request.request_digest) != DIGEST_SIZE:
        raise InvalidRequest(f"request_digest must be {DIGEST_SIZE} bytes")
    row = 4 * hosted.n_classes
    n = len(request.service_probs) // row
    if not 0 < n <= MAX_INPUTS_PER_CALL or len(request.service_probs) != n * row:
        raise InvalidRequest(
            f"service_probs must be 1..{MAX_INPUTS_PER_CALL} rows of {hosted.n_classes} "
            "little-endian float32"
        )
    if not 0 < len(request.sealed) <= max_sealed_size(n, hosted.n_classes):
        raise InvalidRequest("sealed distribution of the wrong size for service_probs")
    return judge_request(request.sealed, request.request_digest, request.service_probs)


def add_classify_servicer(
    server: grpc.aio.Server,
    node: Node,
    classifiers: tuple[tuple[str, str], ...],
    verifiers: tuple[tuple[str, str], ...],
    enclave_kind: str = "auto",
    fides_protocol: str = "distribution",
    sealed: tuple[tuple[str, str], ...] = (),
    clients: tuple[tuple[str, str], ...] = (),
) -> ClassifyServicer:
    """Load the classifiers, start the verifiers' enclaves and the sealed slots' (`sealed`:
    (name, owner CN) pairs), register the service. `clients`: (verifier, client CN) pairs; a
    verifier named there answers only those CNs.

    Returns the servicer; the node calls `close()` on it when it stops (ends the enclaves)."""
    loaded = {name: load_classifier(Path(d)) for name, d in classifiers}
    hosted: dict[str, HostedVerifier] = {}
    slots: dict[str, SealedSlot] = {}
    try:
        for name, d in verifiers:
            hosted[name] = start_verifier(name, Path(d), enclave_kind, fides_protocol)
        for name, owner in sealed:
            slots[name] = start_slot(name, owner, enclave_kind)
    except BaseException:
        for h in [*hosted.values(), *slots.values()]:
            h.enclave.close()
        raise
    enrolled: dict[str, set[str]] = {}
    for name, cn in clients:
        enrolled.setdefault(name, set()).add(cn)
    servicer = ClassifyServicer(
        node, loaded, hosted, slots, {n: frozenset(cns) for n, cns in enrolled.items()}
    )
    classify_pb2_grpc.add_ClassifyServicer_to_server(servicer, server)
    return servicer
