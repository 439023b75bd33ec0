"""Greedy Distillation Transfer Learning (GDTL): a compact verifier from the service model.

Fides (Kumar et al., arXiv 2304.00083) distils and fine-tunes a space- and compute-efficient
verification model from the service model. `papers.md` summarises the method only; this module
is our reading of it, stated so it can be checked:

1. Transfer. A candidate verifier keeps the first `depth` blocks of the service model with the
   service's weights (conv blocks for the image model; the embedding layer and the first `depth`
   transformer layers of MiniLM for the text model) and adds a fresh compact head whose hidden
   widths come from a list ordered from cheapest to richest.
2. Distil. With the transferred prefix frozen, the head is trained by knowledge distillation on
   the service model's logits (temperature-softened KL plus a small cross-entropy on the
   service's top-1; see `training.kd_loss`). Labels are never used: the verifier learns to
   reproduce the service, not the task.
3. Greedy search. Start from the cheapest candidate (depth 0, cheapest head). While its
   fidelity (top-1 agreement with the service on a validation split) is below the target, try
   the two neighbours that add one transferred block or widen the head, drop those whose cost
   (multiply-accumulates per input) exceeds the budget, and move to the best one; stop when
   the target is met, no neighbour fits the budget, or no neighbour improves fidelity.
4. Fine-tune. Unfreeze the transferred prefix and train the whole verifier by distillation at
   a tenth of the learning rate; keep the result only if validation fidelity does not drop.

Limits: the budget is counted in multiply-accumulates; for image models it can also be
measured CPU wall time (`GdtlConfig.latency_budget`), which on a CPU excludes the
full-resolution first conv block (memory-bound, ~40 % of the service's time although ~5 % of
its MACs). Measured time depends on the machine it was measured on. The search explores depth
and head width only.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .nets import ConvPrefixNet, TextPrefixNet
from .training import batched, fit, kd_loss

log = logging.getLogger(__name__)

BERT_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
    "pad_token_id",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
)


class ConvFamily:
    """Verifier candidates transferred from a `ConvPrefixNet` service model."""

    def __init__(self, service: ConvPrefixNet, widths: list[list[int]]) -> None:
        self.service, self.widths = service, widths
        self.max_depth = len(service.config["channels"])

    def build(self, depth: int, wi: int) -> ConvPrefixNet:
        cfg = self.service.config
        net = ConvPrefixNet(cfg["channels"][:depth], self.widths[wi], cfg["n_classes"])
        for i in range(depth):
            net.prefix[i].load_state_dict(self.service.prefix[i].state_dict())
        return net


class TextFamily:
    """Verifier candidates transferred from a Hugging Face `BertModel` (the service encoder)."""

    def __init__(
        self, bert: nn.Module, n_classes: int, widths: list[list[int]], tokens: int
    ) -> None:
        self.bert, self.n_classes, self.widths, self.tokens = bert, n_classes, widths, tokens
        self.max_depth = bert.config.num_hidden_layers
        full = bert.config.to_dict()
        self.bert_config: dict[str, Any] = {k: full[k] for k in BERT_KEYS}

    def build(self, depth: int, wi: int) -> TextPrefixNet:
        net = TextPrefixNet(self.bert_config, depth, self.widths[wi], self.n_classes)
        net.prefix.embeddings.load_state_dict(self.bert.embeddings.state_dict())
        for i in range(depth):
            net.prefix.encoder.layer[i].load_state_dict(self.bert.encoder.layer[i].state_dict())
        return net.eval()


@dataclass
class GdtlConfig:
    target_fidelity: float = 0.99  # stop once top-1 agreement with the service reaches this
    mac_budget: int = 10**9  # multiply-accumulates per input the verifier may cost
    epochs: int = 30  # head distillation epochs per candidate
    lr: float = 3e-3
    finetune_epochs: int = 5  # whole-verifier distillation epochs at lr / 10 (0 disables)
    seed: int = 0
    # Image family only: a candidate's measured CPU wall time per batch of 64 (1 thread, median
    # of 9 runs) may be at most this fraction of the service model's; None = MACs only.
    latency_budget: float | None = None


@dataclass
class GdtlResult:
    net: nn.Module
    depth: int
    hidden: list[int]
    fidelity: float  # top-1 agreement with the service on the validation split
    kl: float  # mean KL(service || verifier) on the validation split, nats
    macs: int
    trace: list[dict[str, Any]] = field(default_factory=list)  # every candidate tried


def greedy_distill(
    family: ConvFamily | TextFamily,
    x_train: torch.Tensor,
    t_train: torch.Tensor,
    x_val: torch.Tensor,
    t_val: torch.Tensor,
    cfg: GdtlConfig,
) -> GdtlResult:
    """Run GDTL; `t_*` are the service model's logits on `x_*` (see module docstring)."""
    feats: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    trace: list[dict[str, Any]] = []

    def macs_of(depth: int, wi: int) -> int:
        net = family.build(depth, wi)
        return net.macs(family.tokens) if isinstance(net, TextPrefixNet) else net.macs()

    sample = x_val[:64]
    service_ms = (
        wall_ms(family.service, sample)
        if cfg.latency_budget is not None and isinstance(family, ConvFamily)
        else None
    )

    def fits(depth: int, wi: int) -> bool:
        if macs_of(depth, wi) > cfg.mac_budget:
            return False
        if service_ms is None or cfg.latency_budget is None:
            return True
        ratio = wall_ms(family.build(depth, wi).eval(), sample) / service_ms
        trace.append({"depth": depth, "hidden": family.widths[wi], "latency_ratio": ratio})
        return ratio <= cfg.latency_budget

    def candidate(depth: int, wi: int) -> GdtlResult:
        net = family.build(depth, wi)
        if depth not in feats:  # the frozen prefix is shared by every head at this depth
            feats[depth] = (batched(net.features, x_train, 64), batched(net.features, x_val, 64))
        f_tr, f_val = feats[depth]
        torch.manual_seed(cfg.seed)
        fit(
            net.head,
            net.head.parameters(),
            f_tr,
            t_train,
            kd_loss,
            epochs=cfg.epochs,
            lr=cfg.lr,
            seed=cfg.seed,
        )
        fid, kl = _fidelity(batched(net.head, f_val), t_val)
        res = GdtlResult(net.eval(), depth, family.widths[wi], fid, kl, macs_of(depth, wi))
        trace.append(
            {"depth": depth, "hidden": res.hidden, "fidelity": fid, "kl": kl, "macs": res.macs}
        )
        log.info("GDTL candidate depth=%d hidden=%s fidelity=%.4f", depth, res.hidden, fid)
        return res

    state, best = (0, 0), candidate(0, 0)
    while best.fidelity < cfg.target_fidelity:
        d, w = state
        moves = [
            m
            for m in ((d + 1, w), (d, w + 1))
            if m[0] <= family.max_depth and m[1] < len(family.widths) and fits(*m)
        ]
        if not moves:
            break
        tried = [(m, candidate(*m)) for m in moves]
        move, res = max(tried, key=lambda t: t[1].fidelity)
        if res.fidelity <= best.fidelity:
            break
        state, best = move, res
    best.trace = trace
    if cfg.finetune_epochs:
        _finetune(best, x_train, t_train, x_val, t_val, cfg)
    return best


