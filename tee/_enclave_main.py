"""The enclave process: ``python -m tee._enclave_main {simulated|configfs-tsm}`` (internal).

Protocol (one frame each way per request, see `tee._channel`):

    child -> host  hello  {platform, provider}, [platform public key PEM (simulated) or b""]
    host -> child  load   {entry: "pkg.mod:fn"}, [model bytes]
    child -> host         {measurement, code_digest, model_digest as hex}
    host -> child  run    {nonce: hex}, [input bytes]
    child -> host         {provider, platform}, [output, evidence, auxblob]
    host -> child  open   {nonce: hex}, [client X25519 public key, certificate PEM, signature]
    child -> host         {provider, platform}, [offer, evidence, auxblob]   (tee.session)
                          or {error: "ClientNotEnrolled"}   (tee.enrolment)
    host -> child  srun   {session: hex, seq: int}, [input bytes, request MAC]
    child -> host         {}, [output, tag]   or {error: "UnknownSession" | "ClientNotEnrolled"}
    host -> child  offer  {entry: "pkg.mod:fn", nonce: hex}                 (tee.provisioning)
    child -> host         {provider, platform, code_digest}, [offer, evidence, auxblob]
    host -> child  sload  {nonce: hex}, [owner X25519 public key, sealed model]
    child -> host         {measurement, code_digest, model_digest, provider, platform},
                          [loaded, evidence, auxblob]   or {error: "SealedModelRejected"}
    host -> child  close

What crosses the boundary: the entry-point string, the model bytes (or, for a sealed load, their
ciphertext: the provisioning key never leaves this process), input and output bytes, the nonce,
and evidence. The enclave measures what it actually runs: it reads the entry module's source,
hashes it, and executes exactly those bytes (never a cached `.pyc` that the import system
would prefer), and it hashes the model bytes it received; so the host cannot make it report
another measurement. An enclave is single-use: once a `load` or `offer` fails (the host named
code that does not load: its top level may have run all the same), it refuses every further
operation. Each `offer` draws a fresh provisioning key (the previous one is erased) and a key
opens at most one sealed load, so a payload sealed for an earlier offer can never be loaded in
place of the owner's latest. Errors go back as {error: type name, message}; tracebacks go to
this process's stderr only. The loaded code's stdout is redirected to stderr so that it cannot
corrupt the protocol.
"""

from __future__ import annotations

import hmac
import importlib.util
import logging
import os
import sys
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tee._channel import read_frame, write_frame
from tee.configfs_tsm import get_report, platform_for_provider
from tee.enrolment import Enrolment, check_identity
from tee.errors import ClientNotEnrolled, EnclaveError, SealedModelRejected
from tee.measurement import (
    CodeRef,
    awaiting_measurement,
    code_digest,
    enclave_measurement,
    input_digest,
    model_digest,
    report_data,
    result_digest,
)
from tee.provisioning import (
    ProvisioningKey,
    SealedModel,
    loaded_output,
    offer_output,
    offer_request,
    sealed_input,
    unseal_payload,
)
from tee.quote import Platform
from tee.session import EnclaveSessions, request_tag, result_tag, seal_output
from tee.simulated import SimulatedPlatform

logger = logging.getLogger("tee.enclave")

Handler = Callable[[bytes], bytes]
_OPENINGS_KEPT = 1 << 16  # session-opening nonces remembered (older ones: 32 random bytes)


