"""The client side of `verify="fides"`: a service answer checked by an attested verifier.

Protocol (per call): the client sends the same input CONCURRENTLY to a service node
(`Classify`: the distribution it will use) and to a verifier node (`Verify`: the Fides
verification model inside the node's enclave). How the enclave's answer is attested
(`FidesOptions.attestation`):

    "session" (default)  once per verifier node, `OpenSession`: the enclave's quote binds an
                         X25519 key exchange with the client (`tee.session`); every `Verify`
                         then carries an HMAC under the session key over the client's sequence
                         number, the digest of the input the enclave ran on and its output.
                         Re-opened after `max_session_age_s` or when the enclave lost it.
                         The opening carries the client's mesh certificate and its signature:
                         an enclave whose owner sealed an enrolment with the verifier
                         (`tee.enrolment`) admits enrolled clients only, then requires an
                         HMAC on every request and encrypts every answer to the client.
    "request"            a fresh nonce per call; the quote binds nonce, input and output
                         (refused by an enrolled enclave).

What the enclave returns (`FidesOptions.protocol`, the verifier node's `--fides-protocol`):

    "distribution" (default)  the verifier's distribution; the client runs the detector.
    "verdicts"           a sealed distribution first (PREPARE, concurrent with the service),
                         then, given the service's answer, only flags and re-classified
                         labels (JUDGE): the verifier's distribution never leaves the enclave,
                         at the cost of one more round trip after the service answers.

Either way the client checks the quote (`tee.verify_quote`: the nonce, the input and output
digests, the code+model measurement against the one computed from the client's own copy of the
published Fides directory, the platform evidence against pinned roots or keys, and single use
of the nonce), computes the enclave's input from what it sent itself, then runs Fides' detector
and re-classifier locally on the two distributions. A session saves the platform's quote (a
firmware call on SEV-SNP/TDX) and the client's signature and chain checks on every request.

Threat model (also in every result's `threat_model`):
    untrusted  the service node (its model, its inputs after arrival, its answer); the
               verifier node's host (it relays bytes; tampering breaks the quote)
    trusted    the client; the enclave platform (SEV-SNP/TDX hardware and firmware, whose
               roots the client pins) and the published verifier model it measures; the mesh CA
    leaks      both nodes see the input in the clear; the verifier node's enclave protects it
               from the host only on real hardware; the service node sees the input and its
               own answer, the verifier node sees the verifier's answer
    secret     the verification model's weights: a service operator that knows them can answer
               with the verifier's own distribution (~10 % of its cost) and is NEVER flagged
               (bench/fides_mimic.py). Clients get the client bundle, without them; the host
               of the verifier's enclave holds them: read from its disk (--fides-verifier),
               or provisioned by their owner sealed to the attested enclave (--fides-sealed,
               secure_infer.fides_provision: on SEV-SNP/TDX the host never reads them; a
               simulated enclave's host can). The service and the verifier node must not
               collude. The
               verifier's FUNCTION is not secret: every result carries its distribution, so
               an operator posing as a client can distil a copy (3,000 queries: flagged on
               3.6 % of queries, honest 1.6 %; bench/fides_mimic.py)
    relay      a verifier that answers every mesh client lets the service's operator ask it
               about the client's input and answer with its distribution (never flagged);
               a verifier node can answer enrolled clients only (--fides-client: the
               node's word) and a sealed verifier's enclave can itself (fides provision
               --enrol); results say which
    SIMULATED  with a simulated enclave NOTHING is protected or proven: the host holds the
               platform key; it is accepted only with `allow_simulated=True` and is labelled
               in the result, its repr and the CLI
    limits     detection is statistical (rates in docs/fides.md): an attack that keeps the
               answer close to the honest distribution can pass
"""

from __future__ import annotations

import functools
import hashlib
import logging
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from decentralized.classify_service import enclave_request
from decentralized.errors import InvalidRequest, PeerMisbehaved, SessionMismatch, UnknownModel
from decentralized.transport import Credentials
from decentralized.v1 import classify_pb2
from secure_infer.classify_client import (
    Catalog,
    NodeModels,
    call,
    count,
    decode_probs,
    encode_inputs,
    forgetting,
    run_async,
)
from secure_infer.results import ClassificationResult, FidesCheck, Privacy, QuoteSummary
from tee import (
    AttestationError,
    AttestedSession,
    BadChain,
    CodeRef,
    MalformedEvidence,
    NonceStore,
    Policy,
    Quote,
    SessionKey,
    SnpTcb,
    TrustAnchors,
    VerifiedQuote,
    code_digest,
    enclave_measurement,
    input_digest,
    load_platform_key,
    model_digest,
    sign_identity,
    verify_quote,
)
from verification.fides import FidesError, FidesVerifier, InvalidInput
from verification.fides.checks import probs_array
from verification.fides.enclave_app import (
    ENTRY,
    PROTOCOLS,
    decode_reply,
    decode_verdicts,
    image_request,
    judge_request,
    prepare_request,
    request_digest,
    verifier_bundle,
)

