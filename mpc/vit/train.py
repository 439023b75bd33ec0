"""Training loops for the MPCViT family: plain training, knowledge distillation, and search.

Method:  AdamW with a cosine learning-rate schedule, one torch thread (`torch.set_num_threads(1)`
         on shared CPUs), seeded shuffling. Loss = cross-entropy, plus with a teacher the
         Hinton distillation term T^2 KL(softmax(teacher / T) || softmax(student / T)) weighted
         by `kd_weight` (MPCViT distils from the softmax ViT). With `latency` (a function of the
         model, see `mpc.vit.search`) the loss adds `latency_weight` times it, and the
         architecture logits get their own Adam optimizer (`arch_lr`), updated on the same batch
         (first-order, single-level DARTS).
Limits:  simple light augmentation only (random shifts of up to `shift` pixels); meant for the
         small models and data sets of `mpc.vit.data`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from mpc.vit.data import ImageSplit
from mpc.vit.model import MPCViT

__all__ = ["TrainSettings", "accuracy", "train"]

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation knobs; all runs are seeded."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 2e-3  # peak AdamW learning rate of the weights
    weight_decay: float = 0.05
    warmup_epochs: int = 2
    shift: int = 2  # random translation, pixels (0: none)
    kd_weight: float = 0.7  # share of the distillation term when a teacher is given
    kd_temperature: float = 4.0
    arch_lr: float = 5e-2  # Adam learning rate of the architecture logits (search only)
    latency_weight: float = 0.0  # weight of the normalized latency term (search only)
    seed: int = 0


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in [0, 1], evaluated in batches of 500."""
    model.eval()
    correct = 0
    for start in range(0, len(images), 500):
        logits = model(images[start : start + 500])
        correct += int((logits.argmax(-1) == labels[start : start + 500]).sum())
    return correct / len(images)


def _shift(images: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to `pixels` in each direction (zero fill), per batch."""
    if pixels == 0:
        return images
    dy, dx = (int(v) for v in torch.randint(-pixels, pixels + 1, (2,), generator=generator))
    padded = nn.functional.pad(images, (pixels, pixels, pixels, pixels))
    size = images.shape[-1]
    return padded[..., pixels + dy : pixels + dy + size, pixels + dx : pixels + dx + size]


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train(
    model: MPCViT,
    split: ImageSplit,
    settings: TrainSettings,
    *,
    teacher: nn.Module | None = None,
    latency: Callable[[MPCViT], torch.Tensor] | None = None,
) -> MPCViT:
    """Train `model` in place on `split`'s training set and return it.

    Args:
        model: the student (a supernet when `latency` is given).
        split: the data.
        settings: the knobs.
        teacher: a trained model to distil from (kept frozen, in eval mode).
        latency: differentiable latency of the model's architecture mixture, normalized
            (1.0 = the all-softmax, all-GeLU ViT); requires `model.search`.
    """
    torch.set_num_threads(1)
    if latency is not None and not model.search:
        raise ValueError("a latency term needs a supernet (search=True)")
    generator = torch.Generator().manual_seed(settings.seed)
    weights = torch.optim.AdamW(
        model.weight_parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    arch = (
        torch.optim.Adam(model.architecture_parameters(), lr=settings.arch_lr)
        if (model.search)
        else None
    )
    steps_per_epoch = math.ceil(len(split.train_x) / settings.batch_size)
    total = settings.epochs * steps_per_epoch
    warmup = settings.warmup_epochs * steps_per_epoch
    if teacher is not None:
        teacher.eval()
    step = 0
    for epoch in range(settings.epochs):
        model.train()
        order = torch.randperm(len(split.train_x), generator=generator)
        for start in range(0, len(order), settings.batch_size):
            index = order[start : start + settings.batch_size]
            x = _shift(split.train_x[index], settings.shift, generator)
            y = split.train_y[index]
            for group in weights.param_groups:
                group["lr"] = settings.lr * _schedule(step, total, warmup)
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            if teacher is not None:
                with torch.no_grad():
                    target = teacher(x)
                temp = settings.kd_temperature
                kd = (
                    nn.functional.kl_div(
                        (logits / temp).log_softmax(-1),
                        (target / temp).log_softmax(-1),
                        reduction="batchmean",
                        log_target=True,
                    )
                    * temp**2
                )
                loss = (1 - settings.kd_weight) * loss + settings.kd_weight * kd
            if latency is not None:
                loss = loss + settings.latency_weight * latency(model)
            weights.zero_grad()
            if arch is not None:
                arch.zero_grad()
            loss.backward()
            weights.step()
            if arch is not None:
                arch.step()
            step += 1
        _LOG.info("epoch %d/%d loss %.4f", epoch + 1, settings.epochs, loss.item())
    model.eval()
    return model
