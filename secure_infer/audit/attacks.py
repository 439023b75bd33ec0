"""Score-based membership inference attacks on per-example logits.

Threat model (all attacks here): black-box score access to the target (its logits for chosen
rows), plus the ability to train shadow/reference models with the target's training recipe on
data from the same population. Signals are computed from logits:

* loss: the target's cross-entropy on (x, y); score = -loss (Yeom et al. threshold baseline).
* LiRA (Carlini et al., S&P 2022): per-example Gaussians on the logit-scaled confidence
  ``phi = log p_y - log(1 - p_y)`` of shadow models trained with (IN) and without (OUT) the
  example. Online: likelihood ratio ``N(phi; mu_in, s_in) / N(phi; mu_out, s_out)``. Offline:
  only OUT models, one-sided test ``log Phi((phi - mu_out) / s_out)``. ``fixed_variance`` uses one
  global standard deviation per side (Carlini et al. recommend it with few shadow models; the
  audit's default below 64); a per-example one needs at least ``MIN_PER_EXAMPLE`` (4) IN and OUT
  models per example.
* RMIA (Zarifzadeh et al., ICML 2024): ``LR(x, z) = [p(x|theta)/p(x)] / [p(z|theta)/p(z)]`` with
  ``p(.)`` averaged over reference models; score = fraction of population samples ``z`` with
  ``LR(x, z) >= gamma``. Offline: ``p(x)`` from OUT models only, corrected with the paper's linear
  approximation ``p(x) = ((1 + a) p_out(x) + (1 - a)) / 2``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.special import log_softmax, logsumexp
from scipy.stats import norm

__all__ = [
    "ATTACKS",
    "MIN_PER_EXAMPLE",
    "AttackInputs",
    "confidence",
    "lira_offline",
    "lira_online",
    "logit_confidence",
    "loss_attack",
    "rmia",
    "run_attack",
]

_EPS = 1e-30
MIN_PER_EXAMPLE = 4  # IN (and OUT) models per example that a per-example LiRA variance needs


def logit_confidence(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``log p_y - log(1 - p_y)``, stably ``z_y - logsumexp(z_{c != y})``; any leading dims."""
    logits = np.asarray(logits, np.float64)
    picked = np.take_along_axis(logits, np.broadcast_to(y[..., None], logits.shape[:-1] + (1,)), -1)
    others = logits.copy()
    np.put_along_axis(others, np.broadcast_to(y[..., None], logits.shape[:-1] + (1,)), -np.inf, -1)
    return picked[..., 0] - logsumexp(others, axis=-1)