logger = logging.getLogger(__name__)


def threat_model(
    protocol: str,
    enrolled_only: bool = False,
    in_enclave: bool = False,
    labels_published: bool = True,
) -> str:
    """The threat model a Fides result states, for the verifier node's `protocol`, whether
    that node answers enrolled clients only (`--fides-client`: the node's word), whether the
    enclave itself does (`in_enclave`: its sealed enrolment, attested in the session), and
    whether the client bundle published the label names (else the service's are used)."""
    relay = (
        "the verifier's enclave serves only the clients its owner enrolled when sealing it "
        "(checked inside the attested enclave, which authenticates every request and encrypts "
        "every answer: its host can neither query it nor read this client's answers), so a "
        "service's operator that is not enrolled cannot relay the verifier's answers unless "
        "an enrolled client does it for them"
        if in_enclave
        else "the verifier node answers enrolled clients only (its operator's word, enforced by "
        "the node, not the enclave), so a service's operator it did not enrol cannot relay the "
        "verifier's answers as its own unless an enrolled client or the verifier's host does it "
        "for them"
        if enrolled_only
        else "the verifier node answers every mesh client, so a service's operator can query it "
        "with the client's input and answer with the verifier's distribution (never flagged) "
        "or, under protocol 'verdicts', pre-screen an attacked answer and send it only when it "
        "passes; enrol clients on the verifier node (--fides-client) to prevent it"
    )
    leak = (
        "not secret: the verifier's function (this result carries its distribution; whoever "
        "may query the verifier, the service's operator too if the verifier is open or enrols "
        "it, can distil a copy from a few thousand queries and evade detection: protocol "
        "'verdicts' keeps it in the enclave)"
        if protocol == "distribution"
        else "the verifier's distribution stayed in the enclave (protocol 'verdicts'), but the "
        "flags and re-classified labels still leak its labels query by query"
    )
    return (
        "untrusted: the service node (model, inputs after arrival, answer) and the verifier "
        "node's host; trusted: the client, the enclave platform (hardware roots pinned by the "
        "client) and the Fides verifier whose measurement the client computes from its client "
        "bundle; secret: the verifier's weights, which the service's operator must not know "
        "(with them it can answer with the verifier's own distribution unflagged) nor learn "
        "from a colluding verifier node (which holds them unless their owner provisioned them "
        f"sealed to a hardware enclave); {relay}; {leak}; leaks: both nodes see the input in "
        "the clear (the verifier's enclave hides it from its host only on real SEV-SNP/TDX "
        "hardware); a SIMULATED enclave protects and proves nothing; detection is statistical (see "
        "docs/fides.md for measured rates); "
        + (
            "label names: the client bundle's (the service node's listing must match them)"
            if labels_published
            else "label names: as the service node lists them, UNCHECKED (the client bundle "
            "publishes none: Fides checks class indices, and a service could list its names "
            "permuted)"
        )
    )


@dataclass(frozen=True)
class GuestPins:
    """What the client pins about the confidential guest a hardware enclave runs in.

    On SEV-SNP and TDX the hardware signs only the guest's launch state and 64 bytes the guest
    chooses (REPORT_DATA); the enclave's code+model measurement is a claim the guest's own
    software makes there. Any guest (a rented confidential VM will do) can produce genuine
    evidence binding the published measurement to a forged output. So hardware evidence is
    accepted only from a pinned guest image: SNP MEASUREMENT (which covers the kernel, initrd
    and command line when the guest boots with measured direct boot), TDX MRTD **and** RTMR0-2
    (MRTD measures only the TD's firmware). Unpinned, every hardware quote is refused, unless
    `allow_unpinned` (testing only; the result's `key_pinning` says so).

    Args:
        launch_measurements: SNP MEASUREMENT / TDX MRTD values (48 B) of the verifier's image.
        tdx_rtmrs: RTMR0 || RTMR1 || RTMR2 values (144 B) of that image (TDX).
        min_snp_tcb, min_tdx_tee_tcb_svn: minimum TCB (`tee.Policy`).
        allow_unpinned: accept hardware evidence from any guest image.
    """

    launch_measurements: frozenset[bytes] | None = None
    tdx_rtmrs: frozenset[bytes] | None = None
    min_snp_tcb: SnpTcb | None = None
    min_tdx_tee_tcb_svn: bytes | None = None
    allow_unpinned: bool = False

    def policy_fields(self) -> dict[str, Any]:
        """The `tee.Policy` fields these pins set (an empty allow list refuses everything)."""
        refuse = None if self.allow_unpinned else frozenset()
        return {
            "allowed_launch_measurements": (
                refuse if self.launch_measurements is None else self.launch_measurements
            ),
            "allowed_tdx_rtmrs": refuse if self.tdx_rtmrs is None else self.tdx_rtmrs,
            "min_snp_tcb": self.min_snp_tcb,
            "min_tdx_tee_tcb_svn": self.min_tdx_tee_tcb_svn,
        }

    def describe(self) -> str:
        """How the guest image is pinned, for results and logs."""
        if self.launch_measurements is None and self.tdx_rtmrs is None:
            return (
                "guest image NOT pinned (GuestPins.allow_unpinned): any confidential guest's "
                "evidence is accepted"
                if self.allow_unpinned
                else "guest image not pinned: hardware evidence refused"
            )
        return "guest image pinned (launch measurement" + (
            ", TDX RTMR0-2)" if self.tdx_rtmrs is not None else ")"
        )

    def digest_parts(self) -> list[bytes]:
        return [
            b"launch",
            *sorted(self.launch_measurements or ()),
            b"pinned" if self.launch_measurements is not None else b"unpinned",
            b"rtmrs",
            *sorted(self.tdx_rtmrs or ()),
            b"pinned" if self.tdx_rtmrs is not None else b"unpinned",
            str(self.min_snp_tcb).encode(),
            self.min_tdx_tee_tcb_svn or b"no tdx minimum",
            b"any guest" if self.allow_unpinned else b"pinned guests only",
        ]


