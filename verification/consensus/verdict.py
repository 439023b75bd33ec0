"""Signed verdicts: the client's record of one consensus decision, with the nodes' receipts.

A verdict names the span, the tolerance, every replica's signed receipt, the pairwise distances
(over the step's last `step_tokens` token rows) and the decision, and is signed by the client's
Ed25519 key. When a replica is convicted the verdict also carries the evidence: what was sent to
and what came back from **every** replica of the decision, as the bytes that travelled (a
generation replica that joined late was sent the span's history plus the step). A third party
can check:

1. every receipt's signature, and that its node id is the one its key yields (the node did
   return that output digest for that input digest); that no node id and no key appears twice
   (one receipt counted twice would outvote an honest replica);
2. that all receipts are for the same span, and for the same input (or, with evidence, inputs
   whose last `step_tokens` rows are the same step, under the same attention mask);
3. that the distance matrix is one (zero diagonal, symmetric), that the evidence tensors hash
   to the receipts' digests, and that re-running the decision rule
   (`compare.decide_distances`) on the distances recomputed from them gives exactly the stated
   winner and deviating replicas at the verdict's tolerance;
4. with the span's weights, re-running the input settles which output was right.

`verify_verdict` does 1-3 and raises InvalidVerdict on any failure. A verdict that convicts
somebody but lacks the evidence of any of its replicas (the client ran with `evidence=False`, or
a tensor was over the evidence cap) is refused as **unverifiable**: its distances and its
decision would be the client's word only. Such a conviction still stands in the signing client's
own reputation (it saw the outputs), but it proves nothing to anybody else.

What a verified verdict does **not** prove: that the client was honest about who the replicas
were. Receipts name node ids (keys), and a client can mint keys, run its own "replicas" and sign
a verdict in which its puppets outvote a real node's receipt. What steps 1-3 establish is that
the named receipts' outputs, as evidenced, disagree as stated; only re-running the evidence
input with the span's weights (step 4) settles who was right. For a generation replica with
`past_length` > 0 the evidence holds only what it was sent in that call, not the history in
its cache, so even step 4 cannot settle its output from the verdict alone. Receipts name node
ids, not the certificate names the client's reputation is keyed by.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from verification.consensus.compare import Decision, decide_distances, distance
from verification.consensus.digests import tensor_digest
from verification.consensus.errors import BadReceipt, InvalidManifest, InvalidVerdict
from verification.consensus.manifest import Manifest
from verification.consensus.receipts import Receipt

FORMAT = "secure-infer/verdict/v1"
_NP_DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclass(frozen=True, slots=True)
class WireTensor:
    """A tensor as it travelled: dtype name, shape, raw little-endian bytes."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes
    extra: bytes = b""  # folded into the digest (the attention mask's digest for inputs)

    def digest(self) -> bytes:
        return tensor_digest(self.dtype, self.shape, self.data, extra=self.extra)

    def to_torch(self) -> torch.Tensor:
        if self.dtype == "bfloat16":
            raw = np.frombuffer(self.data, dtype=np.uint16).astype(np.uint32) << 16
            return torch.from_numpy(raw.view(np.float32).reshape(self.shape).copy())
        if self.dtype not in _NP_DTYPES:
            raise InvalidVerdict(f"evidence dtype {self.dtype!r} is not a float type")
        arr = np.frombuffer(self.data, dtype=_NP_DTYPES[self.dtype]).reshape(self.shape)
        return torch.from_numpy(arr.astype(np.float32))

    def to_json(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype,
            "shape": list(self.shape),
            "data": base64.b64encode(self.data).decode(),
            "extra": self.extra.hex(),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> WireTensor:
        return cls(
            str(d["dtype"]),
            tuple(int(x) for x in d["shape"]),
            base64.b64decode(d["data"], validate=True),
            bytes.fromhex(d.get("extra", "")),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    model: str
    start: int
    end: int
    epoch: int
    time_s: float
    tolerance: float
    receipts: tuple[Receipt, ...]
    distances: tuple[tuple[float, ...], ...]
    winner: int | None
    deviate: tuple[int, ...]
    step_tokens: int = 1
    # replica index -> (what it was sent, what it answered); empty = digests only
    evidence: Mapping[int, tuple[WireTensor, WireTensor]] = field(default_factory=dict)
    client_key: bytes = b""
    signature: bytes = b""

    @property
    def convicted(self) -> tuple[str, ...]:
        """Node ids of the deviating replicas (none when undecided)."""
        if self.winner is None:
            return ()
        return tuple(self.receipts[i].node_id for i in self.deviate)

    def body(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model": self.model,
            "start": self.start,
            "end": self.end,
            "epoch": self.epoch,
            "time_s": self.time_s,
            "tolerance": self.tolerance,
            "receipts": [r.to_json() for r in self.receipts],
            "distances": [[_num(d) for d in row] for row in self.distances],
            "winner": self.winner,
            "deviate": list(self.deviate),
            "step_tokens": self.step_tokens,
            "evidence": {
                str(i): {"sent": a.to_json(), "reply": b.to_json()}
                for i, (a, b) in sorted(self.evidence.items())
            },
            "client_key": self.client_key.hex(),
        }

    @property
    def id(self) -> str:
        return hashlib.sha256(_canonical(self.body())).hexdigest()

    def to_json(self) -> str:
        data = self.body()
        data["signature"] = self.signature.hex()
        return json.dumps(data, sort_keys=True)


def _num(d: float) -> float | str:
    return d if math.isfinite(d) else "inf"


def _canonical(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def sign_verdict(
    key: Ed25519PrivateKey,
    *,
    model: str,
    start: int,
    end: int,
    epoch: int,
    time_s: float,
    receipts: Sequence[Receipt],
    decision: Decision,
    step_tokens: int,
    evidence: Mapping[int, tuple[WireTensor, WireTensor]] | None = None,
) -> Verdict:
    """The client's signed verdict on one decision."""
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    unsigned = Verdict(
        model=model,
        start=start,
        end=end,
        epoch=epoch,
        time_s=time_s,
        tolerance=decision.tolerance,
        receipts=tuple(receipts),
        distances=decision.distances,
        winner=decision.winner,
        deviate=decision.deviate,
        step_tokens=step_tokens,
        evidence=dict(evidence or {}),
        client_key=public,
    )
    signature = key.sign(_canonical(unsigned.body()))
    return Verdict(**{**_fields(unsigned), "signature": signature})


def _fields(v: Verdict) -> dict[str, Any]:
    return {name: getattr(v, name) for name in Verdict.__dataclass_fields__}


def parse_verdict(text: str | bytes) -> Verdict:
    try:
        d = json.loads(text)
        if d.get("format") != FORMAT:
            raise InvalidVerdict(f"not a {FORMAT} verdict")
        ev = d.get("evidence") or {}
        return Verdict(
            model=str(d["model"]),
            start=int(d["start"]),
            end=int(d["end"]),
            epoch=int(d["epoch"]),
            time_s=float(d["time_s"]),
            tolerance=float(d["tolerance"]),
            receipts=tuple(Receipt.from_json(r) for r in d["receipts"]),
            distances=tuple(tuple(float(x) for x in row) for row in d["distances"]),
            winner=None if d["winner"] is None else int(d["winner"]),
            deviate=tuple(int(i) for i in d["deviate"]),
            step_tokens=int(d["step_tokens"]),
            evidence={
                int(i): (WireTensor.from_json(t["sent"]), WireTensor.from_json(t["reply"]))
                for i, t in ev.items()
            },
            client_key=bytes.fromhex(d["client_key"]),
            signature=bytes.fromhex(d["signature"]),
        )
    except InvalidVerdict:
        raise
    except (BadReceipt, KeyError, TypeError, ValueError) as exc:
        raise InvalidVerdict(f"malformed verdict: {exc}") from None


def verify_verdict(
    verdict: Verdict | str | bytes,
    *,
    client_key: bytes | None = None,
    manifest: Manifest | None = None,
) -> Verdict:
    """Check a verdict (see the module docstring, steps 1-3); returns it, raises InvalidVerdict.

    Args:
        client_key: pin the raw Ed25519 key of the client that must have signed it.
        manifest: the model's manifest; the verdict's tolerance must then be the manifest's for
            its span (without it, the tolerance is the client's word).
    """
    v = verdict if isinstance(verdict, Verdict) else parse_verdict(verdict)
    if client_key is not None and v.client_key != client_key:
        raise InvalidVerdict("verdict is signed by another client than the pinned one")
    if manifest is not None:
        if manifest.model != v.model:
            raise InvalidVerdict(f"verdict is for {v.model}, the manifest for {manifest.model}")
        try:
            expected = manifest.tolerance(v.start, v.end).value
        except InvalidManifest as exc:
            raise InvalidVerdict(str(exc)) from None
        if v.tolerance != expected:
            raise InvalidVerdict(
                f"verdict tolerance {v.tolerance:.3e} is not the manifest's {expected:.3e}"
            )
    unsigned = Verdict(**{**_fields(v), "signature": b""})
    try:
        Ed25519PublicKey.from_public_bytes(v.client_key).verify(
            v.signature, _canonical(unsigned.body())
        )
    except (InvalidSignature, ValueError):
        raise InvalidVerdict("bad client signature on the verdict") from None
    n = len(v.receipts)
    if n == 0 or len(v.distances) != n or any(len(row) != n for row in v.distances):
        raise InvalidVerdict("verdict needs one receipt and one distance row per replica")
    if v.step_tokens < 1:
        raise InvalidVerdict("step_tokens must be at least 1")
    _check_matrix(v.distances)
    ids: set[str] = set()
    keys: set[bytes] = set()
    for i, r in enumerate(v.receipts):
        try:
            r.verify()  # signature, and node id derived from the key
        except BadReceipt as exc:
            raise InvalidVerdict(str(exc)) from None
        if (r.model, r.start, r.end) != (v.model, v.start, v.end):
            raise InvalidVerdict(f"receipt of node {r.node_id[:8]} is for another span")
        # One node, one vote: a receipt counted twice would outvote an honest replica.
        if r.node_id in ids or r.public_key in keys:
            raise InvalidVerdict(
                f"receipt {i} is a second receipt of node {r.node_id[:8]}: every replica of a "
                "decision must be another node (node id and key)"
            )
        ids.add(r.node_id)
        keys.add(r.public_key)
    for i in v.evidence:
        if not 0 <= i < n:
            raise InvalidVerdict(f"evidence for replica {i} of {n}")
    if v.winner is not None and not 0 <= v.winner < n:
        raise InvalidVerdict(f"winner {v.winner} of {n} replicas")
    if any(not 0 <= i < n for i in v.deviate) or len(set(v.deviate)) != len(v.deviate):
        raise InvalidVerdict(f"deviate {list(v.deviate)} is not a set of replicas of {n}")
    if v.winner is not None and v.winner in v.deviate:
        raise InvalidVerdict(f"the winner, replica {v.winner}, is also named as deviating")
    convicts = v.winner is not None and bool(v.deviate)
    missing = [i for i in range(n) if i not in v.evidence]
    if convicts and missing:
        raise InvalidVerdict(
            f"conviction unverifiable: no evidence for replica(s) {missing}; its distances "
            "and decision are the client's word only"
        )
    distances = [list(row) for row in v.distances]
    if v.evidence:
        steps: dict[int, torch.Tensor] = {}
        outs: dict[int, torch.Tensor] = {}
        masks: set[bytes] = set()
        for i, (sent, reply) in sorted(v.evidence.items()):
            if sent.digest() != v.receipts[i].input_digest:
                raise InvalidVerdict(f"evidence input {i} does not hash to its receipt")
            if reply.digest() != v.receipts[i].output_digest:
                raise InvalidVerdict(f"evidence output {i} does not hash to its receipt")
            steps[i] = sent.to_torch()[:, -v.step_tokens :]
            outs[i] = reply.to_torch()[:, -v.step_tokens :]
            masks.add(sent.extra)
        first = steps[min(steps)]
        if len(masks) != 1 or any(not torch.equal(s, first) for s in steps.values()):
            raise InvalidVerdict("the evidence inputs are not the same step")
        digests = {v.receipts[i].input_digest for i in steps}
        for i in missing:  # no evidence: its input must be one of those shown
            if v.receipts[i].input_digest not in digests:
                raise InvalidVerdict(f"receipt {i} is for another input and no evidence says why")
        for i in outs:
            for j in outs:
                if i < j:
                    d = distance(outs[i], outs[j])
                    stated = v.distances[i][j]
                    if not (
                        (math.isinf(d) and math.isinf(stated))
                        or math.isclose(d, stated, rel_tol=1e-6, abs_tol=1e-9)
                    ):
                        raise InvalidVerdict(
                            f"distance between replicas {i} and {j} does not match"
                        )
                    distances[i][j] = distances[j][i] = d  # decide on the recomputed values
    elif len({r.input_digest for r in v.receipts}) != 1:
        raise InvalidVerdict("receipts are for different inputs and no evidence says why")
    # The whole decision is re-made from the (recomputed) distances by the rule the client
    # runs; the stated winner and deviating replicas must be exactly its outcome.
    again = decide_distances(distances, v.tolerance)
    if again.winner != v.winner or again.deviate != tuple(v.deviate):
        raise InvalidVerdict(
            f"the decision does not follow from the distances: they give winner {again.winner} "
            f"and deviating {list(again.deviate)}, the verdict states winner {v.winner} and "
            f"deviating {list(v.deviate)}"
        )
    return v


def _check_matrix(distances: Sequence[Sequence[float]]) -> None:
    """A distance matrix: non-negative (inf allowed), zero on the diagonal, symmetric."""
    n = len(distances)
    for i in range(n):
        for j in range(n):
            d = distances[i][j]
            if math.isnan(d) or d < 0:
                raise InvalidVerdict(f"distance [{i}][{j}] is {d}, not a distance")
            if i == j and d != 0.0:
                raise InvalidVerdict(f"distance [{i}][{i}] of a replica to itself is {d}, not 0")
            if d != distances[j][i]:
                raise InvalidVerdict(f"distances [{i}][{j}] and [{j}][{i}] differ")
