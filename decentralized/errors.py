"""Errors of the mesh layer, and the one table that maps them to gRPC status codes.

Tree::

    MeshError
    ├── InvalidRequest      malformed tensor, wrong shape/dtype, bad field      INVALID_ARGUMENT
    ├── UnknownModel        model or span the node does not serve               NOT_FOUND
    ├── SessionMismatch     KV-cache session missing or out of step             FAILED_PRECONDITION
    ├── Overloaded          too many sessions / requests                        RESOURCE_EXHAUSTED
    ├── Draining            the node is shutting down                           UNAVAILABLE
    ├── UploadStalled       a streamed request stopped arriving                 DEADLINE_EXCEEDED
    ├── NotPermitted        the caller's certificate may not make this call      PERMISSION_DENIED
    │   └── NotANode        record announced without that node's certificate
    ├── AlreadyProvisioned  a sealed verifier slot already holds its model      FAILED_PRECONDITION
    ├── PeerUnavailable     a peer died, stalled past its deadline, or refused  (client side)
    ├── PeerMisbehaved      a peer returned something that fails validation     (client side)
    └── NoRoute             no live nodes cover the requested layers            (client side)

Messages say what was expected and what arrived; they never carry tensor contents or keys.
"""

from __future__ import annotations

import grpc

from tee.errors import AttestationError
from verification.consensus.errors import InvalidManifest, NoConsensus


class MeshError(Exception):
    """Root of every error raised by the mesh layer."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidRequest(MeshError):
    """The request is malformed: wrong dtype, shape, size or field value."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class UnknownModel(MeshError):
    """The node does not serve the requested model or layer range."""

    code = grpc.StatusCode.NOT_FOUND


class SessionMismatch(MeshError):
    """A generation session is unknown, expired, or out of step with the client."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Overloaded(MeshError):
    """The node refuses work it has no capacity for."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Draining(MeshError):
    """The node is shutting down and accepts no new work."""

    code = grpc.StatusCode.UNAVAILABLE


class UploadStalled(MeshError):
    """A client-streamed request did not arrive in the time the node allows for its size."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Abandoned(MeshError):
    """A computation stopped between layers: its caller is gone or its deadline passed."""

    code = grpc.StatusCode.CANCELLED


class NotPermitted(MeshError):
    """The caller's certificate does not allow this call (not the node or owner it names)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class NotANode(NotPermitted):
    """A record was announced by a caller whose certificate is not that node's."""


class AlreadyProvisioned(MeshError):
    """A sealed verifier slot already holds its model (the enclave's key is gone)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class PeerUnavailable(MeshError):
    """A peer could not be reached, died, or missed its deadline."""

    code = grpc.StatusCode.UNAVAILABLE


class PeerMisbehaved(MeshError):
    """A peer answered with data that fails validation (bad signature, shape, values)."""

    code = grpc.StatusCode.DATA_LOSS


class NoRoute(MeshError):
    """No combination of live nodes covers the requested layers."""

    code = grpc.StatusCode.UNAVAILABLE


class SessionAborted(MeshError):
    """An MPC session ended early: a party died, stalled or misbehaved. Retry elsewhere."""

    code = grpc.StatusCode.ABORTED


class EnclaveFailed(MeshError):
    """A node's enclave (e.g. the Fides verifier's) crashed, timed out or raised."""

    code = grpc.StatusCode.INTERNAL


# Errors raised with their own type (client-side checks), and the status they correspond to.
FOREIGN_CODES: dict[type[Exception], grpc.StatusCode] = {
    AttestationError: grpc.StatusCode.PERMISSION_DENIED,
    NoConsensus: grpc.StatusCode.ABORTED,
    InvalidManifest: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_code(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status an error corresponds to (UNKNOWN for errors outside both tables)."""
    if isinstance(exc, MeshError):
        return exc.code
    for cls, code in FOREIGN_CODES.items():
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.UNKNOWN


# Status codes a client maps back to a domain error (the reverse of `MeshError.code`).
ERRORS_BY_CODE: dict[grpc.StatusCode, type[MeshError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.NOT_FOUND: UnknownModel,
    grpc.StatusCode.FAILED_PRECONDITION: SessionMismatch,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.UNAVAILABLE: PeerUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: PeerUnavailable,
    grpc.StatusCode.DATA_LOSS: PeerMisbehaved,
    grpc.StatusCode.PERMISSION_DENIED: NotPermitted,
    grpc.StatusCode.ABORTED: SessionAborted,
}
