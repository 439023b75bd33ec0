"""What an enclave measures and how a quote binds a request to it.

Digests (all SHA-384 unless stated; every input is domain-separated and length-prefixed, so no
two different field lists encode to the same bytes):

    code_digest   = H("secure-infer/tee/code/v1",   entry point "pkg.mod:fn", module source bytes)
    model_digest  = H("secure-infer/tee/model/v1",  model bytes)
    measurement   = H("secure-infer/tee/measurement/v1", code_digest, model_digest)
    awaiting      = H("secure-infer/tee/awaiting-model/v1", code_digest)   (code loaded, no
                    model yet: an enclave offering a key for sealed provisioning, tee.provisioning)
    input_digest  = H("secure-infer/tee/input/v1",  input bytes the enclave received)
    result_digest = H("secure-infer/tee/result/v1", output bytes)
    report_data   = SHA-512("secure-infer/tee/report-data/v2", nonce, measurement, input_digest,
                            result_digest)

`report_data` is the 64-byte value a hardware TEE signs (SEV-SNP REPORT_DATA, TDX REPORTDATA), so
one platform signature covers the client's fresh nonce, what code and model ran, what went in and
what came out. Binding the input matters: without it the enclave's host could run the measured
code on an input of its choosing (say, the adversarial one a colluding service used) and hand the
client a genuine quote for the wrong question.

Limit: `code_digest` covers the source file of the module that defines the entry point, not the
modules it imports, the interpreter or the libraries. On real hardware the launch measurement
(SNP MEASUREMENT, TDX MRTD/RTMRs) covers the guest image; this application-level measurement only
says which entry point and which model bytes ran inside it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from tee._encoding import encode

__all__ = [
    "DIGEST_SIZE",
    "NONCE_SIZE",
    "REPORT_DATA_SIZE",
    "CodeRef",
    "awaiting_measurement",
    "code_digest",
    "enclave_measurement",
    "input_digest",
    "model_digest",
    "report_data",
    "result_digest",
]

DIGEST_SIZE = 48  # bytes, SHA-384
REPORT_DATA_SIZE = 64  # bytes, SHA-512; the size of SNP REPORT_DATA and TDX REPORTDATA
NONCE_SIZE = 32  # bytes; the minimum nonce length the verifier accepts

_ENTRY_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")


def _h384(domain: bytes, *parts: bytes) -> bytes:
    return hashlib.sha384(encode(domain, *parts)).digest()


@dataclass(frozen=True, slots=True)
class CodeRef:
    """An importable callable, ``"package.module:function"``, that the enclave loads.

    The function is called once inside the enclave process as ``function(model: bytes)`` and must
    return a handler ``handler(input: bytes) -> bytes``. Only this string crosses into the
    enclave; the callable is imported there, never unpickled.
    """

    module: str
    function: str

    @classmethod
    def parse(cls, entry: str) -> CodeRef:
        """Parse ``"pkg.mod:fn"``; raises ValueError on anything else."""
        if not _ENTRY_RE.match(entry):
            raise ValueError(f"entry point must look like 'pkg.module:function', got {entry!r}")
        module, function = entry.split(":")
        return cls(module, function)

    @property
    def entry(self) -> str:
        return f"{self.module}:{self.function}"

    def source(self) -> bytes:
        """The bytes of the module's source file (found without importing the module itself)."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            raise ValueError(f"module {self.module!r} has no Python source file to measure")
        return Path(spec.origin).read_bytes()


def code_digest(code: CodeRef, source: bytes | None = None) -> bytes:
    """SHA-384 binding the entry point and its module's source (read from disk if not given)."""
    src = code.source() if source is None else source
    return _h384(b"secure-infer/tee/code/v1", code.entry.encode(), src)


def model_digest(model: bytes) -> bytes:
    """SHA-384 of the model bytes the enclave loaded."""
    return _h384(b"secure-infer/tee/model/v1", model)


def enclave_measurement(code: bytes, model: bytes) -> bytes:
    """The enclave measurement from a code digest and a model digest (both 48 bytes)."""
    if len(code) != DIGEST_SIZE or len(model) != DIGEST_SIZE:
        raise ValueError("code and model digests must be 48-byte SHA-384 values")
    return _h384(b"secure-infer/tee/measurement/v1", code, model)


def awaiting_measurement(code: bytes) -> bytes:
    """The measurement of an enclave that imported code (digest `code`) and holds no model yet.

    Its own domain, so it never equals a code+model measurement (`enclave_measurement`)."""
    if len(code) != DIGEST_SIZE:
        raise ValueError("a code digest is a 48-byte SHA-384 value")
    return _h384(b"secure-infer/tee/awaiting-model/v1", code)


def input_digest(data: bytes) -> bytes:
    """SHA-384 of the input bytes an enclave ran on."""
    return _h384(b"secure-infer/tee/input/v1", data)


def result_digest(output: bytes) -> bytes:
    """SHA-384 of the output bytes an enclave returned."""
    return _h384(b"secure-infer/tee/result/v1", output)


def report_data(nonce: bytes, measurement: bytes, input_: bytes, result: bytes) -> bytes:
    """The 64 bytes a platform signs: SHA-512 over nonce, measurement, input and result digests."""
    if len(nonce) < NONCE_SIZE:
        raise ValueError(f"nonce must be at least {NONCE_SIZE} bytes, got {len(nonce)}")
    if any(len(d) != DIGEST_SIZE for d in (measurement, input_, result)):
        raise ValueError("measurement, input and result digests must be 48-byte SHA-384 values")
    return hashlib.sha512(
        encode(b"secure-infer/tee/report-data/v2", nonce, measurement, input_, result)
    ).digest()
