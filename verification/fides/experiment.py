"""End-to-end Fides experiments on real data: train, attack, detect, evaluate.

`prepare_mnist` / `prepare_reviews` load a task's splits (see `data`); `run` then
    1. trains the service model on `train` and a cheaper substitute model on the same labels,
    2. distils the verifier from the service by GDTL (`train` inputs, `fides` for validation),
       under a cost budget of `verifier_budget` times the service model's multiply-accumulates,
    3. attacks the service's outputs on `fides` and `test` (every attack in `attacks`),
    4. trains detector and re-classifier in the GAN framework on `fides` (with the attacks in
       `train_attacks` as the known catalogue; the rest are unseen until `test`); for images,
       plus `gan_shifted_copies` copies of the `fides` images shifted by up to 2 pixels (new
       clean queries for both models, attacked like the originals),
    5. calibrates the detection threshold on clean `calib` outputs to an expected false-positive
       rate of at most `max_fpr` on new clean queries (`calibrate_threshold`),
    6. reports, on `test`: false positives on clean outputs and, per attack, detection rate and
       re-classification accuracy (against the service's honest top-1 and the true label).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from . import attacks
from .data import SPLITS, load_mnist, load_reviews, split_indices
from .detector import (
    GanConfig,
    calibrate_threshold,
    rate_interval,
    train_detector_gan,
)
from .gdtl import ConvFamily, GdtlConfig, GdtlResult, TextFamily, greedy_distill
from .nets import ConvPrefixNet, MLPNet, bert_macs
from .text import MAX_LENGTH, MiniLMEncoder, encode_reviews
from .training import accuracy, batched, train_classifier
from .verifier import DISAGREEMENT_BONUS, FidesVerifier, top_margin

ATTACKS = ("swap_top2", "average_top2", "random_label_switch", "fgsm", "substitution")
log = logging.getLogger(__name__)


@dataclass
class Scale:
    """Sizes and hyper-parameters of one experiment (the bench and the tests pick their own)."""

    n_samples: int | None  # MNIST: None = all 5,000; reviews: texts sampled from 33,530
    service_epochs: int
    service_hidden: list[int]
    widths: list[list[int]]  # GDTL head widths, cheapest first
    gdtl: GdtlConfig
    gan: GanConfig
    fgsm_eps: float  # L-inf; pixels in [0, 1] or unit-norm sentence embeddings
    channels: list[int] = field(default_factory=lambda: [32, 64])  # image service conv blocks
    service_lr: float = 3e-3
    substitute_epochs: int = 20
    verifier_budget: float = 0.10  # verifier MACs <= this fraction of the service model's
    max_fpr: float = 0.02
    attacks: tuple[str, ...] = ATTACKS  # evaluated on `test`
    train_attacks: tuple[str, ...] | None = None  # known to the GAN training; None = `attacks`
    shifted_copies: int = 0  # image only: extra distillation inputs shifted by up to 2 pixels
    gan_shifted_copies: int = 0  # image only: extra GAN training queries (shifted `fides` images)
    seed: int = 0
    # the bonus `choose_bonus` may pick (see verifier.DISAGREEMENT_BONUS); 0 disables it
    disagreement_bonus: float = DISAGREEMENT_BONUS
    # image only: the fraction of `fides` queries on which the verifier is least sure, whose
    # top-1 margin sets `FidesVerifier.escalation_margin` (the enclave recomputes those with the
    # service model and they are checked exactly); 0 = no escalation
    escalate_fraction: float = 0.0
    # with escalation: the probability that the enclave also recomputes any other query, at
    # random (audits: what an adaptive service, which predicts escalation, cannot avoid)
    audit_rate: float = 0.0
    # the expected false-positive rate the threshold is calibrated to (None: `max_fpr`). With
    # escalation the honest disagreements are checked exactly, the detector needs less of the
    # budget, and a lower rate keeps the measured rate under `max_fpr` (a 500-query split
    # scatters by about a point around the calibrated rate)
    threshold_fpr: float | None = None


@dataclass
class TaskData:
    """One task's splits, in the three forms that the verifier, service and substitute consume."""

    task: str  # "image" or "text"
    n_classes: int
    inputs: dict[str, torch.Tensor]  # the verifier's input (images, token ids) per split
    surface: dict[str, torch.Tensor]  # what the service head consumes (images, embeddings)
    cheap: dict[str, torch.Tensor]  # the substitute model's input per split
    labels: dict[str, torch.Tensor]
    bert: Any = None  # text only: the service encoder (a transformers BertModel)
    texts: dict[str, list[str]] = field(default_factory=dict)  # text only


