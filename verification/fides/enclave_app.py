"""The Fides verification model as an enclave application (the code an enclave measures).

An enclave (`tee`) loads `ENTRY` with the bytes of `verifier_bundle(directory)` and then calls
the handler once per request. This module is what the enclave's code digest covers, so it is
kept small and imports no networking; it depends on torch, safetensors and `verification.fides`
(and on transformers' tokenizer for text tasks).

Bundle (model bytes): 8-byte big-endian length of a canonical JSON config (the verifier net's
config, task, max_length), the JSON, then the bytes of `verifier.safetensors` exactly as saved
by `FidesVerifier.save`. Anyone holding the same full Fides directory rebuilds the same bytes,
hence the same model digest and enclave measurement; clients hold the client bundle instead,
which records that digest but not the weights (`FidesVerifier.save_client`: a service that
knew the weights could answer with the verifier's own distribution and never be flagged).

Request: images as `IMAGES_MAGIC`, the count N (4 bytes big-endian), then N x 1 x 28 x 28
little-endian float32 pixels in [0, 1], exactly the bytes of the wire message, so the host and
the client build it without decoding (`image_request`: the enclave's quote or session tag binds
the request's digest, and the client recomputes it from what it sent); or texts as
`TEXTS_MAGIC` then the UTF-8 of a JSON list of strings. Reply: safetensors with "probs" float32
(N, C); with escalation (a format-4 bundle with `escalation_margin`: the bundle also holds the
service model, `verifier.Recomputed`) also "rows" int64 (k,), the escalated and randomly
audited rows (`verifier.escalated_rows`), and "reference" float32 (k, C), the service model's
distribution on them (`decode_reply`).
Malformed requests raise `InvalidInput` inside the enclave (the host sees an enclave error).

Protocol "verdicts" (`verifier_bundle(directory, protocol="verdicts")`): the bundle also holds
the detector, the re-classifier and the threshold, and the enclave NEVER returns the
verifier's distribution (a client that got it could distil a copy of the verifier and answer
with it unflagged: bench/fides_mimic.py). Two requests per query batch:
`PREPARE_MAGIC + <request as above>` returns the distribution SEALED under a key generated
inside the enclave (AES-256-GCM, bound to the digest of that request: `request_digest`); the
client cannot read it. `judge_request(sealed, request_digest, service_probs)` returns only the
verdicts: canonical JSON `{"attacked": [bool], "reclassified": [int | null]}` (no scores, no
verifier labels). A sealed distribution opens only in the enclave that made it, and only for
the request it was made for.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load, save

from .checks import as_images, as_texts, probs_array
from .errors import InvalidInput, ModelFormatError
from .nets import build_net, read_json
from .verifier import Recomputed, escalated_rows

ENTRY = "verification.fides.enclave_app:verifier_handler"
_LEN = 8


PROTOCOLS = ("distribution", "verdicts")
PREPARE_MAGIC = b"FIDES-PREPARE-v1\n"
JUDGE_MAGIC = b"FIDES-JUDGE-v1\n"
DIGEST_SIZE = 48  # SHA-384
_NONCE = 12  # AES-GCM
SEALED_OVERHEAD = _NONCE + 8 + 16  # a sealed distribution: nonce, (N, C) header, GCM tag


def max_sealed_size(n: int, n_classes: int) -> int:
    """The largest sealed PREPARE reply for `n` inputs of `n_classes` classes: the distribution
    and, from an escalating bundle, k <= n recomputed rows (index and distribution each)."""
    row = 4 * n_classes
    return SEALED_OVERHEAD + n * row + 4 + n * (8 + row)


_JUDGE_NETS = ("detector", "reclassifier")


def verifier_bundle(directory: str | Path, protocol: str = "distribution") -> bytes:
    """The model bytes an enclave loads for the Fides directory `directory` (deterministic).

    "distribution": the verifier only (the enclave returns its distribution); "verdicts": the
    verifier, detector, re-classifier and threshold (the enclave returns verdicts only)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    path = Path(directory)
    config = read_json(path / "fides.json")
    names: tuple[str, ...] = ("verifier", *(_JUDGE_NETS if protocol == "verdicts" else ()))
    try:
        head: dict[str, Any] = {
            "net": config["nets"]["verifier"],
            "task": config["task"],
            "max_length": config["max_length"],
        }
        margin = config.get("escalation_margin") if config["format_version"] >= 4 else None
        if margin is not None:  # the service model rides along (the enclave recomputes)
            names = (*names, "reference")
            head.update(
                {
                    "escalation_margin": margin,
                    "audit_rate": config.get("audit_rate", 0.0),
                    "reference": config["nets"]["reference"],
                }
            )
        if protocol == "verdicts":
            version = config["format_version"]
            head.update(
                {
                    "protocol": protocol,
                    "detector": config["nets"]["detector"],
                    "reclassifier": config["nets"]["reclassifier"],
                    "threshold": config["threshold"],
                    "log_floor": config["log_floor"] if version >= 2 else None,
                    "disagreement_bonus": config["disagreement_bonus"] if version >= 3 else 0.0,
                }
            )
    except (KeyError, TypeError) as exc:
        raise ModelFormatError(f"{path / 'fides.json'} is malformed: {exc!r}") from exc
    blobs = []
    for name in names:
        weights = path / f"{name}.safetensors"
        if not weights.exists():
            raise ModelFormatError(f"missing weights file {weights}")
        blobs.append(weights.read_bytes())
    if len(blobs) > 1:
        head["sizes"] = [len(b) for b in blobs]
    text = json.dumps(head, sort_keys=True, separators=(",", ":")).encode()
    return len(text).to_bytes(_LEN, "big") + text + b"".join(blobs)


