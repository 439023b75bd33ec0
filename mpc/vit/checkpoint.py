"""Checkpoints of the MPCViT family: weights in safetensors, shape and architecture in JSON.

`save(model, path)` writes `<path>.safetensors` (weights only: no pickle) and `<path>.json`
({"format", "config", "architecture", "metadata"}); `load(path)` rebuilds the model and checks
that the weights match the config exactly. Search logits are not saved: only discrete models.

Trained artefacts live under `cache_dir()`: `$SECURE_INFER_CACHE/mpcvit` if that variable is
set, else `~/.cache/secure-infer/mpcvit`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mpc.errors import MPCError
from mpc.vit.model import Architecture, MPCViT, ViTConfig

__all__ = ["FORMAT", "CheckpointError", "cache_dir", "load", "save"]

FORMAT = "secure-infer/mpcvit/v1"


class CheckpointError(MPCError, ValueError):
    """A checkpoint is missing, malformed, or does not match its config."""


def cache_dir() -> Path:
    root = os.environ.get("SECURE_INFER_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "secure-infer"
    return base / "mpcvit"


def _paths(path: Path | str) -> tuple[Path, Path]:
    path = Path(path)
    return path.with_suffix(".safetensors"), path.with_suffix(".json")


def save(model: MPCViT, path: Path | str, metadata: dict[str, Any] | None = None) -> None:
    """Write a discrete model and JSON-serialisable `metadata` next to it."""
    if model.search:
        raise CheckpointError("save a discrete model (MPCViT.discretized()), not a supernet")
    weights_path, json_path = _paths(path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights_path))
    document = {
        "format": FORMAT,
        "config": model.config.to_dict(),
        "architecture": model.architecture.to_dict(),
        "metadata": metadata or {},
    }
    json_path.write_text(json.dumps(document, indent=2, sort_keys=True))


def load(path: Path | str) -> tuple[MPCViT, dict[str, Any]]:
    """Rebuild a model saved by `save`; returns (model in eval mode, metadata).

    Raises:
        CheckpointError: a file is missing, the JSON is not ours, or the weights do not match
            the config (missing, unexpected or mis-shaped tensors).
    """
    weights_path, json_path = _paths(path)
    if not weights_path.is_file() or not json_path.is_file():
        raise CheckpointError(f"no checkpoint at {Path(path)} (.safetensors and .json)")
    try:
        document = json.loads(json_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{json_path} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CheckpointError(f"{json_path} is not a {FORMAT} checkpoint")
    try:
        config = ViTConfig.from_dict(document["config"])
        model = MPCViT(config, Architecture.from_dict(document["architecture"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{json_path}: bad config or architecture: {exc}") from exc
    state = load_file(str(weights_path))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        diff = sorted(set(expected.items()) ^ set(found.items()))
        raise CheckpointError(f"{weights_path} does not match its config: {diff[:6]}")
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    return model.eval(), dict(document.get("metadata", {}))