def confidence(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Softmax probability of the true class, any leading dims."""
    lp = log_softmax(np.asarray(logits, np.float64), axis=-1)
    return np.exp(
        np.take_along_axis(lp, np.broadcast_to(y[..., None], lp.shape[:-1] + (1,)), -1)[..., 0]
    )


@dataclass(frozen=True)
class AttackInputs:
    """Everything the attacks see. Shapes: K shadows, N audited rows, Z population rows, C classes.

    ``target_logits`` (N, C), ``shadow_logits`` (K, N, C), ``keep`` (K, N) True where the row was
    in the shadow's training set, ``y`` (N,); for RMIA ``target_pop_logits`` (Z, C),
    ``shadow_pop_logits`` (K, Z, C), ``y_pop`` (Z,).
    """

    target_logits: np.ndarray
    shadow_logits: np.ndarray
    keep: np.ndarray
    y: np.ndarray
    target_pop_logits: np.ndarray
    shadow_pop_logits: np.ndarray
    y_pop: np.ndarray


def loss_attack(inp: AttackInputs) -> np.ndarray:
    """Negative cross-entropy of the target (higher = more likely a member)."""
    return np.log(confidence(inp.target_logits, inp.y) + _EPS)


def _gauss(
    stats: np.ndarray, mask: np.ndarray, fixed_variance: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and std of ``stats`` (K, N) over rows where ``mask``; NaN where none.

    A per-example std (``fixed_variance`` false) needs :data:`MIN_PER_EXAMPLE` values per
    column; with fewer it is mostly noise, and this raises ``ValueError``."""
    if not fixed_variance and mask.sum(0).min() < MIN_PER_EXAMPLE:
        raise ValueError(
            f"LiRA with a per-example variance needs at least {MIN_PER_EXAMPLE} IN and "
            f"{MIN_PER_EXAMPLE} OUT shadow models per example; some example has "
            f"{int(mask.sum(0).min())} (use fixed_variance=True or more shadow models)"
        )
    m = np.where(mask, stats, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns are checked by callers
        mu = np.nanmean(m, axis=0)
        sd = np.full_like(mu, np.nanstd(m)) if fixed_variance else np.nanstd(m, axis=0)
    return mu, sd + 1e-6


def lira_online(inp: AttackInputs, fixed_variance: bool = False) -> np.ndarray:
    """LiRA online: log N(phi; IN) - log N(phi; OUT) per example."""
    k_in = inp.keep.sum(0)
    if (k_in == 0).any() or (k_in == len(inp.keep)).any():
        raise ValueError("LiRA online needs every row IN and OUT of at least one shadow model")
    phi_s = logit_confidence(inp.shadow_logits, np.broadcast_to(inp.y, inp.keep.shape))
    phi_t = logit_confidence(inp.target_logits, inp.y)
    mu_in, sd_in = _gauss(phi_s, inp.keep, fixed_variance)
    mu_out, sd_out = _gauss(phi_s, ~inp.keep, fixed_variance)
    return norm.logpdf(phi_t, mu_in, sd_in) - norm.logpdf(phi_t, mu_out, sd_out)


def lira_offline(inp: AttackInputs, fixed_variance: bool = False) -> np.ndarray:
    """LiRA offline: one-sided test against the OUT Gaussian only."""
    if (inp.keep.all(0)).any():
        raise ValueError("LiRA offline needs every row OUT of at least one shadow model")
    phi_s = logit_confidence(inp.shadow_logits, np.broadcast_to(inp.y, inp.keep.shape))
    phi_t = logit_confidence(inp.target_logits, inp.y)
    mu_out, sd_out = _gauss(phi_s, ~inp.keep, fixed_variance)
    return norm.logcdf((phi_t - mu_out) / sd_out)


def rmia(
    inp: AttackInputs, gamma: float = 1.0, offline: bool = False, a: float = 0.3
) -> np.ndarray:
    """RMIA score: fraction of population rows z that x dominates with likelihood ratio >= gamma."""
    p_x_ref = confidence(inp.shadow_logits, np.broadcast_to(inp.y, inp.keep.shape))
    p_z_ref = confidence(
        inp.shadow_pop_logits, np.broadcast_to(inp.y_pop, inp.shadow_pop_logits.shape[:2])
    )
    if offline:
        if (inp.keep.all(0)).any():
            raise ValueError("offline RMIA needs every row OUT of at least one reference model")
        out = np.where(~inp.keep, p_x_ref, np.nan)
        p_x = 0.5 * ((1 + a) * np.nanmean(out, axis=0) + (1 - a))
        p_z = 0.5 * ((1 + a) * p_z_ref.mean(0) + (1 - a))
    else:
        p_x, p_z = p_x_ref.mean(0), p_z_ref.mean(0)
    ratio_x = confidence(inp.target_logits, inp.y) / (p_x + _EPS)
    ratio_z = np.sort(confidence(inp.target_pop_logits, inp.y_pop) / (p_z + _EPS))
    # count z with ratio_x / ratio_z >= gamma, i.e. ratio_z <= ratio_x / gamma
    return np.searchsorted(ratio_z, ratio_x / gamma, side="right") / len(ratio_z)


ATTACKS = ("loss", "lira_online", "lira_offline", "rmia_online", "rmia_offline")


def run_attack(
    name: str, inp: AttackInputs, *, fixed_variance: bool, gamma: float, offline_a: float
) -> np.ndarray:
    """Scores of attack ``name`` (one of :data:`ATTACKS`) for the N audited rows."""
    if name == "loss":
        return loss_attack(inp)
    if name == "lira_online":
        return lira_online(inp, fixed_variance)
    if name == "lira_offline":
        return lira_offline(inp, fixed_variance)
    if name in ("rmia_online", "rmia_offline"):
        return rmia(inp, gamma=gamma, offline=name == "rmia_offline", a=offline_a)
    raise ValueError(f"unknown attack {name!r}; choose from {ATTACKS}")
