"""MPC-aware architecture search of MPCViT: per-head variant logits with a measured latency term.

Ref:     MPCViT (Zeng et al., ICCV 2023), section 4: a differentiable search (DARTS-style
         continuous relaxation) over each head's attention variant, with an MPC latency term
         in the loss, then discretization and knowledge distillation from the softmax ViT.
Method:  1. The supernet (`MPCViT(search=True)`) starts from the trained softmax teacher's
            weights with all logits 0 (a uniform mixture of the variants).
         2. Weights and logits train jointly (`mpc.vit.train.train`) on
            (1 - w) CE + w KD(teacher) + latency_weight * L(alpha) / L(softmax ViT), where L is
            the expected variant-dependent latency of the mixture from the MEASURED cost table
            (`mpc.vit.costs.expected_latency`); MPCViT searches the attention only, MPCViT+
            (`search_mlp=True`) also each block's MLP kind (GeLU, linear or ReLU).
         3. Discretize: every head takes its most likely variant (`Architecture.argmax`).
         4. Fine-tune the discrete model with KD from the teacher (`distill`).
Limits:  single-level, first-order search on the training set (no held-out architecture split);
         the latency term counts only what differs between variants (see `mpc.vit.costs`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mpc.vit.costs import CostTable, NetworkModel, expected_latency
from mpc.vit.data import ImageSplit
from mpc.vit.model import Architecture, AttentionKind, MPCViT
from mpc.vit.train import TrainSettings, train

__all__ = ["distill", "normalized_latency", "search_architecture"]


def normalized_latency(
    model: MPCViT, table: CostTable, network: NetworkModel
) -> Callable[[MPCViT], torch.Tensor]:
    """L(mixture) / L(all-softmax, all-GeLU ViT of the same shape), a differentiable function."""
    config = model.config
    baseline = MPCViT(
        config, Architecture.uniform(config.depth, config.heads, AttentionKind.SOFTMAX)
    )
    reference = expected_latency(*baseline.mixing(), table, network)
    if not float(reference) > 0:
        raise ValueError("the cost table gives the softmax ViT no latency: re-measure it")

    def latency(candidate: MPCViT) -> torch.Tensor:
        return expected_latency(*candidate.mixing(), table, network) / reference

    return latency


def search_architecture(
    teacher: MPCViT,
    split: ImageSplit,
    table: CostTable,
    settings: TrainSettings,
    *,
    search_mlp: bool,
    network: NetworkModel | None = None,
) -> MPCViT:
    """Steps 1-3: the discretized model (weights from the supernet, not yet fine-tuned)."""
    if teacher.search:
        raise ValueError("the teacher must be a discrete model")
    supernet = MPCViT(teacher.config, teacher.architecture, search=True, search_mlp=search_mlp)
    missing, unexpected = supernet.load_state_dict(teacher.state_dict(), strict=False)
    if unexpected or any(not name.startswith("alpha_") for name in missing):
        raise ValueError(f"teacher weights do not fit the supernet: {missing}, {unexpected}")
    latency = normalized_latency(supernet, table, network or NetworkModel())
    train(supernet, split, settings, teacher=teacher, latency=latency)
    return supernet.discretized()


def distill(student: MPCViT, teacher: MPCViT, split: ImageSplit, settings: TrainSettings) -> MPCViT:
    """Step 4: fine-tune a discrete student with knowledge distillation from the teacher."""
    if student.search:
        raise ValueError("distill a discrete student")
    return train(student, split, settings, teacher=teacher)