@torch.no_grad()
def wall_ms(net: nn.Module, x: torch.Tensor, repeats: int = 9) -> float:
    """Median wall time (ms) of `net(x)` on this CPU after one warm-up run."""
    net(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        net(x)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def _fidelity(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> tuple[float, float]:
    agree = (student_logits.argmax(1) == teacher_logits.argmax(1)).float().mean().item()
    lt, ls = teacher_logits.log_softmax(1), student_logits.log_softmax(1)
    return agree, (lt.exp() * (lt - ls)).sum(1).mean().item()


def _finetune(
    res: GdtlResult,
    x_train: torch.Tensor,
    t_train: torch.Tensor,
    x_val: torch.Tensor,
    t_val: torch.Tensor,
    cfg: GdtlConfig,
) -> None:
    """Step 4: unfreeze everything and distil end to end; keep only if fidelity holds."""
    if res.depth == 0 and isinstance(res.net, ConvPrefixNet):
        return  # no transferred block to tune
    before = {k: v.clone() for k, v in res.net.state_dict().items()}
    res.net.train()
    fit(
        res.net,
        res.net.parameters(),
        x_train,
        t_train,
        kd_loss,
        epochs=cfg.finetune_epochs,
        lr=cfg.lr / 10,
        seed=cfg.seed,
        batch=64,
    )
    res.net.eval()
    fid, kl = _fidelity(batched(res.net, x_val, 64), t_val)
    res.trace.append({"finetune": True, "fidelity": fid, "kl": kl, "kept": fid >= res.fidelity})
    if fid >= res.fidelity:
        res.fidelity, res.kl = fid, kl
    else:
        res.net.load_state_dict(before)