@dataclass(frozen=True, slots=True, kw_only=True)
class FidesOptions:
    """How to check a classification with Fides.

    Args:
        bundle: the published CLIENT bundle for the model (`export_client_bundle`,
            `secure-infer fides export-client`): the client runs its detector and
            re-classifier, and computes from it the enclave measurement it accepts (code digest
            of `verification.fides.enclave_app` + the verifier's model digest). A full bundle
            (with the verifier's weights) works too, with a warning: those weights must stay
            secret from the service's operator.
        verifier: the verifier's name on the nodes (default: the model's name).
        allow_simulated: accept INSECURE simulated quotes (development only); results are
            labelled SIMULATED.
        simulated_keys: PEM platform keys of simulated enclaves to pin. If empty and
            `allow_simulated`, the key the verifier node announces is pinned on first use
            (which adds nothing: a simulated enclave is insecure anyway; stated in the result).
        trust: pinned AMD/Intel roots for hardware quotes.
        guest: the hardware guest image to accept (`GuestPins`): by default none is pinned
            and every hardware quote is refused (a simulated enclave is unaffected).
        service_node, verifier_node: pin nodes by name, address or id (default: least loaded).
        timeout_s: per RPC.
        attestation: "session" (one quote per session, an HMAC per result; the default) or
            "request" (a quote per request); see the module docstring.
        max_session_age_s: re-open (re-attest) a session older than this.
        protocol: "distribution" (the enclave returns the verifier's distribution and the
            client judges; the default) or "verdicts" (the enclave judges and returns only the
            flags and re-classified labels, so that clients, the service's operator among
            them, cannot distil the verifier from its answers; one more round trip to the
            enclave after the service answers). Verifier nodes run one or the other
            (`node run --fides-protocol`); the client bundle pins both measurements.
    """

    bundle: Path
    verifier: str | None = None
    allow_simulated: bool = False
    simulated_keys: tuple[bytes, ...] = ()
    trust: TrustAnchors = field(default_factory=TrustAnchors)
    guest: GuestPins = field(default_factory=GuestPins)
    service_node: str | None = None
    verifier_node: str | None = None
    timeout_s: float = 30.0
    attestation: str = "session"
    max_session_age_s: float = 300.0
    protocol: str = "distribution"

    def __post_init__(self) -> None:
        if self.attestation not in ATTESTATIONS:
            raise InvalidRequest(f"attestation must be one of {ATTESTATIONS}")
        if self.protocol not in PROTOCOLS:
            raise InvalidRequest(f"protocol must be one of {PROTOCOLS}")
        if self.max_session_age_s <= 0:
            raise InvalidRequest("max_session_age_s must be positive")


ATTESTATIONS = ("session", "request")