class _Enclave:
    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.simulated = SimulatedPlatform() if backend == "simulated" else None
        self.handler: Handler | None = None
        self.measurement = b""
        self.sessions = EnclaveSessions()
        self.enrolment: Enrolment | None = None  # sealed with the model: who may use it
        # code imported for a sealed load: (entry, factory, code digest)
        self.pending: tuple[CodeRef, Callable[[bytes], Any], bytes] | None = None
        self.offer_key: ProvisioningKey | None = None  # the latest offer's; one load attempt
        self.failed: str | None = None  # why this enclave serves nothing more (single-use)
        self.openings: OrderedDict[bytes, None] = OrderedDict()  # session nonces seen

    def check_usable(self) -> None:
        if self.failed is not None:
            raise EnclaveError(
                f"this enclave ran code that failed to load ({self.failed}); it serves nothing "
                "more: start a new one"
            )

    def hello(self) -> tuple[dict[str, Any], list[bytes]]:
        if self.simulated is not None:
            header = {"platform": Platform.SIMULATED.value, "provider": "simulated"}
            return header, [self.simulated.public_key_pem()]
        return {"platform": "configfs-tsm", "provider": ""}, [b""]

    def _import(self, entry: str) -> tuple[CodeRef, Callable[[bytes], Any], bytes]:
        """Execute the entry module from the very source bytes it hashes (an import could run
        a `.pyc` whose header merely matches the source's size and time). A failure makes this
        enclave unusable: the module's top level may have run."""
        try:
            code = CodeRef.parse(entry)
            spec = importlib.util.find_spec(code.module)
            if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
                raise EnclaveError(f"{code.module} is not a Python source module")
            source = Path(spec.origin).read_bytes()
            module = importlib.util.module_from_spec(spec)
            sys.modules[code.module] = module
            exec(compile(source, spec.origin, "exec"), module.__dict__)  # noqa: S102 - measured
            return code, getattr(module, code.function), code_digest(code, source)
        except BaseException as exc:
            self.failed = f"{entry}: {type(exc).__name__}"
            raise

    def _install(
        self, factory: Callable[[bytes], Any], entry: str, cd: bytes, model: bytes
    ) -> dict[str, Any]:
        handler = factory(model)
        if not callable(handler):
            raise EnclaveError(f"{entry} did not return a callable handler")
        md = model_digest(model)
        self.handler, self.measurement = handler, enclave_measurement(cd, md)
        return {
            "measurement": self.measurement.hex(),
            "code_digest": cd.hex(),
            "model_digest": md.hex(),
        }

    def load(self, entry: str, model: bytes) -> dict[str, Any]:
        if self.handler is not None or self.pending is not None:
            raise EnclaveError("this enclave already loaded code; start a new one")
        _, factory, cd = self._import(entry)
        try:
            return self._install(factory, entry, cd, model)
        except BaseException as exc:
            self.failed = f"{entry} refused its model: {type(exc).__name__}"
            raise

    def offer(self, entry: str, nonce: bytes) -> tuple[dict[str, Any], list[bytes]]:
        """Quote this enclave's provisioning key for `entry` (imported once, no model yet)."""
        if self.handler is not None:
            raise SealedModelRejected("this enclave already loaded its model")
        if self.pending is None:
            self.pending = self._import(entry)
        code, _, cd = self.pending
        if code.entry != entry:
            raise EnclaveError(f"this enclave awaits a model for {code.entry}, not {entry}")
        if self.offer_key is not None:  # a fresh key per offer: older seals never open
            self.offer_key.erase()
        key = self.offer_key = ProvisioningKey(awaiting_measurement(cd))
        header, blobs = self._quote(
            nonce, offer_request(entry), offer_output(key.public), key.awaiting
        )
        return {**header, "code_digest": cd.hex()}, blobs

    def sealed_load(
        self, nonce: bytes, owner_public: bytes, ciphertext: bytes
    ) -> tuple[dict[str, Any], list[bytes]]:
        """Open a model sealed to this enclave's key, load it, erase the key; quote the result."""
        if self.pending is None or self.offer_key is None:
            raise SealedModelRejected("no provisioning offer is open: ask for one first")
        code, factory, cd = self.pending
        key, self.offer_key = self.offer_key, None  # one attempt per offer, whatever happens
        sealed = SealedModel(owner_public=owner_public, ciphertext=ciphertext)
        try:
            model, enrolment = unseal_payload(key.open(sealed))
        finally:
            key.erase()
        try:
            digests = self._install(factory, code.entry, cd, model)
        except Exception as exc:  # noqa: BLE001 - the owner's bytes: refused; offer again
            # the type only: the exception's text (a size mismatch, a missing key) would tell
            # the host about the model
            raise SealedModelRejected(
                f"the model opened but {code.entry} refused it ({type(exc).__name__}); ask "
                "for a new offer to try again"
            ) from None
        self.pending = None
        self.enrolment = enrolment
        enrolled = enrolment.digest() if enrolment else b""
        output = loaded_output(cd, bytes.fromhex(digests["model_digest"]), enrolled)
        header, blobs = self._quote(nonce, sealed_input(sealed), output)
        return {**header, **digests}, blobs

    def _compute(self, data: bytes) -> bytes:
        if self.handler is None:
            raise EnclaveError("run before load")
        output = self.handler(data)
        if not isinstance(output, bytes | bytearray):
            raise EnclaveError(f"handler returned {type(output).__name__}, not bytes")
        return bytes(output)

    def _quote(
        self, nonce: bytes, data: bytes, output: bytes, measurement: bytes | None = None
    ) -> tuple[dict[str, Any], list[bytes]]:
        """The platform's evidence over nonce, measurement (this enclave's unless given: the
        awaiting measurement of a provisioning offer), input and output digests."""
        measured = self.measurement if measurement is None else measurement
        binding = report_data(nonce, measured, input_digest(data), result_digest(output))
        if self.simulated is not None:
            evidence = self.simulated.quote(binding, measured)
            header = {"platform": Platform.SIMULATED.value, "provider": "simulated"}
            return header, [output, evidence, b""]
        report = get_report(binding)
        header = {
            "platform": platform_for_provider(report.provider).value,
            "provider": report.provider,
        }
        return header, [output, report.outblob, report.auxblob]

    def run(self, nonce: bytes, data: bytes) -> tuple[dict[str, Any], list[bytes]]:
        if self.enrolment is not None:  # anyone could ask: only sessions identify the client
            raise ClientNotEnrolled("this enclave serves enrolled clients in sessions only")
        return self._quote(nonce, data, self._compute(data))

    def open(
        self, nonce: bytes, client_public: bytes, certificate: bytes, signature: bytes
    ) -> tuple[dict[str, Any], list[bytes]]:
        if self.handler is None:
            raise EnclaveError("open before load")
        if nonce in self.openings:  # a captured opening replayed (it could not use the key)
            raise ClientNotEnrolled("this session opening was used before")
        if self.enrolment is not None:
            name = check_identity(self.enrolment, certificate, signature, client_public, nonce)
            logger.info("session opened for enrolled client %r", name)
        self.openings[nonce] = None
        while len(self.openings) > _OPENINGS_KEPT:
            self.openings.popitem(last=False)
        quoted_input, offer = self.sessions.open(
            client_public, nonce, self.measurement, enrolled=self.enrolment is not None
        )
        return self._quote(nonce, quoted_input, offer)

    def session_run(self, session: bytes, seq: int, data: bytes, mac: bytes) -> list[bytes]:
        if not 0 < seq < 1 << 64:
            raise EnclaveError("sequence numbers are 1 .. 2**64 - 1")
        key = self.sessions.key(session)  # before computing: UnknownSession costs nothing
        digest = input_digest(data)  # once: ~1.6 ms for 256 MNIST images
        checked = mac or self.enrolment is not None  # only the session's client can make it
        expected = request_tag(key, session, seq, data, digest=digest) if checked else b""
        if checked and not hmac.compare_digest(mac, expected):
            raise ClientNotEnrolled("the request is not authenticated by its session's key")
        self.sessions.claim(session, seq)  # after the MAC check, where there is one
        output = self._compute(data)
        if self.enrolment is not None:  # readable by the session's client only
            output = seal_output(key, session, seq, data, output, digest=digest)
        return [output, result_tag(key, session, seq, data, output, digest=digest)]


