"""Classification heads for the HE mode: linear layers and x^2, stored as safetensors + JSON.

A head is a sequence of `Linear` (y = W x + b) and `Square` (y = x * x) layers. It is the
server's model: the weights stay in plaintext on the node. Files (no pickle):

    <dir>/<name>.json         format, name, input kind and size, labels, layers, metrics
    <dir>/<name>.safetensors  "layers.<i>.weight" (out, in) and "layers.<i>.bias" (out,), float64

`Head.depth` counts the rescalings a CKKS evaluation needs: one per linear layer (plaintext
multiplication) and one per square (ciphertext multiplication).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from mpc.he.errors import DepthExceeded, InvalidHead
from mpc.he.params import CKKSParams

FORMAT = "secure-infer-he-head/1"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
INPUT_KINDS = ("minilm-embedding", "mnist-pixels")  # what the client's local layers produce


@dataclass(frozen=True, slots=True)
class Linear:
    weight: np.ndarray  # (out, in) float64
    bias: np.ndarray  # (out,) float64

    @property
    def n_in(self) -> int:
        return int(self.weight.shape[1])

    @property
    def n_out(self) -> int:
        return int(self.weight.shape[0])


@dataclass(frozen=True, slots=True)
class Square:
    """y = x^2, element-wise: the degree-2 polynomial activation (one ciphertext product)."""


Layer = Linear | Square


@dataclass(frozen=True, slots=True)
class LayerPlan:
    """How one linear layer is evaluated and why (costs in key switches, see `plan`)."""

    index: int
    strategy: str  # "matmul" (packed output) or "dot" (one ciphertext per output column)
    cost_matmul: int
    cost_dot: int
    allowed: tuple[str, ...]  # "dot" only where no linear layer follows


@dataclass(frozen=True, slots=True, kw_only=True)
class Head:
    name: str
    input_kind: str
    labels: tuple[str, ...]
    layers: tuple[Layer, ...]
    metrics: dict[str, Any] = field(default_factory=dict)  # training facts (accuracy, data)

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name):
            raise InvalidHead(f"head name {self.name!r} must match {NAME_RE.pattern}")
        if self.input_kind not in INPUT_KINDS:
            raise InvalidHead(f"input kind {self.input_kind!r} not one of {INPUT_KINDS}")
        linears = [layer for layer in self.layers if isinstance(layer, Linear)]
        if not linears or not isinstance(self.layers[-1], Linear):
            raise InvalidHead("a head needs at least one linear layer and must end with one")
        for a, b in zip(linears, linears[1:], strict=False):
            if a.n_out != b.n_in:
                raise InvalidHead(f"layer sizes do not chain: {a.n_out} -> {b.n_in}")
        for layer in linears:
            if layer.bias.shape != (layer.n_out,) or not np.isfinite(layer.weight).all():
                raise InvalidHead("each linear layer needs a finite (out, in) weight, (out,) bias")
        if len(self.labels) != linears[-1].n_out:
            raise InvalidHead(f"{len(self.labels)} labels for {linears[-1].n_out} outputs")

    @property
    def input_dim(self) -> int:
        return next(layer for layer in self.layers if isinstance(layer, Linear)).n_in

    @property
    def output_dim(self) -> int:
        return len(self.labels)

    @property
    def depth(self) -> int:
        """Multiplicative depth of the CKKS evaluation: one rescaling per layer."""
        return len(self.layers)

    def describe_layers(self) -> list[str]:
        return [
            f"linear {layer.n_in}->{layer.n_out}" if isinstance(layer, Linear) else "square"
            for layer in self.layers
        ]

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The plaintext head on (B, input_dim) features, float64: the reference for HE."""
        y = np.asarray(x, dtype=np.float64)
        for layer in self.layers:
            y = y @ layer.weight.T + layer.bias if isinstance(layer, Linear) else y * y
        return y

    def digest(self) -> str:
        """SHA-256 over the layer structure and weight bytes: which head a node evaluated."""
        h = hashlib.sha256(json.dumps(self._layout(), sort_keys=True).encode())
        for layer in self.layers:
            if isinstance(layer, Linear):
                h.update(np.ascontiguousarray(layer.weight, dtype="<f8").tobytes())
                h.update(np.ascontiguousarray(layer.bias, dtype="<f8").tobytes())
        return h.hexdigest()

    def check_depth(self, params: CKKSParams) -> None:
        """Refuse, before any key is made or byte sent, a head deeper than `params` allow."""
        if self.depth > params.depth:
            raise DepthExceeded(
                f"head {self.name!r} ({', '.join(self.describe_layers())}) needs multiplicative "
                f"depth {self.depth}, but {params.name} supports {params.depth}; use fewer "
                f"layers or a parameter set with more rescaling primes"
            )

    def _layout(self) -> list[dict[str, Any]]:
        return [
            {"kind": "linear", "in": layer.n_in, "out": layer.n_out}
            if isinstance(layer, Linear)
            else {"kind": "square"}
            for layer in self.layers
        ]

    # -- files ---------------------------------------------------------------------------
    def save(self, directory: Path) -> Path:
        """Write `<name>.json` and `<name>.safetensors`; returns the JSON path."""
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Linear):
                tensors[f"layers.{i}.weight"] = np.ascontiguousarray(layer.weight, np.float64)
                tensors[f"layers.{i}.bias"] = np.ascontiguousarray(layer.bias, np.float64)
        save_file(tensors, str(directory / f"{self.name}.safetensors"))
        meta = {
            "format": FORMAT,
            "name": self.name,
            "input_kind": self.input_kind,
            "labels": list(self.labels),
            "layers": self._layout(),
            "digest": self.digest(),
            "metrics": self.metrics,
        }
        path = directory / f"{self.name}.json"
        path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return path


