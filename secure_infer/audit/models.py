"""Audited models: the MLP recipe the tool trains, and the :class:`Target` the attacks query.

A :class:`Target` is anything that returns per-example logits for feature rows; the attacks
need nothing else (black-box, score-based). :class:`LocalTorchTarget` wraps a model file on
disk. A mesh-served target would implement the same protocol over the SDK (it needs per-example
logits, or at least per-class probabilities, from the mesh; see docs/audit.md).

Model files: either TorchScript (``torch.jit.save``) or this tool's checkpoint, a dict
``{"format": "secure-infer-audit-mlp/1", "arch": {...}, "state_dict": {...}}`` loaded with
``torch.load(weights_only=True)`` (no pickled code runs).
"""

from __future__ import annotations

import warnings
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from secure_infer.audit.errors import ModelMismatch

__all__ = [
    "CHECKPOINT_FORMAT",
    "LocalTorchTarget",
    "ModelTarget",
    "Recipe",
    "Target",
    "build_mlp",
    "load_checkpoint",
    "logits_of",
    "read_checkpoint",
    "save_checkpoint",
    "train_model",
]

CHECKPOINT_FORMAT = "secure-infer-audit-mlp/1"


@dataclass(frozen=True)
class Recipe:
    """How the tool trains a model (target, shadow, reference, or distribution-inference model).

    The shadow recipe must match how the audited target was trained: that is the auditor's
    standard assumption in LiRA and RMIA, and the report states it.
    """

    hidden: tuple[int, ...] = (64, 32)  # hidden layer widths of the ReLU MLP
    epochs: int = 30  # passes over the training set
    batch_size: int = 128
    lr: float = 1e-3  # Adam learning rate
    weight_decay: float = 0.0  # Adam L2 penalty

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


def build_mlp(n_features: int, n_classes: int, hidden: tuple[int, ...]) -> nn.Sequential:
    """A ReLU MLP: Linear layers ``n_features -> hidden... -> n_classes``."""
    layers: list[nn.Module] = []
    width = n_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


def train_model(
    x: np.ndarray, y: np.ndarray, n_classes: int, recipe: Recipe, seed: int
) -> nn.Sequential:
    """Train an MLP with Adam and cross-entropy on (x, y); deterministic for a given seed."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = build_mlp(x.shape[1], n_classes, recipe.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(recipe.epochs):
        for idx in torch.randperm(len(yt), generator=gen).split(recipe.batch_size):
            opt.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def logits_of(model: nn.Module, x: np.ndarray, batch: int = 4096) -> np.ndarray:
    """Logits (n, classes) float32 of a torch model on feature rows.

    Raises :class:`ModelMismatch` if the model returns anything but one floating-point tensor
    of shape (rows, classes) (a tuple, a dict, integer outputs, ...)."""
    model.eval()
    out = []
    for i in range(0, len(x), batch):
        rows = np.ascontiguousarray(x[i : i + batch])
        y = model(torch.from_numpy(rows))
        if not isinstance(y, torch.Tensor):
            raise ModelMismatch(
                f"the model returns a {type(y).__name__}, not a tensor of logits "
                "(its forward must return one (rows, classes) tensor)"
            )
        if y.ndim != 2 or y.shape[0] != len(rows) or not y.is_floating_point():
            raise ModelMismatch(
                f"the model returns a {y.dtype} tensor of shape {tuple(y.shape)} for "
                f"{len(rows)} rows; expected floating-point logits of shape ({len(rows)}, classes)"
            )
        out.append(y.float())
    return torch.cat(out).numpy().astype(np.float32)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _load_reason(exc: BaseException) -> str:
    """A short reason from ``torch.load``'s exception (its weights-only message is long and
    suggests weights_only=False, which this tool never uses)."""
    text = " ".join(str(exc).split())
    if "WeightsUnpickler error:" in text:
        why = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
        return (
            "not a torch.save file, or one holding more than tensors and plain containers "
            f"(it is read with weights_only=True, so no pickled code runs): {why.strip()}"
        )
    return _first_line(exc)


def read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The validated ``arch`` and the ``state_dict`` of this tool's checkpoint at ``path``.

    Raises :class:`ModelMismatch` naming the file for anything else (an unreadable file, another
    format, a missing or malformed ``arch``, a ``state_dict`` that is not a dict of tensors).
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, zip errors
        raise ModelMismatch(f"{path} is not a loadable torch file: {_load_reason(exc)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ModelMismatch(f"{path} is neither TorchScript nor a {CHECKPOINT_FORMAT} checkpoint")
    arch, state = ckpt.get("arch"), ckpt.get("state_dict")
    ok = (
        isinstance(arch, dict)
        and all(isinstance(arch.get(k), int) and arch[k] > 0 for k in ("n_features", "n_classes"))
        and isinstance(arch.get("hidden"), list | tuple)
        and all(isinstance(h, int) and h > 0 for h in arch["hidden"])
    )
    if not ok:
        raise ModelMismatch(
            f"{path}: the checkpoint's 'arch' must be {{'n_features': int, 'n_classes': int, "
            f"'hidden': [int, ...]}}; it is {arch!r}"
        )
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelMismatch(f"{path}: the checkpoint's 'state_dict' is not a dict of tensors")
    return arch, state


def load_checkpoint(path: Path) -> tuple[nn.Sequential, dict[str, Any]]:
    """The MLP of this tool's checkpoint at ``path`` and its ``arch`` (:class:`ModelMismatch`
    if it is not one)."""
    arch, state = read_checkpoint(path)
    model = build_mlp(arch["n_features"], arch["n_classes"], tuple(arch["hidden"]))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelMismatch(
            f"{path}: the state_dict does not fit its arch {arch}: "
            f"{' '.join(str(exc).split())[:400]}"
        ) from None
    return model, arch


def save_checkpoint(
    model: nn.Sequential, path: Path, recipe: Recipe, n_features: int, n_classes: int
) -> None:
    """Write ``model`` as this tool's checkpoint format (loadable with weights_only=True)."""
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "arch": {
                "n_features": n_features,
                "n_classes": n_classes,
                "hidden": list(recipe.hidden),
            },
            "state_dict": model.state_dict(),
        },
        path,
    )