@dataclass
class Outcome:
    """Everything `run` trained, and its test metrics (see `evaluate`)."""

    fides: FidesVerifier
    service: torch.nn.Module
    substitute: torch.nn.Module
    gdtl: GdtlResult
    metrics: dict[str, Any]


def prepare_mnist(scale: Scale) -> TaskData:
    x, y = load_mnist(scale.n_samples, scale.seed)
    idx = split_indices(len(y), scale.seed)
    xs = {s: torch.from_numpy(x[i]) for s, i in idx.items()}
    return TaskData("image", 10, xs, xs, xs, {s: torch.from_numpy(y[i]) for s, i in idx.items()})


def prepare_reviews(scale: Scale, encoder: MiniLMEncoder | None = None) -> TaskData:
    """Movie reviews: MiniLM sentence embeddings feed the service head (cached on disk)."""
    reviews = load_reviews(scale.n_samples or 4000, scale.seed)
    encoder = encoder or MiniLMEncoder()
    enc = encode_reviews(reviews, encoder)
    idx = split_indices(len(reviews.labels), scale.seed)
    emb = nn.functional.normalize(enc["pooled"][:, -1], dim=1)  # = SentenceTransformer.encode
    return TaskData(
        "text",
        2,
        inputs={s: enc["ids"][i] for s, i in idx.items()},
        surface={s: emb[i] for s, i in idx.items()},
        cheap={s: enc["pooled"][i, 2] for s, i in idx.items()},  # a 2-layer MiniLM
        labels={s: torch.from_numpy(reviews.labels[i]) for s, i in idx.items()},
        bert=encoder.bert,
        texts={s: [reviews.texts[j] for j in i] for s, i in idx.items()},
    )


def _service_and_substitute(
    data: TaskData, scale: Scale
) -> tuple[torch.nn.Module, torch.nn.Module]:
    y = data.labels["train"]
    if data.task == "image":
        service = ConvPrefixNet(scale.channels, scale.service_hidden, 10)
        substitute: torch.nn.Module = ConvPrefixNet([], [], 10)  # softmax regression on pixels
    else:
        service = MLPNet(data.surface["train"].shape[1], scale.service_hidden, 2)
        substitute = MLPNet(data.cheap["train"].shape[1], [], 2)
        substitute.standardise_on(data.cheap["train"])
    train_classifier(
        service,
        data.surface["train"],
        y,
        epochs=scale.service_epochs,
        lr=scale.service_lr,
        seed=scale.seed,
    )
    train_classifier(
        substitute,
        data.cheap["train"],
        y,
        epochs=scale.substitute_epochs,
        lr=scale.service_lr,
        seed=scale.seed,
        weight_decay=1e-4,
    )
    return service, substitute


def service_macs(data: TaskData, service: torch.nn.Module) -> int:
    """Multiply-accumulates of one service request (text: MiniLM at MAX_LENGTH tokens + head)."""
    if data.task == "image":
        return service.macs()
    cfg = data.bert.config
    return bert_macs(cfg.to_dict(), cfg.num_hidden_layers, MAX_LENGTH) + service.macs()


def shifted_copies(x: torch.Tensor, copies: int, seed: int) -> torch.Tensor:
    """`copies` copies of the images `x` (N, 1, 28, 28), each image shifted by -2..2 pixels.

    MNIST digits have empty borders, so a cyclic shift of at most 2 pixels is a translation.
    """
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(copies):
        shifts = torch.randint(-2, 3, (len(x), 2), generator=gen)  # one shift per image
        moved = x.clone()
        for dy, dx in shifts.unique(dim=0).tolist():
            rows = (shifts == torch.tensor([dy, dx])).all(1)
            moved[rows] = torch.roll(x[rows], shifts=(dy, dx), dims=(2, 3))
        out.append(moved)
    return torch.cat(out) if out else x[:0]


def distillation_inputs(data: TaskData, scale: Scale) -> torch.Tensor:
    """The `train` inputs, plus (images) `scale.shifted_copies` copies shifted by -2..2 pixels.

    Distillation needs no labels, only the service's outputs, so shifted copies of the training
    images are extra distillation data at no labelling cost.
    """
    x = data.inputs["train"]
    if data.task != "image" or not scale.shifted_copies:
        return x
    return torch.cat([x, shifted_copies(x, scale.shifted_copies, scale.seed)])