class FidesChecker:
    """The client's Fides state for one bundle: detector, expected measurement, nonces, and
    the attested sessions open with verifier nodes."""

    def __init__(self, bundle: Path) -> None:
        self.fides = FidesVerifier.load(bundle)
        if not self.fides.client_only:
            logger.warning(
                "%s is a FULL Fides bundle (it holds the verification model); publish the "
                "client bundle instead (`secure-infer fides export-client`): a service that "
                "knows the verifier's weights can evade Fides",
                bundle,
            )
        self.measurements = {p: _measurement(self.fides, bundle, p) for p in PROTOCOLS}
        names = self.fides.metadata.get("labels")
        # the label names the bundle's publisher gives the classes (None: not published)
        self.labels: tuple[str, ...] | None = None if names is None else tuple(map(str, names))
        self.nonces = NonceStore()
        # (verifier node address, verifier name, acceptance rules) -> open session: a session
        # is reused only under the rules its opening quote was checked against
        self._sessions: dict[tuple[str, str, bytes], tuple[AttestedSession, str]] = {}
        self._lock = threading.Lock()

    def session(
        self, key: tuple[str, str, bytes], max_age_s: float
    ) -> tuple[AttestedSession, str] | None:
        with self._lock:
            found = self._sessions.get(key)
            if found is not None and found[0].age_s() > max_age_s:
                del self._sessions[key]
                return None
            return found

    def keep(self, key: tuple[str, str, bytes], session: AttestedSession, pinning: str) -> None:
        with self._lock:
            self._sessions[key] = (session, pinning)

    def drop(self, key: tuple[str, str, bytes]) -> None:
        with self._lock:
            self._sessions.pop(key, None)


def published_measurement(bundle: Path, protocol: str = "distribution") -> bytes | None:
    """The enclave measurement a verifier node must report for the Fides directory `bundle`
    (a full bundle: computed from the verifier's weights; a client bundle: from the model
    digest it records)."""
    return _measurement(FidesVerifier.load(bundle), bundle, protocol)


def _measurement(fides: FidesVerifier, bundle: Path, protocol: str) -> bytes | None:
    """None when a client bundle predates protocol "verdicts" (it records no digest for it)."""
    if fides.client_only:
        digest = fides.verdicts_model_digest
        if protocol == "distribution":
            digest = fides.verifier_model_digest
        if digest is None:
            return None
        model = bytes.fromhex(digest)
    else:
        model = bytes.fromhex(_model_digests(bundle)[protocol])
    return enclave_measurement(code_digest(CodeRef.parse(ENTRY)), model)


def _model_digests(full: Path) -> dict[str, str]:
    """Hex enclave model digest of the full bundle `full`, per protocol."""
    return {p: model_digest(verifier_bundle(full, p)).hex() for p in PROTOCOLS}


def export_client_bundle(full: Path, out: Path, labels: Sequence[str] | None = None) -> Path:
    """Write the CLIENT bundle of the full Fides directory `full` into `out`: what clients get.

    It holds the detector, the re-classifier, the threshold and the verifier's enclave model
    digest, and NOT the verification model: a service operator that had the verifier's weights
    could answer with the verifier's own distribution and never be flagged (`bench/
    fides_mimic.py`), so only the host of the verifier's enclave gets the full bundle.

    `labels` (default: the full bundle's, if it records them) are the class names clients
    accept: a service node listing other names is refused."""
    fides = FidesVerifier.load(full)
    if fides.client_only:
        raise InvalidRequest(f"{full} is already a client bundle")
    if labels is not None:
        if len(labels) != fides.n_classes:
            raise InvalidRequest(f"{len(labels)} label names for {fides.n_classes} classes")
        fides.metadata["labels"] = [str(name) for name in labels]
    digests = _model_digests(full)
    return fides.save_client(out, digests["distribution"], digests["verdicts"])


def client_bundle(full: Path) -> Path:
    """`full`'s client bundle in the sibling directory `fides-client`, (re)written unless it
    is there already for the same verifier weights, threshold and nets."""
    out = full.parent / "fides-client"
    try:
        current = FidesVerifier.load(out)
        digests = _model_digests(full)
        same = (
            current.client_only
            and current.verifier_model_digest == digests["distribution"]
            and current.verdicts_model_digest == digests["verdicts"]
            and all(
                (out / f"{n}.safetensors").read_bytes() == (full / f"{n}.safetensors").read_bytes()
                for n in ("detector", "reclassifier")
            )
            and current.threshold == FidesVerifier.load(full).threshold
        )
    except (OSError, ValueError, FidesError):
        same = False
    if not same:
        if out.exists():
            shutil.rmtree(out)
        export_client_bundle(full, out)
    return out


