"""Client-side attack detection and re-classification, trained in a GAN framework (Fides).

Inputs are two distributions over the same classes for one query: `ps`, returned by the
(possibly dishonest) service, and `pv`, computed by the verification model on the client's
original input inside the enclave.

Features (`divergence_features`): both log-distributions with the classes ordered by the
verifier's ranking (so the detector does not depend on class identity), and statistics of their
divergence: KL both ways, Jensen-Shannon, total variation, Hellinger, both entropies, top-1
agreement, the verifier's log-probability of the service's top-1 and vice versa, and both
top-1/top-2 margins. Probabilities are floored at `GanConfig.log_floor` (saved with the detector)
before taking logs.

Models: the detector maps features to one logit (attack if above a threshold calibrated on clean
traffic); the re-classifier maps features plus both class-aligned log-distributions to the class
the service model would have returned.

GAN training (`train_detector_gan`), each mini-batch:
    1. The generator G takes (log ps, log pv, noise) of clean queries and emits an attacked
       distribution pg = softmax(G(...)) (as floored log-probabilities, so that no gradient goes
       through log(p) at tiny p).
    2. Detector step: binary cross-entropy with clean outputs labelled 0, and the catalogue of
       known attacks plus pg labelled 1 (attacks weighted equally, together as much as clean).
    3. Re-classifier step: cross-entropy towards the clean top-1 on every attacked output
       (known attacks and pg).
    4. Generator step: make the detector call pg clean, under a hinge constraint that pg's top-1
       differs from the clean top-1 by a log-margin (so G must produce real integrity
       violations, not copies of the clean output).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .nets import MLPNet

# Probabilities are floored here before taking logs. The floor must sit far below the tails of a
# confident service model's output: an FGSM query that keeps the service's top-1 often still
# has probability ~1.0 there, and only its tail (non-top probabilities of 1e-20 instead of
# 1e-35, say) shows that the logits moved. Float32 softmax outputs reach ~1e-38.
LOG_FLOOR = 1e-30
LEGACY_LOG_FLOOR = 1e-7  # the floor of format-1 Fides directories (which do not record one)
N_STATS = 12


def log_probs(p: torch.Tensor, floor: float = LOG_FLOOR) -> torch.Tensor:
    """log(p), with p floored at `floor` first."""
    return p.clamp_min(floor).log()


def divergence_features(
    ps: torch.Tensor,
    pv: torch.Tensor,
    floor: float = LOG_FLOOR,
    logs: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """(N, 2C + 12) detector features of service probs `ps` and verifier probs `pv` (N, C).

    Probabilities are floored at `floor` before taking logs. `logs` = (log ps, log pv) when the
    caller already has them (the GAN's generator emits log-probabilities: differentiating
    through `log(p)` at tiny p would explode).
    """
    ls, lv = logs if logs is not None else (log_probs(ps, floor), log_probs(pv, floor))
    order = pv.argsort(dim=1, descending=True, stable=True)  # ties keep class order, as in numpy
    lm = log_probs(0.5 * (ps + pv), floor)
    s_top, v_top = ps.argmax(1, keepdim=True), pv.argmax(1, keepdim=True)
    gaps_s, gaps_v = ps.topk(2, 1).values, pv.topk(2, 1).values
    stats = [
        (ps * (ls - lv)).sum(1),
        (pv * (lv - ls)).sum(1),
        0.5 * (ps * (ls - lm)).sum(1) + 0.5 * (pv * (lv - lm)).sum(1),
        0.5 * (ps - pv).abs().sum(1),
        (0.5 * ((ps.sqrt() - pv.sqrt()) ** 2).sum(1)).sqrt(),
        -(ps * ls).sum(1),
        -(pv * lv).sum(1),
        (s_top == v_top).float().squeeze(1),
        lv.gather(1, s_top).squeeze(1),
        ls.gather(1, v_top).squeeze(1),
        gaps_s[:, 0] - gaps_s[:, 1],
        gaps_v[:, 0] - gaps_v[:, 1],
    ]
    return torch.cat([ls.gather(1, order), lv.gather(1, order), torch.stack(stats, 1)], 1)


def divergence_features_np(ps: np.ndarray, pv: np.ndarray, floor: float = LOG_FLOOR) -> np.ndarray:
    """`divergence_features` in numpy, for inference on validated float32 (N, C) arrays.

    Same features, same order (the parity is tested): the client runs this on every verified
    request, where a numpy call on a few rows costs a few microseconds and a torch call ~10.
    Training keeps the torch version (the generator needs gradients through it).
    """
    ls, lv = np.log(np.maximum(ps, floor)), np.log(np.maximum(pv, floor))
    order = np.argsort(-pv, axis=1, kind="stable")
    lm = np.log(np.maximum(0.5 * (ps + pv), floor))
    rows = np.arange(len(ps))
    s_top, v_top = ps.argmax(1), pv.argmax(1)
    sorted_s, sorted_v = np.sort(ps, 1), np.sort(pv, 1)
    stats = [
        (ps * (ls - lv)).sum(1),
        (pv * (lv - ls)).sum(1),
        0.5 * (ps * (ls - lm)).sum(1) + 0.5 * (pv * (lv - lm)).sum(1),
        0.5 * np.abs(ps - pv).sum(1),
        np.sqrt(0.5 * ((np.sqrt(ps) - np.sqrt(pv)) ** 2).sum(1)),
        -(ps * ls).sum(1),
        -(pv * lv).sum(1),
        (s_top == v_top).astype(np.float32),
        lv[rows, s_top],
        ls[rows, v_top],
        sorted_s[:, -1] - sorted_s[:, -2],
        sorted_v[:, -1] - sorted_v[:, -2],
    ]
    return np.concatenate(
        [np.take_along_axis(ls, order, 1), np.take_along_axis(lv, order, 1), np.stack(stats, 1)],
        1,
        dtype=np.float32,
    )


def reclassifier_features_np(
    ps: np.ndarray, pv: np.ndarray, divergence: np.ndarray, floor: float = LOG_FLOOR
) -> np.ndarray:
    """`reclassifier_features` in numpy, from the rows' divergence features."""
    logs = (np.log(np.maximum(ps, floor)), np.log(np.maximum(pv, floor)))
    return np.concatenate([divergence, *logs], 1, dtype=np.float32)