def load_head(directory: Path, name: str) -> Head:
    """Load and check a head; raises InvalidHead (FileNotFoundError if it does not exist)."""
    if not NAME_RE.match(name):
        raise FileNotFoundError(f"no head named {name!r}")
    meta_path, weights_path = directory / f"{name}.json", directory / f"{name}.safetensors"
    if not meta_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(f"no head named {name!r} in {directory}")
    try:
        meta = json.loads(meta_path.read_text())
        tensors = load_file(str(weights_path))
        if meta.get("format") != FORMAT:
            raise InvalidHead(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT}")
        layers: list[Layer] = []
        for i, spec in enumerate(meta["layers"]):
            if spec["kind"] == "square":
                layers.append(Square())
                continue
            if spec["kind"] != "linear":
                raise InvalidHead(f"{meta_path}: layer {i} has unknown kind {spec['kind']!r}")
            w, b = tensors[f"layers.{i}.weight"], tensors[f"layers.{i}.bias"]
            if w.shape != (spec["out"], spec["in"]):
                raise InvalidHead(f"{weights_path}: layer {i} weight shape {w.shape}")
            layers.append(Linear(weight=w.astype(np.float64), bias=b.astype(np.float64)))
        head = Head(
            name=meta["name"],
            input_kind=meta["input_kind"],
            labels=tuple(meta["labels"]),
            layers=tuple(layers),
            metrics=dict(meta.get("metrics", {})),
        )
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise InvalidHead(f"head {name!r} in {directory}: {exc}") from None
    if head.name != name or meta.get("digest") != head.digest():
        raise InvalidHead(f"head {name!r} in {directory}: name or digest does not match")
    return head


def list_heads(directory: Path) -> list[str]:
    """Names of the heads stored in a directory (those with both files)."""
    if not directory.is_dir():
        return []
    return sorted(
        p.stem
        for p in directory.glob("*.json")
        if NAME_RE.match(p.stem) and (directory / f"{p.stem}.safetensors").is_file()
    )


# Relative costs for choosing a layout, in units of one ciphertext-by-constant multiply-add at
# the fresh level (~0.3 ms on the dev machine). Measured (docs/he.md, "Layouts"): a fresh
# ciphertext encrypted, sent and loaded ~30 units (~9 ms); one input element of TenSEAL's
# `matmul` ~50 (15.8 ms: rotation, encoding and product); one rotation of a `dot` ~15 (4.7 ms);
# a ciphertext square with relinearization and rescaling ~15 (~5 ms).
_COST_CIPHERTEXT_IN, _COST_MATMUL_ELEMENT, _COST_ROTATION, _COST_SQUARE = 30, 50, 15, 15


def packed_min_batch(head: Head, params: CKKSParams) -> int:
    """Smallest batch for which the feature-major packed layout (`engine.evaluate_packed`) is
    estimated cheaper than one ciphertext per example (`engine.evaluate` with `plan`).

    Per example, the vector layout costs one input ciphertext plus the plan's rotations; per
    batch (up to `params.slots` examples), the packed layout costs `input_dim` input
    ciphertexts, `n_in * n_out` multiply-adds per linear layer and one square per unit, with no
    rotation. MNIST's MLP: 4 (measured break-even 3-4); the sentiment head: 41 (measured ~39).
    """
    per_example = _COST_CIPHERTEXT_IN
    per_batch = head.input_dim * _COST_CIPHERTEXT_IN
    plans = {p.index: p for p in plan(head, params)}
    for i, layer in enumerate(head.layers):
        if isinstance(layer, Linear):
            p = plans[i]
            per_example += (
                p.cost_matmul * _COST_MATMUL_ELEMENT
                if p.strategy == "matmul"
                else p.cost_dot * _COST_ROTATION
            )
            per_batch += layer.n_in * layer.n_out
        else:
            width = next(x.n_in for x in head.layers[i:] if isinstance(x, Linear))
            per_example += _COST_SQUARE
            per_batch += width * _COST_SQUARE
    return min(params.slots, max(1, math.ceil(per_batch / per_example)))


def plan(head: Head, params: CKKSParams) -> tuple[LayerPlan, ...]:
    """Choose `matmul` or one `dot` per output column for each linear layer, by cost.

    Cost model (key switches, the dominant CKKS cost; measured in bench/he_head.py and
    docs/he.md): TenSEAL's vector-matrix `matmul` rotates the replicated input once per input
    element, so it costs `n_in` whatever `n_out` is; a `dot` multiplies and sums with
    ceil(log2(n_in)) rotations, so `n_out` dots cost `n_out * ceil(log2(n_in))`. A dot leaves
    each output in its own ciphertext, which only element-wise layers (square) can follow, so
    dots are allowed only for the last linear layer. Refuses a head deeper than `params`.
    """
    head.check_depth(params)
    if head.input_dim > params.slots // 2:
        raise DepthExceeded(
            f"input size {head.input_dim} exceeds {params.slots // 2} (matmul replicates the "
            f"input across {params.slots} slots)"
        )
    linear_idx = [i for i, layer in enumerate(head.layers) if isinstance(layer, Linear)]
    plans = []
    for i in linear_idx:
        layer = head.layers[i]
        assert isinstance(layer, Linear)  # noqa: S101 - filtered above
        cost_mm = layer.n_in
        cost_dot = layer.n_out * max(1, math.ceil(math.log2(layer.n_in)))
        allowed = ("matmul", "dot") if i == linear_idx[-1] else ("matmul",)
        best = "dot" if "dot" in allowed and cost_dot < cost_mm else "matmul"
        plans.append(LayerPlan(i, best, cost_mm, cost_dot, allowed))
    return tuple(plans)