def classify_fides(
    catalog: Catalog,
    mesh: Any,
    model: str,
    inputs: Any,
    options: FidesOptions,
    checker: FidesChecker,
    channel_label: str,
) -> ClassificationResult:
    """See the module docstring; raises `tee.AttestationError` subclasses on a bad quote."""
    t0 = time.perf_counter()
    vname = options.verifier or model
    if checker.measurements[options.protocol] is None:
        raise InvalidRequest(
            f"the client bundle {options.bundle} records no measurement for protocol "
            f"{options.protocol!r}: export it again (secure-infer fides export-client)"
        )
    service = catalog.pick(
        lambda n: n.classifier(model) is not None, f"classifier {model!r}", options.service_node
    )

    # Never the service's own node: its operator would hold the verifier (weights on disk,
    # or at least the enclave's host) and could answer with its distribution unflagged.
    # Among the others, those listing the published measurement first (a node with another
    # verifier, however lightly loaded, is not picked over them); if none does, the listing
    # may be stale or wrong, and attestation decides.
    def hosts_verifier(n: NodeModels, published: bytes | None = None) -> bool:
        v = n.verifier(vname)
        return (
            v is not None
            and (v.protocol or "distribution") == options.protocol
            and n.node_id != service.node_id
            and (published is None or v.measurement == published)
        )

    what = (
        f"Fides verifier {vname!r} (protocol {options.protocol!r}) on a node other than the "
        f"service's ({service.name})"
    )
    try:
        verifier = catalog.pick(
            functools.partial(hosts_verifier, published=checker.measurements[options.protocol]),
            what,
            options.verifier_node,
        )
    except UnknownModel:
        verifier = catalog.pick(hosts_verifier, what, options.verifier_node)
    info, vinfo = service.classifier(model), verifier.verifier(vname)
    assert info is not None and vinfo is not None  # noqa: S101 - picked for them
    if vinfo.task != info.input_kind or vinfo.n_classes != len(info.labels):
        raise InvalidRequest(
            f"verifier {vname!r} ({vinfo.task}, {vinfo.n_classes} classes) does not match "
            f"classifier {model!r} ({info.input_kind}, {len(info.labels)} classes)"
        )
    label_names = checker.labels or tuple(info.labels)
    if checker.labels is not None and tuple(info.labels) != checker.labels:
        raise PeerMisbehaved(
            f"service node {service.name} lists the labels of {model!r} as {list(info.labels)}, "
            f"the published client bundle as {list(checker.labels)}: refused (a service that "
            "permutes its label names would mislabel every answer without changing a class)"
        )
    verdicts = options.protocol == "verdicts"
    wire = encode_inputs(inputs, info.input_kind)
    n = count(wire)
    channel = mesh.channel(verifier.address, verifier.name)
    key = (verifier.address, vname, _acceptance(options))
    session: AttestedSession | None = None
    pinning = ""
    if options.attestation == "session":
        session, pinning = _session(channel, key, options, vinfo, checker, catalog, mesh.creds)
    # Both requests go out at once; the verifier's answer is checked while the service
    # computes (`verifier_side` below).
    sent = time.perf_counter()
    done: dict[str, float] = {}

    def verify_request(
        enclave_input: Callable[[], tuple[bytes, bytes | None]], **fields: Any
    ) -> classify_pb2.VerifyRequest:
        if session is None:  # a fresh nonce per quote
            return classify_pb2.VerifyRequest(
                verifier=vname, nonce=checker.nonces.issue(), **fields
            )
        seq = session.next_seq()
        tag = b""
        if session.enrolled:  # such an enclave runs only requests its session's client made
            data, digest = enclave_input()
            tag = session.request_tag(seq, data, digest=digest)
        return classify_pb2.VerifyRequest(
            verifier=vname, session_id=session.session_id, seq=seq, request_tag=tag, **fields
        )

    @functools.cache
    def enclave_data() -> bytes:
        """What the enclave runs on for this client's inputs (as the node builds it)."""
        if vinfo.task == "image":
            return image_request(wire.images, n)
        return enclave_request(wire, vinfo.task)

    @functools.cache
    def first_input() -> tuple[bytes, bytes | None]:
        """The first request's enclave input and, in a session, its digest (hashed once for
        the request MAC and the tag check: ~1.6 ms at 256 images; a quote check hashes it
        itself). Whether there is a session is fixed for the call (re-opening keeps one)."""
        first = prepare_request(enclave_data()) if verdicts else enclave_data()
        return first, None if session is None else input_digest(first)

    def first_request() -> classify_pb2.VerifyRequest:
        phase = classify_pb2.PREPARE if verdicts else classify_pb2.DISTRIBUTION
        return verify_request(first_input, inputs=wire, phase=phase)

    def attest(
        reply: classify_pb2.VerifyReply,
        request: classify_pb2.VerifyRequest,
        data: bytes,
        digest: bytes | None = None,
    ) -> VerifiedQuote:
        """Check the quote or session tag binding `data` (built by this client) to the output."""
        nonlocal pinning
        try:
            if session is None:
                verified, pinning = _check_quote(
                    reply, request.nonce, data, options, vinfo, checker
                )
                return verified
            # decrypted when the session is enrolled (the host could not read it)
            reply.output = session.check(
                seq=request.seq,
                answered_seq=reply.seq,
                data=data,
                output=reply.output,
                tag=reply.tag,
                digest=digest,
            )
            return session.quote
        except AttestationError:
            checker.drop(key)
            catalog.forget(verifier.address)  # ask again next time (e.g. a restarted node)
            raise

    def verifier_side() -> tuple[Any, VerifiedQuote, Any, float]:
        """The Verify call and its checks (on a pooled thread, while the service computes):
        (reply, attested quote, the verifier's distribution or, under "verdicts",
        the digest of the enclave's input, seconds of checking)."""
        nonlocal session, pinning
        request = first_request()
        try:
            with forgetting(catalog, verifier.address):
                vreply = call(channel, "Verify", request, options.timeout_s)
        except SessionMismatch:  # the enclave no longer holds the session (restart, eviction)
            checker.drop(key)
            session, pinning = _session(channel, key, options, vinfo, checker, catalog, mesh.creds)
            request = first_request()
            vreply = call(channel, "Verify", request, options.timeout_s)
        t_check = done["verifier"] = time.perf_counter()
        # What the enclave must have run on, computed from what this client sent (after the
        # node's own validation answered, so that bad inputs get the node's INVALID_ARGUMENT;
        # images are the wire bytes as sent, with no second check of their values here).
        data = enclave_data()
        verified = attest(vreply, request, *first_input())
        if verdicts:  # hashed now, while the service is still computing (~1.5 ms at 256 images)
            return vreply, verified, request_digest(data), time.perf_counter() - t_check
        try:
            pv, recomputed = decode_reply(vreply.output)  # attested: the enclave's own output
            if len(pv) != n:
                raise InvalidInput(f"verifier answered {len(pv)} rows for {n} inputs")
            pv_array = probs_array(pv, checker.fides.n_classes, n_rows=n)
            recomputed = checker.fides.check_recomputed(recomputed, pv_array)
        except InvalidInput as exc:
            raise PeerMisbehaved(f"verifier node {verifier.name}: {exc}") from None
        return vreply, verified, (pv_array, recomputed), time.perf_counter() - t_check

    # The verifier's side runs on a pooled thread (`run_async`), the service's call on this
    # one, so that its answer is judged without a hand-off between threads; a failure of
    # either side raises here (the other call, if still running, is left to finish).
    f_verify = run_async(verifier_side)
    with forgetting(catalog, service.address):
        reply = call(
            mesh.channel(service.address, service.name),
            "Classify",
            classify_pb2.ClassifyRequest(model=model, inputs=wire),
            options.timeout_s,
        )
    done["service"] = time.perf_counter()
    vreply, verified, checked, check_s = f_verify.result()
    pv, recomputed = (None, None) if verdicts else checked
    digest = checked if verdicts else b""
    t_judge = time.perf_counter()
    probs = decode_probs(reply, n)
    try:
        if pv is not None:
            # pv and recomputed were checked on arrival (a fault there is the verifier's)
            ps = probs_array(probs, checker.fides.n_classes, n_rows=n)
            judged = checker.fides.judge_checked(ps, pv, recomputed)
            columns = (
                judged.attacked,
                judged.score,
                judged.threshold,
                judged.verifier_label,
                judged.reclassified_label,
                judged.exact,
            )
        else:
            probs_array(probs, checker.fides.n_classes, n_rows=n)  # the service's, validated
    except InvalidInput as exc:
        raise PeerMisbehaved(f"service node {service.name} answered garbage: {exc}") from None
    judge_s = 0.0
    if pv is None:  # protocol "verdicts": the enclave judges the service's answer
        t_judge_call = time.perf_counter()
        sealed = vreply.output
        service_probs = np.ascontiguousarray(probs, dtype="<f4").tobytes()

        judged_input = judge_request(sealed, digest, service_probs)
        judged_digest = None if session is None else input_digest(judged_input)

        def judge_request_msg() -> classify_pb2.VerifyRequest:
            return verify_request(
                lambda: (judged_input, judged_digest),
                phase=classify_pb2.JUDGE,
                sealed=sealed,
                request_digest=digest,
                service_probs=service_probs,
            )

        judge = judge_request_msg()
        try:
            jreply = call(channel, "Verify", judge, options.timeout_s)
        except SessionMismatch:  # re-open; the sealed blob stays valid in the same enclave
            checker.drop(key)
            session, pinning = _session(channel, key, options, vinfo, checker, catalog, mesh.creds)
            judge = judge_request_msg()
            jreply = call(channel, "Verify", judge, options.timeout_s)
        verified = attest(jreply, judge, judged_input, judged_digest)
        try:
            attacked, recl = decode_verdicts(jreply.output, n)
        except InvalidInput as exc:
            raise PeerMisbehaved(f"verifier node {verifier.name}: {exc}") from None
        columns = (attacked, [None] * n, None, [None] * n, recl, [None] * n)
        judge_s = time.perf_counter() - t_judge_call
    check_s += time.perf_counter() - t_judge
    attacked_col, score_col, threshold, verifier_col, recl_col, exact_col = columns
    checks = tuple(
        FidesCheck(
            service_label=s,
            attacked=a,
            score=sc,
            threshold=threshold,
            verifier_label=v,
            reclassified_label=r,
            exact=e,
        )
        for a, sc, s, v, r, e in zip(
            attacked_col,
            score_col,
            probs.argmax(1).tolist(),
            verifier_col,
            recl_col,
            exact_col,
            strict=True,
        )
    )
    summary = QuoteSummary(
        platform=verified.platform.value,
        simulated=verified.simulated,
        measurement=verified.measurement.hex(),
        provider=verified.provider,
        verifier_node=verifier.name,
        key_pinning=pinning,
        attestation=options.attestation,
        session_age_s=None if session is None else round(session.age_s(), 3),
        enrolled=session is not None and session.enrolled,
    )
    predictions = probs.argmax(1)
    return ClassificationResult(
        model=model,
        probs=probs,
        predictions=predictions,
        labels=tuple(label_names[i] for i in predictions),
        node_id=reply.node_id,
        node_name=service.name,
        model_digest=reply.model_digest,
        timings={
            "total_s": time.perf_counter() - t0,
            "service_s": done.get("service", sent) - sent,
            "verifier_s": done.get("verifier", sent) - sent,
            "check_s": check_s,
            **({"judge_call_s": judge_s} if verdicts else {}),
        },
        privacy=fides_privacy(
            channel_label, service.name, verifier.name, verified.simulated, options.protocol
        ),
        verify="fides",
        checks=checks,
        verifier_probs=pv,
        recomputed=None if recomputed is None else (recomputed.rows, recomputed.probs),
        quote=summary,
        threat_model=threat_model(
            options.protocol,
            vinfo.enrolled_only,
            session is not None and session.enrolled,
            labels_published=checker.labels is not None,
        ),
    )