def _serve(enclave: _Enclave, fd_in: int, fd_out: int) -> None:
    header, blobs = enclave.hello()
    write_frame(fd_out, header, *blobs)
    while True:
        request, blobs = read_frame(fd_in)
        op = request.get("op")
        try:
            if op == "close":
                return
            enclave.check_usable()  # every operation: a failed load or offer ends the enclave
            if op == "load":
                write_frame(fd_out, enclave.load(str(request["entry"]), blobs[0]))
            elif op == "run":
                reply, out = enclave.run(bytes.fromhex(str(request["nonce"])), blobs[0])
                write_frame(fd_out, reply, *out)
            elif op == "open":
                nonce = bytes.fromhex(str(request["nonce"]))
                certificate, signature = (blobs + [b"", b""])[1:3]
                reply, out = enclave.open(nonce, blobs[0], certificate, signature)
                write_frame(fd_out, reply, *out)
            elif op == "offer":
                nonce = bytes.fromhex(str(request["nonce"]))
                reply, out = enclave.offer(str(request["entry"]), nonce)
                write_frame(fd_out, reply, *out)
            elif op == "sload":
                nonce = bytes.fromhex(str(request["nonce"]))
                if len(blobs) != 2:
                    raise SealedModelRejected("a sealed load carries an owner key and a model")
                reply, out = enclave.sealed_load(nonce, blobs[0], blobs[1])
                write_frame(fd_out, reply, *out)
            elif op == "srun":
                out = enclave.session_run(
                    bytes.fromhex(str(request["session"])),
                    int(request["seq"]),
                    blobs[0],
                    blobs[1] if len(blobs) > 1 else b"",
                )
                write_frame(fd_out, {}, *out)
            else:
                raise EnclaveError(f"unknown operation {op!r}")
        except Exception as exc:  # noqa: BLE001 - reported to the host, which raises EnclaveError
            logger.exception("enclave operation %r failed", op)
            write_frame(fd_out, {"error": type(exc).__name__, "message": str(exc)})


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="[enclave %(process)d] %(levelname)s %(message)s"
    )
    fd_out = os.dup(1)
    os.dup2(2, 1)  # the loaded code's prints go to stderr, never into the protocol stream
    fd_in = os.dup(0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    backend = sys.argv[1] if len(sys.argv) > 1 else ""
    if backend not in ("simulated", "configfs-tsm"):
        sys.exit(f"unknown enclave backend {backend!r}")
    _serve(_Enclave(backend), fd_in, fd_out)


if __name__ == "__main__":
    main()