@runtime_checkable
class Target(Protocol):
    """What the membership attacks need from an audited model: per-example logits.

    Threat model: black-box score access. The attacker (auditor) queries feature rows and sees
    the logits; it never sees weights or gradients.
    """

    description: str
    n_features: int
    n_classes: int

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits (n, n_classes) for feature rows ``x`` (n, n_features)."""
        ...


class ModelTarget:
    """A torch module held in memory (a model the tool trained itself)."""

    def __init__(self, model: nn.Module, n_features: int, n_classes: int, description: str) -> None:
        self.model, self.n_features, self.n_classes = model, n_features, n_classes
        self.description = description

    def logits(self, x: np.ndarray) -> np.ndarray:
        return logits_of(self.model, x)


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files holding a ``code/`` directory."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n for n in z.namelist())


class LocalTorchTarget(ModelTarget):
    """A model file on disk: TorchScript, or this tool's checkpoint."""

    def __init__(self, path: Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise ModelMismatch(f"target model file {path} does not exist")
        if _is_torchscript(path):
            with warnings.catch_warnings():  # deprecated in favour of torch.export, still supported
                warnings.simplefilter("ignore", DeprecationWarning)
                try:
                    model: nn.Module = torch.jit.load(str(path), map_location="cpu")
                except Exception as exc:  # noqa: BLE001 - torch.jit raises RuntimeError, zip errors, ...
                    raise ModelMismatch(
                        f"{path} looks like TorchScript (a zip with code/) but torch.jit.load "
                        f"cannot read it: {_first_line(exc)}"
                    ) from None
            n_features = n_classes = -1  # probed by check_fits
        else:
            model, arch = load_checkpoint(path)
            n_features, n_classes = arch["n_features"], arch["n_classes"]
        super().__init__(model.eval(), n_features, n_classes, f"local torch model {path}")

    def check_fits(self, n_features: int, n_classes: int) -> None:
        """Raise :class:`ModelMismatch` unless the model maps ``n_features`` to ``n_classes``."""
        if self.n_features not in (-1, n_features):
            raise ModelMismatch(
                f"{self.description} takes {self.n_features} input features; "
                f"the data has {n_features}"
            )
        try:
            out = self.logits(np.zeros((2, n_features), np.float32))
        except ModelMismatch as exc:
            raise ModelMismatch(f"{self.description}: {exc}") from None
        except (RuntimeError, TypeError, ValueError, IndexError) as exc:
            raise ModelMismatch(
                f"{self.description} cannot take {n_features} input features: {_first_line(exc)}"
            ) from None
        if out.shape != (2, n_classes):
            raise ModelMismatch(
                f"{self.description} outputs {out.shape[1:]} logits per row; the data has "
                f"{n_classes} classes"
            )
        self.n_features, self.n_classes = n_features, n_classes