def _policy(
    options: FidesOptions, vinfo: classify_pb2.VerifierInfo, checker: FidesChecker
) -> tuple[Policy, TrustAnchors, str]:
    """The options' policy pinning the published measurement, the trust anchors, and how the
    platform keys or roots were pinned."""
    trust, pinning = pinned_trust(
        options.trust,
        options.simulated_keys,
        options.allow_simulated,
        vinfo.simulated,
        vinfo.simulated_platform_key,
    )
    policy = Policy(
        **options.guest.policy_fields(),
        allowed_code_measurements=frozenset({checker.measurements[options.protocol]}),
        allow_simulated=options.allow_simulated,
    )
    if not vinfo.simulated:
        pinning = f"{pinning}; {options.guest.describe()}"
    return policy, trust, pinning


def _acceptance(options: FidesOptions) -> bytes:
    """A digest of everything in `options` that decides whether a quote is accepted."""
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    trust = options.trust
    parts = [
        options.protocol.encode(),
        b"simulated" if options.allow_simulated else b"hardware only",
        *sorted(options.simulated_keys),
        *options.guest.digest_parts(),
        *(c.public_bytes(der) for t in trust.snp for c in (t.ask, t.ark)),
        trust.tdx_root.public_bytes(der) if trust.tdx_root is not None else b"no tdx root",
        *(k.public_bytes(der, spki) for k in trust.simulated_keys),
        *(crl.public_bytes(der) for crl in trust.crls),
    ]
    return hashlib.sha256(b"".join(len(p).to_bytes(8, "big") + p for p in parts)).digest()


