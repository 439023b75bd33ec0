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
(N, C). Malformed requests raise `InvalidInput` inside the enclave (the host sees an enclave
error).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load, save

from .checks import as_images, as_texts
from .errors import InvalidInput, ModelFormatError
from .nets import build_net, read_json

ENTRY = "verification.fides.enclave_app:verifier_handler"
_LEN = 8


def verifier_bundle(directory: str | Path) -> bytes:
    """The model bytes an enclave loads for the Fides directory `directory` (deterministic)."""
    path = Path(directory)
    config = read_json(path / "fides.json")
    try:
        head = {
            "net": config["nets"]["verifier"],
            "task": config["task"],
            "max_length": config["max_length"],
        }
    except (KeyError, TypeError) as exc:
        raise ModelFormatError(f"{path / 'fides.json'} is malformed: {exc!r}") from exc
    weights = path / "verifier.safetensors"
    if not weights.exists():
        raise ModelFormatError(f"missing weights file {weights}")
    text = json.dumps(head, sort_keys=True, separators=(",", ":")).encode()
    return len(text).to_bytes(_LEN, "big") + text + weights.read_bytes()


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
    try:
        return load(data)["probs"]
    except Exception as exc:  # noqa: BLE001
        raise InvalidInput(f"verifier output is malformed: {exc}") from None


def verifier_handler(model: bytes) -> Callable[[bytes], bytes]:
    """Enclave entry point: build the verification model from a bundle; return its handler."""
    torch.set_num_threads(1)
    config, weights = _split(model)
    net = build_net(config["net"])
    net.load_state_dict(load(weights), strict=True)
    net.eval()
    task, max_length = config["task"], int(config["max_length"])
    tokenizer = None
    if task == "text":
        from .text import load_tokenizer

        tokenizer = load_tokenizer()

    def handle(data: bytes) -> bytes:
        x = decode_request(data)
        if task == "image" and isinstance(x, list) or task == "text" and not isinstance(x, list):
            raise InvalidInput(f"this verifier takes {task} inputs")
        if isinstance(x, list):
            from .text import tokenize

            x = tokenize(tokenizer, x, max_length)
        with torch.no_grad():
            probs = net(x).softmax(1)
        return save({"probs": probs.float().contiguous()})

    return handle
