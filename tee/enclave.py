"""The enclave interface and its process-isolated backends.

    Enclave (ABC)            load(code, model) -> measurement; run(input, nonce) -> AttestedResult
                             or, for a model the host must not read (`tee.provisioning`):
                             offer_provisioning(code, nonce) -> ProvisioningOffer, then
                             load_sealed(SealedModel, nonce) -> AttestedResult
    +-- SimulatedEnclave     own OS process, quotes signed by a local key: INSECURE, dev/tests
    +-- ConfigfsTsmEnclave   own OS process inside a SEV-SNP/TDX guest, quotes from configfs-tsm

Both backends start ``python -m tee._enclave_main`` as a child process (subprocess, not fork, so
the child shares no memory with the host process) and talk to it over its stdin/stdout with
length-prefixed frames (`tee._channel`); no pickle crosses the pipe. The loaded "code" is an
importable entry point ``"pkg.module:function"``: the child imports it, calls
``function(model_bytes)`` once to get a handler, and then ``handler(input_bytes) -> bytes`` per
request. Tensors can cross as safetensors bytes. The child inherits the host's `sys.path` (as
multiprocessing's spawn does) and runs torch and BLAS with one thread unless `threads` says
otherwise.

Threat model: the process boundary is NOT a security boundary: the host's operator can read the
child's memory. With `SimulatedEnclave` nothing is protected; it exercises the protocol. With
`ConfigfsTsmEnclave` the confidential VM is the TEE, and a client trusts the whole guest image
(launch measurement) plus the code+model measurement bound in the report data.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType

from tee._channel import read_frame, write_frame
from tee.configfs_tsm import tsm_available
from tee.errors import (
    ClientNotEnrolled,
    EnclaveError,
    MalformedEvidence,
    SealedModelRejected,
    UnknownSession,
    UnsupportedPlatform,
)
from tee.measurement import NONCE_SIZE, CodeRef, awaiting_measurement
from tee.provisioning import ProvisioningOffer, SealedModel, offer_request, sealed_input
from tee.quote import AttestedResult, Platform, Quote
from tee.session import SESSION_ID_SIZE, SessionOffer, SessionResult, open_request
from tee.simulated import load_platform_key

__all__ = ["ConfigfsTsmEnclave", "Enclave", "SimulatedEnclave"]

logger = logging.getLogger(__name__)

_CLOSE_GRACE_S = 5.0  # seconds to wait for the child to exit before killing it


class Enclave(ABC):
    """A place to run measured code on a model and get results with quotes bound to them."""

    simulated: bool  # True when quotes carry no hardware guarantee
    platform: Platform | None  # None until the platform is known (configfs-tsm: first quote)

    @property
    @abstractmethod
    def measurement(self) -> bytes:
        """The code+model measurement (48 bytes); EnclaveError before `load`."""

    @property
    @abstractmethod
    def running(self) -> bool:
        """False once the enclave has stopped (closed, crashed, killed, or timed out): start a
        new one; nothing it held (model, sessions, keys) survives."""

    @abstractmethod
    def load(self, code: CodeRef | str, model: bytes | Path) -> bytes:
        """Load an entry point and model bytes once; returns the measurement."""

    @abstractmethod
    def offer_provisioning(self, code: CodeRef | str, *, nonce: bytes) -> ProvisioningOffer:
        """Import `code` (no model yet) and quote the enclave's provisioning key under the
        awaiting measurement (`tee.provisioning`); a fresh key for every offer (the previous
        one is erased), which opens at most one sealed load."""

    @abstractmethod
    def load_sealed(self, sealed: SealedModel, *, nonce: bytes) -> AttestedResult:
        """Open a model sealed to the offered key inside the enclave and load it; the quote
        binds `nonce`, the new code+model measurement and the ciphertext. Raises
        `SealedModelRejected` if it does not open or the code refuses it (the enclave keeps
        awaiting its model, under a new offer)."""

    @abstractmethod
    def run(self, data: bytes, *, nonce: bytes) -> AttestedResult:
        """Run the handler on `data`; the quote binds `nonce`, the measurement, `data` and the
        output."""

    @abstractmethod
    def open_session(
        self,
        client_public: bytes,
        *,
        nonce: bytes,
        certificate: bytes = b"",
        signature: bytes = b"",
    ) -> SessionOffer:
        """Open an attested session (`tee.session`) with a client's X25519 public key; an
        enclave with a sealed enrolment needs the client's certificate and its signature over
        the opening (`tee.enrolment`) and raises `ClientNotEnrolled` otherwise."""

    @abstractmethod
    def run_in_session(
        self, data: bytes, *, session_id: bytes, seq: int, request_tag: bytes = b""
    ) -> SessionResult:
        """Run the handler on `data`; the output is tagged with the session's key for `seq`.
        `request_tag` (`AttestedSession.request_tag`) is required by an enrolled enclave, which
        also encrypts the output. Raises `UnknownSession` when the enclave does not hold the
        session, `ClientNotEnrolled` when the request is not authenticated."""

    @abstractmethod
    def close(self) -> None:
        """Stop the enclave; safe to call twice."""

    def __enter__(self) -> Enclave:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _ProcessEnclave(Enclave):
    """An enclave process speaking the `tee._enclave_main` protocol."""

    def __init__(self, backend: str, *, timeout_s: float, threads: int) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[name] = str(threads)
        self._timeout_s = timeout_s
        self._measurement: bytes | None = None
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tee._enclave_main", backend],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        try:
            _, blobs = self._recv()
        except BaseException:
            self.close()
            raise
        self._hello_key = blobs[0] if blobs else b""
        self.pid = self._proc.pid

    def _send(self, header: dict[str, str], *blobs: bytes) -> None:
        if self._proc.stdin is None or self._proc.poll() is not None:
            raise EnclaveError("enclave process is not running")
        try:
            write_frame(self._proc.stdin.fileno(), header, *blobs)
        except OSError as exc:
            self._proc.kill()  # a half-written frame leaves the pipe unusable: stop it for good
            self._proc.wait()
            raise EnclaveError(f"enclave pipe failed: {exc}") from None

    def _recv(self) -> tuple[dict[str, object], list[bytes]]:
        if self._proc.stdout is None:
            raise EnclaveError("enclave process has no output pipe")
        try:
            header, blobs = read_frame(self._proc.stdout.fileno(), timeout_s=self._timeout_s)
        except EnclaveError:
            self._proc.kill()  # a late answer would desynchronize the pipe: stop the enclave
            self._proc.wait()
            raise
        if "error" in header:
            message = f"enclave raised {header['error']}: {header.get('message', '')}"
            if header["error"] == UnknownSession.__name__:
                raise UnknownSession(message)
            if header["error"] == SealedModelRejected.__name__:
                raise SealedModelRejected(message)
            if header["error"] == ClientNotEnrolled.__name__:
                raise ClientNotEnrolled(message)
            raise EnclaveError(message)
        return header, blobs

    @property
    def running(self) -> bool:
        return self._proc.poll() is None

    @property
    def measurement(self) -> bytes:
        if self._measurement is None:
            raise EnclaveError("nothing loaded yet")
        return self._measurement

    def load(self, code: CodeRef | str, model: bytes | Path) -> bytes:
        ref = CodeRef.parse(code) if isinstance(code, str) else code
        model_bytes = model.read_bytes() if isinstance(model, Path) else bytes(model)
        self._send({"op": "load", "entry": ref.entry}, model_bytes)
        header, _ = self._recv()
        self._measurement = bytes.fromhex(str(header["measurement"]))
        return self._measurement

    def offer_provisioning(self, code: CodeRef | str, *, nonce: bytes) -> ProvisioningOffer:
        ref = CodeRef.parse(code) if isinstance(code, str) else code
        if len(nonce) < NONCE_SIZE:
            raise ValueError(f"nonce must be at least {NONCE_SIZE} bytes")
        self._send({"op": "offer", "entry": ref.entry, "nonce": nonce.hex()})
        header, blobs = self._recv()
        awaiting = awaiting_measurement(bytes.fromhex(str(header["code_digest"])))
        offer, quote = self._quoted(
            header, blobs, nonce, offer_request(ref.entry), measurement=awaiting
        )
        return ProvisioningOffer(offer=offer, quote=quote)

    def load_sealed(self, sealed: SealedModel, *, nonce: bytes) -> AttestedResult:
        if len(nonce) < NONCE_SIZE:
            raise ValueError(f"nonce must be at least {NONCE_SIZE} bytes")
        self._send({"op": "sload", "nonce": nonce.hex()}, sealed.owner_public, sealed.ciphertext)
        header, blobs = self._recv()
        self._measurement = bytes.fromhex(str(header["measurement"]))
        output, quote = self._quoted(header, blobs, nonce, sealed_input(sealed))
        return AttestedResult(output=output, quote=quote)

    def _quoted(
        self,
        header: dict[str, object],
        blobs: list[bytes],
        nonce: bytes,
        data: bytes,
        *,
        measurement: bytes | None = None,
    ) -> tuple[bytes, Quote]:
        """The output and the quote the enclave's evidence makes for `data` under `nonce`."""
        if len(blobs) != 3:
            raise EnclaveError("enclave answered with the wrong number of blobs")
        output, evidence, auxblob = blobs
        platform = Platform(str(header["platform"]))
        quote = Quote.for_output(
            platform=platform,
            provider=str(header["provider"]),
            nonce=nonce,
            measurement=self.measurement if measurement is None else measurement,
            input=data,
            output=output,
            evidence=evidence,
            auxblob=auxblob,
        )
        self.platform = platform
        return output, quote

    def run(self, data: bytes, *, nonce: bytes) -> AttestedResult:
        if len(nonce) < NONCE_SIZE:
            raise ValueError(f"nonce must be at least {NONCE_SIZE} bytes")
        self._send({"op": "run", "nonce": nonce.hex()}, data)
        output, quote = self._quoted(*self._recv(), nonce, data)
        return AttestedResult(output=output, quote=quote)

    def open_session(
        self,
        client_public: bytes,
        *,
        nonce: bytes,
        certificate: bytes = b"",
        signature: bytes = b"",
    ) -> SessionOffer:
        if len(nonce) < NONCE_SIZE:
            raise ValueError(f"nonce must be at least {NONCE_SIZE} bytes")
        self._send({"op": "open", "nonce": nonce.hex()}, client_public, certificate, signature)
        header, blobs = self._recv()
        offer, quote = self._quoted(header, blobs, nonce, open_request(client_public))
        return SessionOffer(offer=offer, quote=quote)

    def run_in_session(
        self, data: bytes, *, session_id: bytes, seq: int, request_tag: bytes = b""
    ) -> SessionResult:
        if len(session_id) != SESSION_ID_SIZE or not 0 < seq < 1 << 64:
            raise ValueError("a session id is 16 bytes and a sequence number 1 .. 2**64 - 1")
        self._send({"op": "srun", "session": session_id.hex(), "seq": seq}, data, request_tag)
        _, blobs = self._recv()
        if len(blobs) != 2:
            raise EnclaveError("enclave answered a session run with the wrong number of blobs")
        return SessionResult(output=blobs[0], tag=blobs[1], seq=seq)

    def close(self) -> None:
        proc = self._proc
        if proc.poll() is None:
            try:
                self._send({"op": "close"})
                proc.wait(timeout=_CLOSE_GRACE_S)
            except (EnclaveError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


class SimulatedEnclave(_ProcessEnclave):
    """INSECURE simulated enclave: a child process whose quotes a local software key signs.

    For development and tests only. Its quotes say `simulated=True`, are refused by verifiers
    unless `Policy.allow_simulated=True`, and verify only against `platform_public_key`, which
    the client must take from the enclave it launched itself.
    """

    simulated = True
    platform: Platform | None = Platform.SIMULATED

    def __init__(self, *, timeout_s: float = 300.0, threads: int = 1) -> None:
        logger.warning(
            "starting a SIMULATED enclave: INSECURE, no hardware isolation or attestation; "
            "its quotes only demonstrate the protocol"
        )
        super().__init__("simulated", timeout_s=timeout_s, threads=threads)
        try:
            self.platform_public_key = load_platform_key(self._hello_key)
        except (MalformedEvidence, ValueError):
            self.close()
            raise

    def __repr__(self) -> str:
        return f"SimulatedEnclave(pid={self.pid}, INSECURE)"


class ConfigfsTsmEnclave(_ProcessEnclave):
    """An enclave process inside an SEV-SNP or TDX guest, quoting through configfs-tsm.

    Raises UnsupportedPlatform (reason ``"no-configfs-tsm"``) where the interface is absent.
    """

    simulated = False
    platform: Platform | None = None

    def __init__(self, *, timeout_s: float = 300.0, threads: int = 1) -> None:
        if not tsm_available():
            raise UnsupportedPlatform(
                "configfs-tsm (/sys/kernel/config/tsm/report) is not available here",
                reason="no-configfs-tsm",
            )
        super().__init__("configfs-tsm", timeout_s=timeout_s, threads=threads)