def gan_inputs(data: TaskData, scale: Scale) -> torch.Tensor:
    """The GAN's training queries: `fides` plus (images) `scale.gan_shifted_copies` shifted copies.

    Neither the service model nor the verifier has seen these images (the verifier was distilled
    on shifted *training* images), so each copy is a new clean query with its own honest output,
    verifier output and attacks: more rows for the detector, notably for FGSM, whose effect on
    the returned distribution depends on the query.
    """
    x = data.inputs["fides"]
    if data.task != "image" or not scale.gan_shifted_copies:
        return x
    extra = shifted_copies(x, scale.gan_shifted_copies, scale.seed + 1)
    return torch.cat([x, extra])


def attack_outputs(
    data: TaskData,
    split: str,
    service: torch.nn.Module,
    substitute: torch.nn.Module,
    scale: Scale,
    images: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Every attack in `scale.attacks` applied to the service's outputs on `split`.

    `images` (image task only) replaces the split's inputs (e.g. `gan_inputs`); the random label
    switch keeps the split's seed.
    """
    if images is not None and data.task != "image":
        raise ValueError("images= is for the image task only")
    surface = data.surface[split] if images is None else images
    cheap = data.cheap[split] if images is None else images
    ps = batched(service, surface).softmax(1)
    gen = torch.Generator().manual_seed(scale.seed * 100 + SPLITS.index(split))
    bounds = (0.0, 1.0) if data.task == "image" else None
    out: dict[str, torch.Tensor] = {}
    for name in scale.attacks:
        if name == "swap_top2":
            out[name] = attacks.swap_top2(ps)
        elif name == "average_top2":
            out[name] = attacks.average_top2(ps)
        elif name == "random_label_switch":
            out[name] = attacks.random_label_switch(ps, gen)
        elif name == "fgsm":
            adv = attacks.fgsm(service, surface, scale.fgsm_eps, bounds)
            out[name] = batched(service, adv).softmax(1)
        elif name == "substitution":
            out[name] = batched(substitute, cheap).softmax(1)
        else:
            raise ValueError(f"unknown attack {name!r}")
    return out


def run(data: TaskData, scale: Scale) -> Outcome:
    """Steps 1-6 of the module docstring."""
    unknown = set(scale.train_attacks or ()) - set(scale.attacks)
    if unknown:
        raise ValueError(f"train_attacks not among the evaluated attacks: {sorted(unknown)}")
    torch.manual_seed(scale.seed)
    service, substitute = _service_and_substitute(data, scale)
    logits = {s: batched(service, x) for s, x in data.surface.items()}
    if data.task == "image":
        family: ConvFamily | TextFamily = ConvFamily(service, scale.widths)
    else:
        family = TextFamily(data.bert, 2, scale.widths, MAX_LENGTH)
    gdtl_cfg = GdtlConfig(
        **{
            **scale.gdtl.__dict__,
            "mac_budget": int(scale.verifier_budget * service_macs(data, service)),
        }
    )
    x_distil = distillation_inputs(data, scale)
    t_distil = batched(service, x_distil if data.task == "image" else data.surface["train"])
    gd = greedy_distill(family, x_distil, t_distil, data.inputs["fides"], logits["fides"], gdtl_cfg)
    pv = {s: batched(gd.net, x, 64).softmax(1) for s, x in data.inputs.items()}
    ps = {s: t.softmax(1) for s, t in logits.items()}
    x_gan = gan_inputs(data, scale)
    if len(x_gan) == len(data.inputs["fides"]):
        ps_gan, pv_gan, images = ps["fides"], pv["fides"], None
    else:
        ps_gan, pv_gan = batched(service, x_gan).softmax(1), batched(gd.net, x_gan, 64).softmax(1)
        images = x_gan
    att_fides = attack_outputs(data, "fides", service, substitute, scale, images)
    if scale.train_attacks is not None:  # attacks held out of training stay unseen until test
        att_fides = {k: v for k, v in att_fides.items() if k in scale.train_attacks}
    gan = train_detector_gan(ps_gan, pv_gan, att_fides, scale.gan)
    margin = escalation_margin(pv["fides"], scale.escalate_fraction)
    if margin is not None and data.task != "image":
        raise ValueError("escalation recomputes the service on the verifier's inputs: images only")
    fides = FidesVerifier(
        data.task,
        gd.net,
        gan.detector,
        gan.reclassifier,
        0.0,
        metadata={"attacks_trained": sorted(att_fides), "gan_rows": len(ps_gan)},
        max_length=MAX_LENGTH,
        log_floor=scale.gan.log_floor,
        disagreement_bonus=choose_bonus(gd.fidelity, scale),
        reference=None if margin is None else copy.deepcopy(service),
        escalation_margin=margin,
        audit_rate=scale.audit_rate if margin is not None else 0.0,
    )
    fpr = scale.max_fpr if scale.threshold_fpr is None else scale.threshold_fpr
    if not 0.0 < fpr <= scale.max_fpr:
        raise ValueError(f"threshold_fpr must lie in (0, max_fpr]: {fpr!r}")
    fides.threshold = calibrate_threshold(fides.calibration_scores(ps["calib"], pv["calib"]), fpr)
    attacked_test = attack_outputs(data, "test", service, substitute, scale)
    metrics = evaluate(fides, data, ps["test"], pv["test"], attacked_test, scale.max_fpr)
    if margin is not None:  # the same detector without escalation, for comparison
        alone = copy.copy(fides)
        alone.reference, alone.escalation_margin, alone.audit_rate = None, None, 0.0
        alone.threshold = calibrate_threshold(alone.scores(ps["calib"], pv["calib"]), scale.max_fpr)
        metrics["without_escalation"] = evaluate(
            alone, data, ps["test"], pv["test"], attacked_test, scale.max_fpr
        )
        metrics["without_escalation"]["threshold"] = alone.threshold
    metrics.update(
        {
            "service_accuracy": accuracy(ps["test"], data.labels["test"]),
            "substitute_accuracy": accuracy(
                batched(substitute, data.cheap["test"]), data.labels["test"]
            ),
            "verifier_accuracy": accuracy(pv["test"], data.labels["test"]),
            "verifier_fidelity": accuracy(pv["test"], ps["test"].argmax(1)),
            "verifier_macs": gd.macs,
            "service_macs": service_macs(data, service),
            "gdtl": {"depth": gd.depth, "hidden": gd.hidden, "trace": gd.trace},
            "splits": {s: len(y) for s, y in data.labels.items()},
            "threshold": fides.threshold,
            "disagreement_bonus": fides.disagreement_bonus,
            "escalation_margin": fides.escalation_margin,
            "threshold_fpr": fpr,
        }
    )
    # What the enclave computes per query on clean traffic: the verifier, plus the service
    # model on the escalated and audited fraction (measured on `test`).
    verification_macs = gd.macs + metrics["recomputed_fraction"] * metrics["service_macs"]
    metrics["verification_macs_per_query"] = verification_macs
    metrics["verification_mac_ratio"] = verification_macs / metrics["service_macs"]
    fides.metadata.update({k: metrics[k] for k in ("verifier_fidelity", "service_accuracy")})
    return Outcome(fides, service, substitute, gd, metrics)


def escalation_margin(verifier_probs: torch.Tensor, fraction: float) -> float | None:
    """The top-1 margin at or below which `fraction` of these (`fides`) queries lie: the
    enclave recomputes queries at or below it (`FidesVerifier.escalates`). None for 0."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"escalate_fraction must lie in [0, 1): {fraction!r}")
    if not fraction:
        return None
    margins = np.sort(top_margin(verifier_probs.numpy()))
    return float(margins[min(len(margins) - 1, math.ceil(fraction * len(margins)) - 1)])


def choose_bonus(fidelity: float, scale: Scale) -> float:
    """`scale.disagreement_bonus` if the verifier's top-1 agrees with the service's on at least
    1 - 2 x `scale.max_fpr` of the `fides` queries (GDTL's validation fidelity), else 0.

    The bonus makes a top-1 disagreement an alarm. That suits a verifier whose honest
    disagreements are about as rare as the false-positive budget (MNIST: 1-2 %; swap detection
    0.964-0.984 -> 0.972-0.994 on five training runs); with a verifier that disagrees on a
    quarter of the queries (reviews: fidelity ~0.75) the threshold must clear every honest
    disagreement, and label-keeping attacks slip under it (average_top2 0.983 -> 0.485 on
    reviews). Chosen from GDTL's fidelity on `fides` alone: `calib` and `test` are not looked
    at. (Picking the bonus by detection on the GAN's own training queries instead picked 0 on
    an MNIST run where it helps on test: in-sample detection is no guide.)"""
    return scale.disagreement_bonus if fidelity >= 1.0 - 2.0 * scale.max_fpr else 0.0


@torch.no_grad()
def evaluate(
    fides: FidesVerifier,
    data: TaskData,
    ps: torch.Tensor,
    pv: torch.Tensor,
    attacked: dict[str, torch.Tensor],
    max_fpr: float = 0.02,
) -> dict[str, Any]:
    """False positives on clean `ps`; per attack detection and re-classification on `test`.

    Rates come with their exact 95 % binomial intervals (`*_ci95`): on 500 test queries a
    measured 2.2 % false-positive rate is [1.1 %, 3.9 %], so one run cannot tell it from 2 %.

    Two threshold-free views of the same scores separate the detector's quality from the
    calibration's draw: per attack the ROC AUC (clean test vs attacked test scores), and the
    detection rate at the *test* split's own operating point (`test_operating_point`: the
    threshold that flags at most `max_fpr` of the clean test queries, as detection "at a 2 %
    false-positive rate" is usually reported). That threshold is chosen on the very queries it is
    evaluated on, so it is a measurement of the scores, never a deployable setting: the deployed
    threshold is `fides.threshold`, calibrated on `calib`.
    """
    honest = ps.argmax(1)
    truth = data.labels["test"]
    # audits drawn reproducibly here (the enclave draws them from the OS's entropy)
    x = fides.prepare(data.inputs["test"])
    recomputed = fides.recompute(x, pv, rng=np.random.default_rng(0))
    escalated = fides.escalates(pv.numpy())

    def judged(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(flagged, re-classified label or -1, score): escalated rows score +inf when their
        exact check fails and -inf when it passes (the threshold does not apply to them)."""
        j = fides.judge_columns(p, pv, recomputed)
        score = torch.tensor(j.score)
        exact = torch.tensor(j.exact)
        flagged = torch.tensor(j.attacked)
        score[exact] = torch.where(flagged[exact], float("inf"), -float("inf"))
        recl = torch.tensor([-1 if r is None else r for r in j.reclassified_label])
        return flagged, recl, score

    clean_flagged, _, clean_scores = judged(ps)
    oracle = operating_threshold(clean_scores, max_fpr)
    per_attack = {}
    for name, pa in attacked.items():
        flagged, recl, scores = judged(pa)
        changed = pa.argmax(1) != honest
        per_attack[name] = {
            "detection_rate": flagged.float().mean().item(),
            "detection_rate_ci95": rate_interval(int(flagged.sum()), len(flagged)),
            "label_changed_fraction": changed.float().mean().item(),
            "detection_rate_label_changed": _mean(flagged[changed]),
            "reclassification_accuracy": _mean((recl == honest)[flagged]),
            "reclassification_true_label_accuracy": _mean((recl == truth)[flagged]),
            # The baseline the re-classifier has to beat: the verifier's own top-1.
            "verifier_top1_accuracy": _mean((pv.argmax(1) == honest)[flagged]),
            "attacked_output_accuracy": _mean((pa.argmax(1) == honest)[flagged]),
            "roc_auc": roc_auc(clean_scores, scores),
            "detection_rate_at_test_operating_point": (scores > oracle).float().mean().item(),
        }
    return {
        "escalated_fraction": float(escalated.mean()),  # by the margin
        # escalated or audited: what the enclave recomputed
        "recomputed_fraction": 0.0 if recomputed is None else len(recomputed.rows) / len(ps),
        "false_positive_rate": clean_flagged.float().mean().item(),
        "false_positive_rate_ci95": rate_interval(int(clean_flagged.sum()), len(clean_flagged)),
        "test_operating_point": {
            "threshold": oracle,
            "false_positive_rate": (clean_scores > oracle).float().mean().item(),
            "note": "threshold chosen on the clean test scores themselves (not deployable): "
            "what the scores can separate, apart from the calibration split's draw",
        },
        "attacks": per_attack,
    }


def operating_threshold(clean_scores: torch.Tensor, max_fpr: float) -> float:
    """The lowest threshold t (flag when score > t) at which at most `max_fpr` of
    `clean_scores` are flagged: with n scores, k = floor(max_fpr * n) of them above t."""
    s = clean_scores.sort().values
    allowed = math.floor(max_fpr * len(s) + 1e-9)
    return float(s[len(s) - allowed - 1])


def roc_auc(clean_scores: torch.Tensor, attacked_scores: torch.Tensor) -> float:
    """P(an attacked score > a clean score), ties counted half (the Mann-Whitney statistic)."""
    a = attacked_scores.double()[:, None]
    c = clean_scores.double()[None, :]
    return ((a > c).double() + 0.5 * (a == c).double()).mean().item()


def _mean(mask: torch.Tensor) -> float | None:
    return mask.float().mean().item() if len(mask) else None
