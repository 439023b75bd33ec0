"""Small, seeded training loops shared by the service models, GDTL and the substitutes.

Every loop runs mini-batch Adam on CPU; callers set `torch.set_num_threads` themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

KD_TEMPERATURE = 4.0  # Hinton et al. 2015; soft targets carry the service's full distribution
KD_HARD_WEIGHT = 0.1  # weight of the cross-entropy on the teacher's top-1 label


def kd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float = KD_TEMPERATURE,
    hard_weight: float = KD_HARD_WEIGHT,
) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)) + w * CE(student, argmax teacher)."""
    soft = nn.functional.kl_div(
        nn.functional.log_softmax(student / temperature, 1),
        nn.functional.log_softmax(teacher / temperature, 1),
        log_target=True,
        reduction="batchmean",
    )
    return temperature**2 * soft + hard_weight * nn.functional.cross_entropy(
        student, teacher.argmax(1)
    )


def fit(
    forward: Callable[[torch.Tensor], torch.Tensor],
    params: Iterable[nn.Parameter],
    x: torch.Tensor,
    target: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    epochs: int,
    lr: float,
    batch: int = 128,
    seed: int = 0,
    weight_decay: float = 0.0,
) -> None:
    """Minimise `loss_fn(forward(x_batch), target_batch)` over `params` with Adam."""
    opt = torch.optim.Adam(list(params), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for rows in torch.randperm(len(x), generator=gen).split(batch):
            opt.zero_grad()
            loss_fn(forward(x[rows]), target[rows]).backward()
            opt.step()


def train_classifier(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float = 1e-3,
    seed: int = 0,
    weight_decay: float = 0.0,
) -> nn.Module:
    """Train `net` on labels `y` with cross-entropy; returns it in eval mode."""
    torch.manual_seed(seed)
    net.train()
    fit(
        net,
        net.parameters(),
        x,
        y,
        nn.functional.cross_entropy,
        epochs=epochs,
        lr=lr,
        seed=seed,
        weight_decay=weight_decay,
    )
    return net.eval()


@torch.no_grad()
def batched(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch: int = 256
) -> torch.Tensor:
    """`fn` applied to `x` in batches without gradients, concatenated."""
    return torch.cat([fn(x[i : i + batch]) for i in range(0, len(x), batch)])


def accuracy(logits_or_probs: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits_or_probs.argmax(1) == labels).float().mean().item()