def _check_quote(
    vreply: classify_pb2.VerifyReply,
    nonce: bytes,
    data: bytes,
    options: FidesOptions,
    vinfo: classify_pb2.VerifierInfo,
    checker: FidesChecker,
) -> tuple[VerifiedQuote, str]:
    """`tee.verify_quote` of a per-request quote; returns it and how keys were pinned."""
    policy, trust, pinning = _policy(options, vinfo, checker)
    verified = verify_quote(
        Quote.from_json(vreply.quote_json),
        input=data,
        output=vreply.output,
        nonce=nonce,
        policy=policy,
        trust=trust,
        nonce_store=checker.nonces,
    )
    return verified, pinning


def _session(
    channel: Any,
    key: tuple[str, str, bytes],
    options: FidesOptions,
    vinfo: classify_pb2.VerifierInfo,
    checker: FidesChecker,
    catalog: Catalog,
    creds: Credentials,
) -> tuple[AttestedSession, str]:
    """The open session with this verifier, or a new one (`OpenSession`, quote verified). The
    opening carries this client's mesh certificate and its signature over the opening, which
    an enclave with a sealed enrolment checks (`tee.enrolment`)."""
    found = checker.session(key, options.max_session_age_s)
    if found is not None:
        return found
    for attempt in (0, 1):
        policy, trust, pinning = _policy(options, vinfo, checker)
        client_key, nonce = SessionKey(), checker.nonces.issue()
        certificate, signature = b"", b""
        if creds.certificate and creds.private_key:
            private = serialization.load_pem_private_key(creds.private_key, password=None)
            if isinstance(private, ec.EllipticCurvePrivateKey):
                certificate = creds.certificate
                signature = sign_identity(private, client_key.public, nonce)
        reply = call(
            channel,
            "OpenSession",
            classify_pb2.AttestedSessionRequest(
                verifier=key[1],
                client_public=client_key.public,
                nonce=nonce,
                client_certificate=certificate,
                identity_signature=signature,
            ),
            options.timeout_s,
        )
        try:
            session = AttestedSession.open(
                Quote.from_json(reply.quote_json),
                offer=reply.offer,
                key=client_key,
                nonce=nonce,
                policy=policy,
                trust=trust,
                nonce_store=checker.nonces,
            )
            break
        except AttestationError as exc:
            catalog.forget(key[0])
            fresh = None if attempt else _new_announced_key(channel, key[1], options, vinfo, exc)
            if fresh is None:
                raise
            vinfo = fresh
    checker.keep(key, session, pinning)
    return session, pinning


