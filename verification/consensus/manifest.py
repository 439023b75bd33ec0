"""Model manifests: what a model's publisher commits to, and what clients check nodes against.

A manifest lists, for one model, the weight digest of every layer (so the expected digest of any
span [s, e) follows, see `digests.span_digest`) and the calibrated comparison tolerance of every
span. The publisher signs it with an Ed25519 key; a client pins the publisher's public key and
refuses a manifest whose signature does not verify. A client that holds the weights itself may
build an unsigned manifest from them (`signed=False`); it is then its own publisher.

On the wire and on disk: canonical JSON (sorted keys, no spaces); the signature covers the
canonical encoding of every field but "signature".
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from verification.consensus.compare import Tolerance
from verification.consensus.digests import span_digest
from verification.consensus.errors import InvalidManifest

FORMAT = "secure-infer/manifest/v1"


@dataclass(frozen=True, slots=True)
class SpanTolerance:
    start: int
    end: int
    tolerance: Tolerance


def _canonical(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    model: str
    layer_digests: tuple[str, ...]
    tolerances: Mapping[tuple[int, int], Tolerance]
    calibration: Mapping[str, Any] = field(default_factory=dict)  # inputs, variants, margin
    publisher_key: bytes = b""  # raw Ed25519 public key; empty when unsigned
    signature: bytes = b""

    @property
    def num_layers(self) -> int:
        return len(self.layer_digests)

    @property
    def signed(self) -> bool:
        return bool(self.signature)

    def uncovered(self, start: int, end: int) -> str | None:
        """Why the manifest does not cover span [start, end) (None when it does): a span
        outside the model, or one without a calibrated tolerance, cannot be checked."""
        if not 0 <= start < end <= self.num_layers:
            return f"span [{start}, {end}) is outside the model's {self.num_layers} layers"
        if (start, end) not in self.tolerances:
            return f"the manifest has no calibrated tolerance for span [{start}, {end})"
        return None

    def span_digest(self, start: int, end: int) -> str:
        if not 0 <= start < end <= self.num_layers:
            raise InvalidManifest(f"{self.model}: span [{start}, {end}) is outside the model")
        return span_digest(start, end, self.layer_digests[start:end])

    def tolerance(self, start: int, end: int) -> Tolerance:
        try:
            return self.tolerances[(start, end)]
        except KeyError:
            raise InvalidManifest(
                f"{self.model}: the manifest has no calibrated tolerance for span [{start}, {end})"
            ) from None

    # -- encoding ----------------------------------------------------------------------------
    def body(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model": self.model,
            "layer_digests": list(self.layer_digests),
            "tolerances": {
                f"{s}-{e}": {
                    "value": t.value,
                    "eps_max": t.eps_max,
                    "margin": t.margin,
                    "samples": t.samples,
                    "method": t.method,
                }
                for (s, e), t in sorted(self.tolerances.items())
            },
            "calibration": dict(self.calibration),
            "publisher_key": self.publisher_key.hex(),
        }

    def to_json(self) -> str:
        data = self.body()
        data["signature"] = self.signature.hex()
        return json.dumps(data, sort_keys=True, indent=1)

    def sign(self, key: Ed25519PrivateKey) -> Manifest:
        """A copy signed by the publisher's key."""
        public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        unsigned = Manifest(
            model=self.model,
            layer_digests=self.layer_digests,
            tolerances=self.tolerances,
            calibration=self.calibration,
            publisher_key=public,
        )
        return Manifest(
            model=self.model,
            layer_digests=self.layer_digests,
            tolerances=self.tolerances,
            calibration=self.calibration,
            publisher_key=public,
            signature=key.sign(_canonical(unsigned.body())),
        )

    @classmethod
    def from_json(cls, text: str | bytes, *, publisher_key: bytes | None) -> Manifest:
        """Parse and check a manifest.

        Args:
            publisher_key: the pinned raw Ed25519 key of the publisher; the manifest must be
                signed by it. None accepts only an *unsigned* manifest (one the caller built
                from weights it holds itself); a signed one then still has its signature
                checked against the key it names.
        """
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise InvalidManifest(f"not a {FORMAT} manifest")
            digests = tuple(str(d) for d in data["layer_digests"])
            for d in digests:
                bytes.fromhex(d)
                if len(d) != 64:
                    raise InvalidManifest(f"layer digest {d!r} is not 64 hex characters")
            tolerances: dict[tuple[int, int], Tolerance] = {}
            for key, t in data["tolerances"].items():
                s, _, e = key.partition("-")
                tol = Tolerance(
                    float(t["value"]),
                    float(t["eps_max"]),
                    float(t["margin"]),
                    int(t["samples"]),
                    str(t["method"]),
                )
                if not (math.isfinite(tol.value) and tol.value > 0):
                    raise InvalidManifest(f"tolerance of span {key} is not a positive number")
                tolerances[(int(s), int(e))] = tol
            manifest = cls(
                model=str(data["model"]),
                layer_digests=digests,
                tolerances=tolerances,
                calibration=dict(data.get("calibration", {})),
                publisher_key=bytes.fromhex(data.get("publisher_key", "")),
                signature=bytes.fromhex(data.get("signature", "")),
            )
        except InvalidManifest:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidManifest(f"malformed manifest: {exc!r}") from None
        manifest._check_signature(publisher_key)
        return manifest

    def _check_signature(self, pinned: bytes | None) -> None:
        if pinned is not None and self.publisher_key != pinned:
            raise InvalidManifest(
                f"{self.model}: manifest is signed by {self.publisher_key.hex()[:16] or 'nobody'}"
                f", not by the pinned publisher {pinned.hex()[:16]}"
            )
        if not self.signature:
            if pinned is not None:
                raise InvalidManifest(f"{self.model}: manifest is not signed")
            return
        unsigned = Manifest(
            model=self.model,
            layer_digests=self.layer_digests,
            tolerances=self.tolerances,
            calibration=self.calibration,
            publisher_key=self.publisher_key,
        )
        try:
            Ed25519PublicKey.from_public_bytes(self.publisher_key).verify(
                self.signature, _canonical(unsigned.body())
            )
        except (InvalidSignature, ValueError):
            raise InvalidManifest(f"{self.model}: bad publisher signature") from None

    @classmethod
    def load(cls, path: Path, *, publisher_key: bytes | None) -> Manifest:
        try:
            text = path.read_text()
        except OSError as exc:
            raise InvalidManifest(f"cannot read manifest {path}: {exc.strerror}") from None
        return cls.from_json(text, publisher_key=publisher_key)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())


def build(
    model: str,
    layer_digests: Sequence[str],
    tolerances: Mapping[tuple[int, int], Tolerance],
    calibration: Mapping[str, Any],
) -> Manifest:
    """An unsigned manifest; `Manifest.sign` makes it a published one."""
    n = len(layer_digests)
    for s, e in tolerances:
        if not 0 <= s < e <= n:
            raise InvalidManifest(f"tolerance for span [{s}, {e}) outside {model}'s {n} layers")
    return Manifest(
        model=model,
        layer_digests=tuple(layer_digests),
        tolerances=dict(tolerances),
        calibration=dict(calibration),
    )