def request_digest(request: bytes) -> bytes:
    """The digest a sealed distribution is bound to: SHA-384 of the enclave request (images
    or texts, as `image_request` / `encode_request` build it)."""
    return hashlib.sha384(b"secure-infer/fides/request/v1\0" + request).digest()


def prepare_request(request: bytes) -> bytes:
    """The "verdicts" protocol's first call for an enclave request."""
    return PREPARE_MAGIC + request


def judge_request(sealed: bytes, digest: bytes, service_probs: bytes) -> bytes:
    """The "verdicts" protocol's second call: the sealed distribution, the digest of the request
    it was made for, and the service's (N, C) distribution as little-endian float32 bytes."""
    if len(digest) != DIGEST_SIZE:
        raise InvalidInput(f"request digest must be {DIGEST_SIZE} bytes")
    return JUDGE_MAGIC + len(sealed).to_bytes(4, "big") + sealed + digest + service_probs


def decode_verdicts(data: bytes, n: int) -> tuple[list[bool], list[int | None]]:
    """(attacked, re-classified labels) from a "verdicts" reply (check its tag or quote first)."""
    try:
        obj = json.loads(data)
        attacked = [bool(a) for a in obj["attacked"]]
        recl = [None if r is None else int(r) for r in obj["reclassified"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"verdicts are malformed: {exc}") from None
    if len(attacked) != n or len(recl) != n:
        raise InvalidInput(f"{len(attacked)} verdicts for {n} inputs")
    return attacked, recl


def _split(bundle: bytes) -> tuple[dict[str, Any], bytes]:
    n = int.from_bytes(bundle[:_LEN], "big")
    if len(bundle) < _LEN + n:
        raise ModelFormatError("truncated verifier bundle")
    return json.loads(bundle[_LEN : _LEN + n]), bundle[_LEN + n :]


IMAGES_MAGIC = b"FIDES-IMAGES-v1\n"
TEXTS_MAGIC = b"FIDES-TEXTS-v1\n"
_SIDE = 28
_IMAGE_BYTES = _SIDE * _SIDE * 4


def image_request(pixels: bytes, count: int) -> bytes:
    """The request for `count` images given as little-endian float32 bytes (not checked here:
    the enclave validates shape and values)."""
    return IMAGES_MAGIC + count.to_bytes(4, "big") + pixels


def encode_request(inputs: object, task: str) -> bytes:
    """Validate client inputs for `task` and encode them as an enclave request."""
    if task == "image":
        x = as_images(inputs).contiguous()
        return image_request(x.numpy().astype("<f4", copy=False).tobytes(), len(x))
    return TEXTS_MAGIC + json.dumps(as_texts(inputs)).encode()


def decode_request(data: bytes) -> torch.Tensor | list[str]:
    """Images (N, 1, 28, 28) or texts from an enclave request; `InvalidInput` if malformed."""
    if data.startswith(IMAGES_MAGIC):
        head = len(IMAGES_MAGIC) + 4
        count = int.from_bytes(data[len(IMAGES_MAGIC) : head], "big")
        if count == 0 or len(data) != head + count * _IMAGE_BYTES:
            raise InvalidInput(f"{len(data) - head} pixel bytes for {count} images")
        pixels = np.frombuffer(data, dtype="<f4", offset=head).reshape(count, 1, _SIDE, _SIDE)
        return as_images(torch.from_numpy(pixels.copy()))
    if data.startswith(TEXTS_MAGIC):
        try:
            return as_texts(json.loads(data[len(TEXTS_MAGIC) :].decode()))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInput(f"texts are not a JSON list of strings: {exc}") from None
    raise InvalidInput("request is neither images nor texts")


def decode_output(data: bytes) -> torch.Tensor:
    """The verifier's (N, C) distribution from an enclave reply (check the quote first)."""
    return decode_reply(data)[0]


def decode_reply(data: bytes) -> tuple[torch.Tensor, Recomputed | None]:
    """The verifier's (N, C) distribution and, from an escalating bundle's enclave, the
    recomputed rows (unchecked: `FidesVerifier.check_recomputed` checks them against the
    bundle's rule) from an enclave reply (check the quote first)."""
    try:
        tensors = load(data)
        probs = tensors["probs"]
        if "rows" not in tensors and "reference" not in tensors:
            return probs, None
        rows, ref = tensors["rows"], tensors["reference"]
    except Exception as exc:  # noqa: BLE001
        raise InvalidInput(f"verifier output is malformed: {exc}") from None
    if rows.dtype != torch.int64 or rows.dim() != 1 or ref.dim() != 2:
        raise InvalidInput("verifier output: malformed recomputed rows")
    if ref.dtype != torch.float32:
        raise InvalidInput(f"verifier output: recomputed distributions are {ref.dtype}")
    return probs, Recomputed(rows.numpy(), ref.numpy())


def _net(config: dict[str, Any], weights: bytes) -> torch.nn.Module:
    net = build_net(config)
    net.load_state_dict(load(weights), strict=True)
    return net.eval()


def verifier_handler(model: bytes) -> Callable[[bytes], bytes]:
    """Enclave entry point: build the verification model from a bundle; return its handler."""
    torch.set_num_threads(1)
    config, weights = _split(model)
    protocol = config.get("protocol", "distribution")
    margin = config.get("escalation_margin")
    audit_rate = float(config.get("audit_rate", 0.0))
    names = ["verifier", *(_JUDGE_NETS if protocol == "verdicts" else ())]
    names += ["reference"] if margin is not None else []
    if len(names) > 1:
        sizes = [int(n) for n in config["sizes"]]
        if len(sizes) != len(names) or sum(sizes) != len(weights):
            raise ModelFormatError(f"{protocol} bundle: weight sizes do not add up")
        cuts = np.cumsum([0, *sizes]).tolist()
        parts = [weights[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
        blobs = dict(zip(names, parts, strict=True))
    else:
        blobs = {"verifier": weights}
    net = _net(config["net"], blobs["verifier"])
    reference = None if margin is None else _net(config["reference"], blobs["reference"])
    task, max_length = config["task"], int(config["max_length"])
    tokenizer = None
    if task == "text":
        from .text import load_tokenizer

        tokenizer = load_tokenizer()

    def probs_of(data: bytes) -> tuple[torch.Tensor, Recomputed | None]:
        x = decode_request(data)
        if task == "image" and isinstance(x, list) or task == "text" and not isinstance(x, list):
            raise InvalidInput(f"this verifier takes {task} inputs")
        if isinstance(x, list):
            from .text import tokenize

            x = tokenize(tokenizer, x, max_length)
        with torch.no_grad():
            pv = net(x).softmax(1).float().contiguous()
            if reference is None:
                return pv, None
            rows = escalated_rows(pv.numpy(), margin, audit_rate)  # audits: OS entropy
            if not len(rows):
                return pv, Recomputed.none(pv.shape[1])
            ref = reference(x[torch.from_numpy(rows)]).softmax(1).float().contiguous()
            return pv, Recomputed(rows, ref.numpy())

    if protocol != "verdicts":

        def distribution(data: bytes) -> bytes:
            pv, recomputed = probs_of(data)
            if recomputed is None:
                return save({"probs": pv})
            return save(
                {
                    "probs": pv,
                    "rows": torch.from_numpy(recomputed.rows),
                    "reference": torch.from_numpy(recomputed.probs),
                }
            )

        return distribution

    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from .verifier import LEGACY_LOG_FLOOR, FidesVerifier

    floor = config["log_floor"]
    judge = FidesVerifier(
        task,
        None,
        _net(config["detector"], blobs["detector"]),
        _net(config["reclassifier"], blobs["reclassifier"]),
        float(config["threshold"]),
        log_floor=LEGACY_LOG_FLOOR if floor is None else float(floor),
        disagreement_bonus=float(config["disagreement_bonus"]),
        n_classes=int(config["net"]["n_classes"]),
        escalation_margin=margin,
        audit_rate=audit_rate,
    )
    seal = AESGCM(AESGCM.generate_key(bit_length=256))  # never leaves this process

    def handle(data: bytes) -> bytes:
        if data.startswith(PREPARE_MAGIC):
            request = data[len(PREPARE_MAGIC) :]
            probs, recomputed = probs_of(request)
            pv = probs.numpy().astype("<f4")
            nonce = os.urandom(_NONCE)
            plain = len(pv).to_bytes(4, "big") + pv.shape[1].to_bytes(4, "big") + pv.tobytes()
            if recomputed is not None:  # k, then k row indices and k recomputed distributions
                plain += len(recomputed.rows).to_bytes(4, "big")
                plain += recomputed.rows.astype("<i8").tobytes()
                plain += recomputed.probs.astype("<f4").tobytes()
            return nonce + seal.encrypt(nonce, plain, request_digest(request))
        if not data.startswith(JUDGE_MAGIC):
            raise InvalidInput(
                "this verifier answers verdicts only (protocol 'verdicts'): PREPARE, then JUDGE"
            )
        at = len(JUDGE_MAGIC)
        n_sealed = int.from_bytes(data[at : at + 4], "big")
        sealed = data[at + 4 : at + 4 + n_sealed]
        digest = data[at + 4 + n_sealed : at + 4 + n_sealed + DIGEST_SIZE]
        ps_bytes = data[at + 4 + n_sealed + DIGEST_SIZE :]
        if len(sealed) != n_sealed or len(digest) != DIGEST_SIZE or n_sealed <= _NONCE:
            raise InvalidInput("truncated JUDGE request")
        try:
            plain = seal.decrypt(sealed[:_NONCE], sealed[_NONCE:], digest)
        except InvalidTag:
            raise InvalidInput(
                "the sealed distribution does not open: altered, made by another enclave, "
                "or made for another input"
            ) from None
        n, c = int.from_bytes(plain[:4], "big"), int.from_bytes(plain[4:8], "big")
        end = 8 + n * c * 4
        pv = np.frombuffer(plain[8:end], dtype="<f4").reshape(n, c)
        recomputed = None
        if reference is not None:  # sealed by this enclave: well-formed by construction
            k = int.from_bytes(plain[end : end + 4], "big")
            rows = np.frombuffer(plain[end + 4 : end + 4 + 8 * k], dtype="<i8")
            ref = np.frombuffer(plain[end + 4 + 8 * k :], dtype="<f4").reshape(k, c)
            recomputed = Recomputed(rows.astype(np.int64), ref)
        if len(ps_bytes) != n * c * 4:
            raise InvalidInput(f"service distribution: {len(ps_bytes)} bytes for ({n}, {c})")
        ps = probs_array(np.frombuffer(ps_bytes, dtype="<f4").reshape(n, c), c, n_rows=n)
        verdicts = judge.judge_checked(ps, pv, recomputed)  # pv, recomputed: sealed by us
        out = {"attacked": verdicts.attacked, "reclassified": verdicts.reclassified_label}
        return json.dumps(out, separators=(",", ":")).encode()

    return handle