def _new_announced_key(
    channel: Any,
    name: str,
    options: FidesOptions,
    vinfo: classify_pb2.VerifierInfo,
    exc: AttestationError,
) -> classify_pb2.VerifierInfo | None:
    """The verifier's fresh `ListModels` entry if the failure is an unpinned SIMULATED key
    that the client had pinned on first use and the node now announces another one (its
    enclave restarted: a new process, a new simulated platform key); None otherwise. Pinning
    the new key is trust on first use again, which is all a simulated key ever had."""
    tofu = options.allow_simulated and not options.simulated_keys and vinfo.simulated
    if not tofu or not isinstance(exc, BadChain):
        return None
    reply = call(channel, "ListModels", classify_pb2.ListModelsRequest(), options.timeout_s)
    fresh = next((v for v in reply.verifiers if v.name == name), None)
    if fresh is None or fresh.simulated_platform_key == vinfo.simulated_platform_key:
        return None
    logger.warning(
        "verifier %r announces a new SIMULATED platform key (its enclave restarted); pinning "
        "it on first use again",
        name,
    )
    return fresh


@functools.lru_cache(maxsize=64)
def _platform_key(pem: bytes) -> Any:
    return load_platform_key(pem)


def pinned_trust(
    trust: TrustAnchors,
    caller_keys: tuple[bytes, ...],
    allow_simulated: bool,
    simulated: bool,
    announced: bytes,
) -> tuple[TrustAnchors, str]:
    """`trust` plus the SIMULATED platform keys to pin, and how they were chosen (for the
    result): the caller's PEM keys if any; else, with `allow_simulated` and a simulated enclave,
    the key its node `announced` (trust on first use); else none (vendor roots only)."""
    keys: tuple[Any, ...] = ()
    pinning = "pinned vendor roots (TrustAnchors)"
    if caller_keys:
        keys, pinning = tuple(_platform_key(k) for k in caller_keys), "caller-pinned key"
    elif allow_simulated and simulated and announced:
        try:
            keys = (_platform_key(announced),)
        except (MalformedEvidence, ValueError) as exc:
            raise PeerMisbehaved(f"verifier announced a malformed platform key: {exc}") from None
        pinning = "SIMULATED key announced by the verifier node (trust on first use)"
    anchors = TrustAnchors(
        snp=trust.snp,
        tdx_root=trust.tdx_root,
        simulated_keys=trust.simulated_keys + keys,
        crls=trust.crls,
    )
    return anchors, pinning


def fides_privacy(
    channel: str, service: str, verifier: str, simulated: bool, protocol: str = "distribution"
) -> Privacy:
    """What each node saw in a `verify="fides"` classification."""
    tee = (
        "a SIMULATED enclave (INSECURE: its host sees and could alter everything)"
        if simulated
        else "an attested hardware enclave (its host sees ciphertext memory only)"
    )
    return Privacy(
        mode="fides (plaintext classification, verified)",
        channel=channel,
        client_keeps=(
            "the nonce, the detector's verdicts and the re-classified labels"
            if protocol == "distribution"
            else "the nonce (the verdicts and re-classified labels come from the enclave: "
            "its host sees them unless the session is enrolled)"
        ),
        node_views=(
            f"service node {service} saw every input and its own output distribution",
            f"verifier node {verifier} saw every input in the clear before handing it to {tee}, "
            + (
                "and the verification model's output"
                if protocol == "distribution"
                else "the service's output distribution, and the verdicts (the verification "
                "model's output stayed sealed in the enclave)"
            ),
        ),
        caveats=(
            "no confidentiality of inputs: use privacy='he' or 'mpc' for that",
            "Fides detection is statistical; see docs/fides.md for measured rates",
        ),
    )
