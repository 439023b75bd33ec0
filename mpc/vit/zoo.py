"""The trained MPCViT family (softmax ViT, MPCViT, MPCViT+), built once and cached.

`build_family(split, config, recipe)` returns the three discrete models with metadata:

- "vit": the softmax ViT (every head softmax, every MLP GeLU), trained from scratch: the
  baseline and the distillation teacher.
- "mpcvit": attention searched per head (softmax / relu_softmax / scaling) with latency
  weight `recipe.latency_weight`, then fine-tuned with KD. MLPs keep the GeLU.
- "mpcvit_plus": attention AND each block's MLP (GeLU, linear or ReLU) searched with
  `recipe.latency_weight_plus`, then fine-tuned with KD.

Each model is saved with `mpc.vit.checkpoint` under `cache_dir()/<data set>-<teacher hash>/`
(`vit`, `mpcvit-<hash>`, `mpcvit_plus-<hash>`, each hash covering only what that model's
training depends on, the cost table included) and loaded from there next time; its metadata
holds the plaintext test accuracy, the public `relu_bound`
(`mpc.vit.secure.calibrate_relu_bound` on the training images), the architecture counts, the
latency estimate from the cost table and the training time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mpc.vit import checkpoint
from mpc.vit.costs import CostTable, NetworkModel, latency_of
from mpc.vit.data import ImageSplit
from mpc.vit.model import MPCViT, ViTConfig
from mpc.vit.search import distill, search_architecture
from mpc.vit.secure import calibrate_relu_bound
from mpc.vit.train import TrainSettings, accuracy, train

__all__ = [
    "FAMILY",
    "MAX_ACCURACY_DROP_POINTS",
    "MIN_LATENCY_RATIO",
    "Recipe",
    "build_family",
    "compare_with_teacher",
]

FAMILY = ("vit", "mpcvit", "mpcvit_plus")
# Issue 4's target: MPC latency >= 3x lower than the softmax ViT's at <= 1 point lower accuracy.
MIN_LATENCY_RATIO = 3.0
MAX_ACCURACY_DROP_POINTS = 1.0
_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """How the family is trained (part of the cache key)."""

    teacher: TrainSettings = field(default_factory=lambda: TrainSettings(epochs=40))
    search: TrainSettings = field(
        default_factory=lambda: TrainSettings(epochs=8, lr=5e-4, warmup_epochs=0)
    )
    finetune: TrainSettings = field(
        default_factory=lambda: TrainSettings(epochs=20, lr=1e-3, warmup_epochs=1)
    )
    latency_weight: float = 1.0  # MPCViT (attention only)
    latency_weight_plus: float = 1.5  # MPCViT+ (attention and MLPs): picks ReLU MLPs at T = 50

    def paths(
        self, split: ImageSplit, config: ViTConfig, table: CostTable, root: Path
    ) -> dict[str, Path]:
        """Checkpoint paths; each key covers only what that model's training depends on."""
        teacher = _digest([split.name, config.to_dict(), asdict(self.teacher)])
        folder = root / f"{split.name}-{teacher}"
        students = {
            name: _digest([asdict(self.search), asdict(self.finetune), weight, table.to_dict()])
            for name, weight in (
                ("mpcvit", self.latency_weight),
                ("mpcvit_plus", self.latency_weight_plus),
            )
        }
        return {"vit": folder / "vit", **{n: folder / f"{n}-{d}" for n, d in students.items()}}


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


def _finish(
    model: MPCViT, split: ImageSplit, table: CostTable, seconds: float, extra: dict[str, Any]
) -> dict[str, Any]:
    return {
        "test_accuracy": accuracy(model, split.test_x, split.test_y),
        "relu_bound": calibrate_relu_bound(model, split.train_x),
        "architecture_counts": model.architecture.counts(),
        "estimated_variant_seconds_per_image": latency_of(model, table, NetworkModel()),
        "train_seconds": seconds,
        **extra,
    }


def build_family(
    split: ImageSplit,
    config: ViTConfig,
    table: CostTable,
    recipe: Recipe | None = None,
    *,
    cache: Path | None = None,
) -> dict[str, tuple[MPCViT, dict[str, Any]]]:
    """Train (or load from the cache) the softmax ViT, MPCViT and MPCViT+ on `split`."""
    torch.set_num_threads(1)
    recipe = recipe or Recipe()
    paths = recipe.paths(split, config, table, cache or checkpoint.cache_dir())
    out: dict[str, tuple[MPCViT, dict[str, Any]]] = {}
    for name in FAMILY:
        path = paths[name]
        try:
            out[name] = checkpoint.load(path)
            continue
        except checkpoint.CheckpointError:
            pass
        start = time.perf_counter()
        if name == "vit":
            torch.manual_seed(recipe.teacher.seed)
            model = train(MPCViT(config), split, recipe.teacher)
            extra: dict[str, Any] = {}
        else:
            teacher = out["vit"][0]
            plus = name == "mpcvit_plus"
            weight = recipe.latency_weight_plus if plus else recipe.latency_weight
            search = TrainSettings(**{**asdict(recipe.search), "latency_weight": weight})
            model = search_architecture(teacher, split, table, search, search_mlp=plus)
            searched = accuracy(model, split.test_x, split.test_y)
            model = distill(model, teacher, split, recipe.finetune)
            extra = {"latency_weight": weight, "test_accuracy_before_finetune": searched}
        metadata = _finish(model, split, table, time.perf_counter() - start, extra)
        _LOG.info("%s: %s", name, metadata)
        checkpoint.save(model, path, metadata)
        out[name] = (model, metadata)
    return out


def compare_with_teacher(models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Add to each benchmark row its ratios to the softmax ViT's ("vit") and whether it meets
    the target; return the target and who meets it.

    Each row needs "mpc_seconds_per_image", "mpc_median_batch_seconds_per_image",
    "mpc_bytes_per_image" and "plaintext_test_accuracy" (on the 1,000 test images).
    """
    base = models["vit"]
    for name, row in models.items():
        row["latency_ratio_vs_vit"] = base["mpc_seconds_per_image"] / row["mpc_seconds_per_image"]
        row["median_latency_ratio_vs_vit"] = (
            base["mpc_median_batch_seconds_per_image"] / row["mpc_median_batch_seconds_per_image"]
        )
        row["bytes_ratio_vs_vit"] = base["mpc_bytes_per_image"] / row["mpc_bytes_per_image"]
        # accuracies are counts / 1,000: round off the float error (0.967 - 0.957 is not 0.01)
        drop = round(100 * (base["plaintext_test_accuracy"] - row["plaintext_test_accuracy"]), 6)
        row["test_accuracy_drop_points_vs_vit"] = drop
        row["done_when_met"] = (
            name != "vit"
            and row["latency_ratio_vs_vit"] >= MIN_LATENCY_RATIO
            and drop <= MAX_ACCURACY_DROP_POINTS
        )
    return {
        "target": f"latency ratio >= {MIN_LATENCY_RATIO} and accuracy drop <= "
        f"{MAX_ACCURACY_DROP_POINTS} point",
        "met_by": [name for name, row in models.items() if row["done_when_met"]],
    }
