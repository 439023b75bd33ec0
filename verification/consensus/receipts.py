"""Forward receipts: a node's signature on "for this input of this span I returned this output".

Every reply of the Shard service carries one. A receipt makes a node accountable: a client that
holds a receipt whose output deviates from the majority's can show it to anybody, and the node
cannot deny having produced that output for that input (Ed25519, RFC 8032). The signed message
is a fixed, length-prefixed encoding, so no two different receipts share a message:

    "secure-infer/receipt/v1" | model | start | end | session_id | past_length
    | input_digest (32 bytes) | output_digest (32 bytes) | node_id

A node id is derived from the node's public key (`node_id_of`), so a receipt verifies only if
its node id is the one its key yields: nobody can sign a receipt in another node's name.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from verification.consensus.errors import BadReceipt

_TAG = b"secure-infer/receipt/v1"


def node_id_of(public_key: bytes) -> str:
    """A node's id: hex of the first 16 bytes of SHA-256 of its raw Ed25519 public key."""
    return hashlib.sha256(public_key).digest()[:16].hex()


def _field(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def receipt_message(
    *,
    model: str,
    start: int,
    end: int,
    session_id: str,
    past_length: int,
    input_digest: bytes,
    output_digest: bytes,
    node_id: str,
) -> bytes:
    """The exact bytes a node signs for one forward."""
    if len(input_digest) != 32 or len(output_digest) != 32:
        raise ValueError("input and output digests are 32-byte SHA-256 values")
    return b"".join(
        _field(x)
        for x in (
            _TAG,
            model.encode(),
            struct.pack(">III", start, end, past_length),
            session_id.encode(),
            input_digest,
            output_digest,
            node_id.encode(),
        )
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Receipt:
    """One node's signed forward; `verify` raises BadReceipt, it never returns False."""

    model: str
    start: int
    end: int
    session_id: str
    past_length: int
    input_digest: bytes
    output_digest: bytes
    node_id: str
    public_key: bytes  # raw 32-byte Ed25519 key of the node (from its signed record)
    signature: bytes

    def message(self) -> bytes:
        return receipt_message(
            model=self.model,
            start=self.start,
            end=self.end,
            session_id=self.session_id,
            past_length=self.past_length,
            input_digest=self.input_digest,
            output_digest=self.output_digest,
            node_id=self.node_id,
        )

    def verify(self) -> None:
        """Check that the node id is the key's and the signature the key's."""
        if len(self.public_key) != 32:
            raise BadReceipt(f"receipt of node {self.node_id[:8]}: public key is not 32 bytes")
        if self.node_id != node_id_of(self.public_key):
            raise BadReceipt(
                f"receipt of node {self.node_id[:8]}: the node id is not derived from its key"
            )
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(
                self.signature, self.message()
            )
        except (InvalidSignature, ValueError):
            raise BadReceipt(f"receipt of node {self.node_id[:8]}: bad signature") from None

    def fields(self) -> dict[str, object]:
        """The receipt's fields as a dict (a copy with one field changed is a forgery)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    def to_json(self) -> dict[str, object]:
        return {
            "model": self.model,
            "start": self.start,
            "end": self.end,
            "session_id": self.session_id,
            "past_length": self.past_length,
            "input_digest": self.input_digest.hex(),
            "output_digest": self.output_digest.hex(),
            "node_id": self.node_id,
            "public_key": self.public_key.hex(),
            "signature": self.signature.hex(),
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Receipt:
        try:
            return cls(
                model=str(data["model"]),
                start=int(data["start"]),  # type: ignore[call-overload]
                end=int(data["end"]),  # type: ignore[call-overload]
                session_id=str(data["session_id"]),
                past_length=int(data["past_length"]),  # type: ignore[call-overload]
                input_digest=bytes.fromhex(str(data["input_digest"])),
                output_digest=bytes.fromhex(str(data["output_digest"])),
                node_id=str(data["node_id"]),
                public_key=bytes.fromhex(str(data["public_key"])),
                signature=bytes.fromhex(str(data["signature"])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BadReceipt(f"malformed receipt: {exc}") from None