def reclassifier_features(
    ps: torch.Tensor,
    pv: torch.Tensor,
    divergence: torch.Tensor | None = None,
    floor: float = LOG_FLOOR,
    logs: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Divergence features (computed unless given) plus both log-distributions in class
    order: (N, 4C + 12)."""
    ls, lv = logs if logs is not None else (log_probs(ps, floor), log_probs(pv, floor))
    div = divergence_features(ps, pv, floor, (ls, lv)) if divergence is None else divergence
    return torch.cat([div, ls, lv], 1)


@dataclass
class GanConfig:
    epochs: int = 60
    lr: float = 1e-3
    batch: int = 128
    hidden: tuple[int, ...] = (64, 64)
    noise_dim: int = 8
    margin: float = 0.5  # log-margin by which pg's top-1 must beat the clean top-1
    log_floor: float = LOG_FLOOR  # probabilities are floored here before taking logs
    seed: int = 0


@dataclass
class GanModels:
    detector: MLPNet  # features -> attack logit
    reclassifier: MLPNet  # reclassifier features -> class logits
    generator: MLPNet  # (log ps, log pv, noise) -> attacked logits; kept for inspection
    history: list[dict[str, float]]  # per-epoch mean losses


def train_detector_gan(
    ps: torch.Tensor, pv: torch.Tensor, attacked: dict[str, torch.Tensor], cfg: GanConfig
) -> GanModels:
    """Train detector, re-classifier and generator on clean rows `ps`/`pv` (see module doc).

    `attacked[name]` holds the output of known attack `name` on the same queries as `ps`.
    """
    torch.manual_seed(cfg.seed)
    n, c = ps.shape
    floor, log_floor = cfg.log_floor, math.log(cfg.log_floor)
    orig = ps.argmax(1)
    names = sorted(attacked)
    hidden = list(cfg.hidden)
    det = MLPNet(2 * c + N_STATS, hidden, 1)
    rec = MLPNet(4 * c + N_STATS, hidden, c)
    gen = MLPNet(2 * c + cfg.noise_dim, hidden, c)
    all_att = torch.cat([attacked[k] for k in names])
    pv_rep = pv.repeat(len(names), 1)
    det.standardise_on(
        torch.cat([divergence_features(ps, pv, floor), divergence_features(all_att, pv_rep, floor)])
    )
    rec.standardise_on(reclassifier_features(all_att, pv_rep, floor=floor))
    opt_d = torch.optim.Adam(det.parameters(), lr=cfg.lr)
    opt_r = torch.optim.Adam(rec.parameters(), lr=cfg.lr)
    opt_g = torch.optim.Adam(gen.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(cfg.seed)
    history = []
    for _ in range(cfg.epochs):
        sums = {"detector": 0.0, "reclassifier": 0.0, "generator": 0.0}
        for rows in torch.randperm(n, generator=g).split(cfg.batch):
            b_ps, b_pv, b_orig = ps[rows], pv[rows], orig[rows]
            l_ps, l_pv = log_probs(b_ps, floor), log_probs(b_pv, floor)
            noise = torch.randn(len(rows), cfg.noise_dim, generator=g)
            # step 1; the generator's log-probabilities are floored like any other input's
            lg = gen(torch.cat([l_ps, l_pv, noise], 1)).log_softmax(1).clamp_min(log_floor)
            pg = lg.exp()
            fakes = [attacked[k][rows] for k in names] + [pg.detach()]
            # step 2: detector
            clean_logit = det(divergence_features(b_ps, b_pv, floor, (l_ps, l_pv))).squeeze(1)
            loss_d = nn.functional.binary_cross_entropy_with_logits(
                clean_logit, torch.zeros_like(clean_logit)
            )
            for fake in fakes:
                logit = det(divergence_features(fake, b_pv, floor)).squeeze(1)
                loss_d = loss_d + nn.functional.binary_cross_entropy_with_logits(
                    logit, torch.ones_like(logit)
                ) / len(fakes)
            opt_d.zero_grad()
            loss_d.backward()
            opt_d.step()
            # step 3: re-classifier
            loss_r = sum(
                nn.functional.cross_entropy(
                    rec(reclassifier_features(f, b_pv, floor=floor)), b_orig
                )
                for f in fakes
            )
            loss_r = loss_r / len(fakes)
            opt_r.zero_grad()
            loss_r.backward()
            opt_r.step()
            # step 4: generator
            fool = det(divergence_features(pg, b_pv, floor, (lg, l_pv))).squeeze(1)
            at_orig = lg.gather(1, b_orig[:, None]).squeeze(1)
            best_other = lg.scatter(1, b_orig[:, None], float("-inf")).max(1).values
            loss_g = (
                nn.functional.binary_cross_entropy_with_logits(fool, torch.zeros_like(fool))
                + nn.functional.relu(at_orig - best_other + cfg.margin).mean()
            )
            opt_g.zero_grad()
            loss_g.backward()
            opt_g.step()
            for key, val in zip(sums, (loss_d, loss_r, loss_g), strict=True):
                sums[key] += val.item() * len(rows) / n
        history.append(sums)
    return GanModels(det.eval(), rec.eval(), gen.eval(), history)


def calibrate_threshold(clean_scores: torch.Tensor, max_fpr: float) -> float:
    """The threshold t (flag a query when its score > t) that keeps the expected false-positive
    rate on new clean queries at or below `max_fpr` (split-conformal calibration).

    If the n calibration scores and a new clean query's score are exchangeable, and k of the
    calibration scores lie strictly above t (t = the (k+1)-th largest), the new score exceeds t
    with probability (k + 1) / (n + 1) (ties aside). So k = floor(max_fpr * (n + 1)) - 1: with
    500 calibration queries and 2 %, 9 scores above t, an expected 1.996 %. (Allowing
    floor(max_fpr * n) = 10, the rate on the calibration scores themselves, expects 2.2 %.)
    With too few scores for any k (n + 1 < 1 / max_fpr) t is the largest score, and the expected
    rate, 1 / (n + 1), exceeds `max_fpr`.
    """
    s = clean_scores.sort().values
    allowed = max(math.floor(max_fpr * (len(s) + 1) + 1e-9) - 1, 0)  # scores strictly above t
    return float(s[len(s) - allowed - 1])


def rate_interval(hits: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson (exact binomial) interval for a rate measured as `hits` of `n`."""
    from scipy.stats import beta

    if n <= 0 or not 0 <= hits <= n:
        raise ValueError(f"need 0 <= hits <= n and n > 0, got {hits} of {n}")
    tail = (1 - level) / 2
    low = 0.0 if hits == 0 else float(beta.ppf(tail, hits, n - hits + 1))
    high = 1.0 if hits == n else float(beta.ppf(1 - tail, hits + 1, n - hits))
    return low, high
