"""Distribution inference (Suri & Evans, PETS 2022): was the model trained on D0 or D1?

D0 and D1 are the data set resampled so that a boolean attribute (default: female) has ratio
``base_ratio`` or ``ratio``. The data set is split into an adversary half and a victim half
(disjoint, as in the paper); the adversary trains ``adv_models`` per distribution on its half,
the victim's ``victim_models`` per distribution are trained on the other half and are what the
attacks classify. Probe rows for each distribution come from the adversary half.

Attacks:
* ``loss_test`` (black-box, no adversary models): predict the distribution on whose probe rows
  the victim's loss is lower.
* ``threshold_test`` (black-box): on each probe set, the accuracy threshold that best separates
  the adversary's D0 and D1 models; the probe set that separates them best is used on victims.
* ``kl`` (black-box, Suri et al. 2023 "Dissecting distribution inference"): for every pair of
  adversary models (one per distribution), vote for the one whose predictions are closer in KL
  divergence to the victim's on all probe rows; predict by majority.
* ``pin`` (white-box): a permutation-invariant meta-classifier (DeepSets over the neurons of each
  layer, Ganju et al. / Suri & Evans) trained on the adversary models' weights.

Leakage is ``n_leaked`` (Suri & Evans, Section 4, as in the authors' code, FormEstDistRisks
``get_n_effective``): the number of rows sampled from the training distribution that an
adversary would need to reach the same distinguishing accuracy ``w``, from the paper's bound on
the accuracy of any test on ``n`` such rows, ``w <= 1/2 + 1/2 sqrt(1 - rho^n)`` with
``rho = max(min(a0, a1) / max(a0, a1), (1 - max(a0, a1)) / (1 - min(a0, a1)))``; solved for
``n``: ``n_leaked = log(1 - (2w - 1)^2) / log(rho)``. Next to it, ``n_count_test`` is the number
of rows for which the optimal test on those rows (a threshold on the count of rows with the
attribute) reaches ``w`` in the normal approximation of the binomial,
``(Phi^-1(w))^2 (s0 + s1)^2 / (a1 - a0)^2`` with ``s = sqrt(a (1 - a))``; it is larger, because
the bound is not tight. Both are 0 for ``w <= 1/2``.
The 95 % intervals
come from a two-level stratified bootstrap: each resample draws the adversary's models with
replacement (within each distribution) and re-fits the attack on them (the threshold, the KL
reference set, the meta-classifier), then draws the victim models with replacement and scores
it; so the interval covers both the attack's own variance (which models the adversary happened
to train) and the finite victim sample. The meta-classifier is re-trained for at most
``PIN_REFITS`` adversary resamples (each is shared by an equal share of the victim resamples).
An accuracy of 1 is clipped to ``1 - 1 / (2 n_victims)``, so n_leaked is then a lower bound.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import log_softmax
from scipy.stats import norm
from torch import nn

from secure_infer.audit.config import AuditConfig
from secure_infer.audit.data import Dataset, load_dataset
from secure_infer.audit.errors import AuditConfigError, DataUnavailable
from secure_infer.audit.report import new_report
from secure_infer.audit.shadows import STREAM_DISTRIBUTION, ShadowRun, ShadowSpec, train_shadows

__all__ = [
    "THREAT_MODEL",
    "PINMetaClassifier",
    "accuracy_bound",
    "n_count_test",
    "n_leaked",
    "run_distribution",
]

THREAT_MODEL = (
    "The adversary knows the two candidate training distributions (which differ only in the "
    "ratio of one attribute), the training recipe, and holds its own disjoint data from which it "
    "trains models of both distributions. Black-box attacks (loss, threshold, KL) query the "
    "victim model's outputs; the white-box PIN meta-classifier reads its weights."
)


def n_leaked(accuracy: float, a0: float, a1: float) -> float:
    """Suri & Evans' n_leaked for distinguishing accuracy ``accuracy`` between ratios a0, a1.

    ``log(1 - (2w - 1)^2) / log(rho)``, ``rho = max(lo / hi, (1 - hi) / (1 - lo))`` (the
    paper's definition, from its bound on any test's accuracy with n rows); 0 for ``w <= 1/2``,
    infinite for ``w = 1``.
    """
    lo, hi = sorted((float(a0), float(a1)))
    if accuracy <= 0.5 or lo == hi:
        return 0.0
    rho = max(lo / hi, (1 - hi) / (1 - lo))
    if accuracy >= 1 or rho == 0:
        return float("inf")
    return float(np.log(1 - (2 * accuracy - 1) ** 2) / np.log(rho))


def accuracy_bound(n: float, a0: float, a1: float) -> float:
    """The paper's upper bound on the accuracy of telling a0 from a1 with ``n`` rows (the
    inverse of :func:`n_leaked`)."""
    lo, hi = sorted((float(a0), float(a1)))
    if lo == hi:
        return 0.5
    rho = max(lo / hi, (1 - hi) / (1 - lo))
    return float(0.5 + 0.5 * np.sqrt(1 - rho**n))


def n_count_test(accuracy: float, a0: float, a1: float) -> float:
    """Rows for which the best threshold on the attribute count reaches ``accuracy`` (normal
    approximation of the binomial): ``(Phi^-1(w))^2 (s0 + s1)^2 / (a1 - a0)^2``."""
    if accuracy <= 0.5 or a0 == a1:
        return 0.0
    s = np.sqrt(a0 * (1 - a0)) + np.sqrt(a1 * (1 - a1))
    return float(norm.ppf(accuracy) ** 2 * s**2 / (a1 - a0) ** 2)


def _sample(
    rows: np.ndarray, attr: np.ndarray, ratio: float, n: int, rng: np.random.Generator
) -> np.ndarray:
    pos, neg = rows[attr[rows]], rows[~attr[rows]]
    k = round(ratio * n)
    if k > len(pos) or n - k > len(neg):
        raise DataUnavailable(
            f"cannot draw {n} rows at ratio {ratio}: the split has {len(pos)} with the attribute "
            f"and {len(neg)} without"
        )
    return np.concatenate(
        [rng.choice(pos, k, replace=False), rng.choice(neg, n - k, replace=False)]
    )


class PINMetaClassifier(nn.Module):
    """DeepSets over neurons, layer by layer; invariant to permuting any hidden layer's neurons.

    Layer 1 neuron i: ``e1_i = phi1([W1_i, b1_i])``. Layer l > 1 neuron j:
    ``el_j = phil([sum_i Wl[j, i] e(l-1)_i, bl_j])``: the sum runs over the previous layer's
    neurons, so permuting them (with the matching weight columns) changes nothing. The output
    layer's class neurons are ordered and concatenated; hidden layers are sum-pooled; ``rho``
    maps the result to one logit ("trained on D1").
    """

    def __init__(self, n_features: int, hidden: list[int], n_classes: int, dim: int = 16) -> None:
        super().__init__()
        self.shapes = list(zip([n_features, *hidden], [*hidden, n_classes], strict=True))
        self.phis = nn.ModuleList(
            nn.Sequential(nn.Linear((fan_in if i == 0 else dim) + 1, dim), nn.ReLU())
            for i, (fan_in, _) in enumerate(self.shapes)
        )
        self.rho = nn.Sequential(
            nn.Linear(dim * (len(hidden) + n_classes), 32), nn.ReLU(), nn.Linear(32, 1)
        )

    def forward(self, params: torch.Tensor) -> torch.Tensor:  # (B, P) -> (B,)
        pooled, prev, off = [], None, 0
        for (fan_in, fan_out), phi in zip(self.shapes, self.phis, strict=True):
            w = params[:, off : off + fan_in * fan_out].reshape(-1, fan_out, fan_in)
            off += fan_in * fan_out
            b = params[:, off : off + fan_out].unsqueeze(-1)
            off += fan_out
            x = w if prev is None else w @ prev  # (B, fan_out, fan_in | dim)
            prev = phi(torch.cat([x, b], dim=-1))  # (B, fan_out, dim)
            pooled.append(prev.sum(1))
        return self.rho(torch.cat([*pooled[:-1], prev.flatten(1)], dim=1)).squeeze(-1)


def _train_pin(
    params: np.ndarray, labels: np.ndarray, cfg: AuditConfig, n_features: int, n_classes: int
) -> PINMetaClassifier:
    torch.manual_seed(cfg.data.seed)
    meta = PINMetaClassifier(n_features, cfg.model.hidden, n_classes)
    opt = torch.optim.Adam(meta.parameters(), lr=1e-3)
    x, y = torch.from_numpy(params), torch.from_numpy(labels.astype(np.float32))
    for _ in range(300):
        opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(meta(x), y).backward()
        opt.step()
    return meta.eval()


def _mean_loss(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(M, R, C) logits of M models on R rows -> (M,) mean cross-entropy."""
    lp = log_softmax(logits.astype(np.float64), axis=-1)
    return -np.take_along_axis(lp, y[None, :, None], -1)[..., 0].mean(1)


def _accuracy(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (logits.argmax(-1) == y[None]).mean(1)


def _best_threshold(v0: np.ndarray, v1: np.ndarray) -> tuple[float, float, float]:
    """Threshold t and direction sign s (predict 1 where s*v > s*t) maximizing accuracy."""
    vals = np.concatenate([v0, v1])
    labels = np.r_[np.zeros(len(v0)), np.ones(len(v1))]
    best = (0.0, 0.0, 1.0)
    cands = np.unique(vals)
    cands = np.r_[cands[0] - 1, (cands[:-1] + cands[1:]) / 2, cands[-1] + 1]
    for s in (1.0, -1.0):
        for t in cands:
            acc = float(((s * vals > s * t) == labels).mean())
            if acc > best[0]:
                best = (acc, float(t), s)
    return best


def _kl_votes(adv0: np.ndarray, adv1: np.ndarray, vic: np.ndarray) -> np.ndarray:
    """Fraction of (D0 model, D1 model) pairs for which the victim is closer to the D1 model."""

    def kl(a: np.ndarray, v: np.ndarray) -> np.ndarray:  # (A, R, C), (V, R, C) -> (V, A)
        la, lv = log_softmax(a.astype(np.float64), -1), log_softmax(v.astype(np.float64), -1)
        return np.einsum("arc,varc->va", np.exp(la), la[None] - lv[:, None]) / a.shape[1]

    d0, d1 = kl(adv0, vic), kl(adv1, vic)
    return (d1[:, None, :] < d0[:, :, None]).mean(axis=(1, 2))


PIN_REFITS = 10  # meta-classifiers trained per result for the bootstrap interval

AdvSample = tuple[np.ndarray, np.ndarray]  # indices of the adversary's models used, per ratio


def _attack(
    name: str, cfg: AuditConfig, ds: Dataset, adv_runs: tuple[ShadowRun, ShadowRun],
    vic: tuple[ShadowRun, ShadowRun], probes: tuple[slice, slice], y_probe: np.ndarray,
    sample: AdvSample | None = None,
) -> np.ndarray:  # fmt: skip
    """Predicted label (1 = D1) per victim model, victims of D0 first; the attack is fitted on
    the adversary's models `sample` selects (all of them by default)."""
    vic_logits = np.concatenate([vic[0].logits, vic[1].logits])
    if sample is None:
        sample = (np.arange(len(adv_runs[0].logits)), np.arange(len(adv_runs[1].logits)))
    adv = tuple(
        _Models(run.logits[idx], run.params[idx]) for run, idx in zip(adv_runs, sample, strict=True)
    )
    p0, p1 = probes
    if name == "loss_test":
        return (
            _mean_loss(vic_logits[:, p1], y_probe[p1]) < _mean_loss(vic_logits[:, p0], y_probe[p0])
        ).astype(int)
    if name == "threshold_test":
        best = None
        for p in (p0, p1):
            a0, a1 = (
                _accuracy(adv[0].logits[:, p], y_probe[p]),
                _accuracy(adv[1].logits[:, p], y_probe[p]),
            )
            acc, t, s = _best_threshold(a0, a1)
            if best is None or acc > best[0]:
                best = (acc, t, s, p)
        _, t, s, p = best
        return (s * _accuracy(vic_logits[:, p], y_probe[p]) > s * t).astype(int)
    if name == "kl":
        both = np.r_[np.arange(p0.start, p0.stop), np.arange(p1.start, p1.stop)]
        return (
            _kl_votes(adv[0].logits[:, both], adv[1].logits[:, both], vic_logits[:, both]) > 0.5
        ).astype(int)
    if name == "pin":
        params = np.concatenate([adv[0].params, adv[1].params]).astype(np.float32)
        labels = np.r_[np.zeros(len(adv[0].params)), np.ones(len(adv[1].params))]
        meta = _train_pin(params, labels, cfg, ds.n_features, ds.n_classes)
        vic_params = torch.from_numpy(
            np.concatenate([vic[0].params, vic[1].params]).astype(np.float32)
        )
        with torch.no_grad():
            return (meta(vic_params) > 0).numpy().astype(int)
    raise AuditConfigError(f"unknown distribution attack {name!r}")


class _Models:
    """Logits and flat parameters of a set of models (a resample of a `ShadowRun`)."""

    def __init__(self, logits: np.ndarray, params: np.ndarray) -> None:
        self.logits = logits
        self.params = params


def _bootstrap(
    refit: Callable[[AdvSample], np.ndarray],
    n_adv: tuple[int, int],
    truth: np.ndarray,
    n: int,
    refits: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Balanced accuracy over ``n`` two-level resamples (see the module docstring): ``refits``
    adversary resamples, each re-fitting the attack (``refit`` -> predictions per victim), and
    for each of them ``n / refits`` victim resamples within each distribution."""
    c0_idx = np.flatnonzero(truth == 0)
    c1_idx = np.flatnonzero(truth == 1)
    out = []
    for r in range(refits):
        sample = (rng.integers(0, n_adv[0], n_adv[0]), rng.integers(0, n_adv[1], n_adv[1]))
        correct = refit(sample) == truth
        count = n // refits + (1 if r < n % refits else 0)
        b0 = correct[rng.choice(c0_idx, (count, len(c0_idx)))].mean(1)
        b1 = correct[rng.choice(c1_idx, (count, len(c1_idx)))].mean(1)
        out.append((b0 + b1) / 2)
    return np.concatenate(out)


def run_distribution(cfg: AuditConfig) -> dict[str, Any]:
    """Run the distribution-inference audit of ``cfg``; returns the report dict."""
    t_start = time.perf_counter()
    d = cfg.distribution
    ds = load_dataset(cfg.data.name)
    if d.attribute not in ds.attributes or ds.attributes[d.attribute].dtype != bool:
        have = sorted(k for k, v in ds.attributes.items() if v.dtype == bool)
        raise AuditConfigError(
            f"distribution.attribute {d.attribute!r} is not a boolean attribute of {ds.name}; "
            f"it has {have}"
        )
    attr = ds.attributes[d.attribute]
    rng = np.random.default_rng(cfg.data.seed)
    perm = rng.permutation(len(ds))
    splits = {"adversary": np.sort(perm[: len(ds) // 2]), "victim": np.sort(perm[len(ds) // 2 :])}
    ratios = [d.base_ratio, *d.ratios]
    probe_rows = np.concatenate(
        [_sample(splits["adversary"], attr, r, d.probe_size, rng) for r in ratios]
    )
    y_probe = ds.y[probe_rows]
    cache = Path(cfg.run.cache_dir) if cfg.run.cache_dir else None

    def models(split: str, ratio: float, count: int) -> ShadowRun:
        rows = splits[split]
        index = {r: i for i, r in enumerate(rows)}
        keep = np.zeros((count, len(rows)), bool)
        for k in range(count):
            keep[k, [index[r] for r in _sample(rows, attr, ratio, d.train_size, rng)]] = True
        # Every (split, ratio) group has its own seed stream: a victim model never shares an
        # initialization or batch order with an adversary's model (or another ratio's).
        stream = (STREAM_DISTRIBUTION, list(splits).index(split), round(ratio * 1_000_000))
        spec = ShadowSpec(
            ds.x[rows], ds.y[rows], ds.x[probe_rows], ds.n_classes, cfg.model.recipe(), keep,
            cfg.data.seed, {**ds.provenance.to_dict(), "split": split, "ratio": ratio}, stream,
        )  # fmt: skip
        return train_shadows(
            spec, workers=cfg.run.workers, ray_address=cfg.run.ray_address or None, cache=cache,
            progress=cfg.run.progress, label=f"{split} models, ratio {ratio}",
        )  # fmt: skip

    trained = {(s, r): models(s, r, d.adv_models if s == "adversary" else d.victim_models)
               for r in ratios for s in splits}  # fmt: skip
    results = []
    for i, ratio in enumerate(d.ratios, start=1):
        probes = (slice(0, d.probe_size), slice(i * d.probe_size, (i + 1) * d.probe_size))
        adv = (trained["adversary", d.base_ratio], trained["adversary", ratio])
        vic = (trained["victim", d.base_ratio], trained["victim", ratio])
        truth = np.r_[np.zeros(d.victim_models, int), np.ones(d.victim_models, int)]
        for name in d.attacks:
            t0 = time.perf_counter()
            refit = functools.partial(_attack, name, cfg, ds, adv, vic, probes, y_probe)
            correct = refit(None) == truth
            c0, c1 = correct[: d.victim_models], correct[d.victim_models :]
            acc = float((c0.mean() + c1.mean()) / 2)
            refits = min(d.bootstrap, PIN_REFITS if name == "pin" else d.bootstrap)
            n_adv = (len(adv[0].logits), len(adv[1].logits))
            boot = _bootstrap(refit, n_adv, truth, d.bootstrap, refits, rng)
            lo, hi = np.percentile(boot, [2.5, 97.5])
            cap = 1 - 1 / (2 * len(truth))
            leak = [n_leaked(min(v, cap), d.base_ratio, ratio) for v in (acc, lo, hi)]
            count = [n_count_test(min(v, cap), d.base_ratio, ratio) for v in (acc, lo, hi)]
            results.append({
                "ratio": ratio, "attack": name, "accuracy": acc,
                "accuracy_ci": [float(lo), float(hi)],
                "n_leaked": leak[0], "n_leaked_ci": leak[1:],
                "n_count_test": count[0], "n_count_test_ci": count[1:],
                "n_victims": len(truth), "wall_s": time.perf_counter() - t0,
            })  # fmt: skip
    report = new_report("distribution", cfg, ds.provenance.to_dict(), THREAT_MODEL)
    report["assumptions"] += [
        "The adversary's models use the victim's training recipe (architecture, epochs, "
        "optimizer).",
        "The victim models are trained by the audit tool with that recipe; the audit measures the "
        "training pipeline's leakage, not one given model file.",
        "n_leaked is Suri & Evans' definition (from their bound on any test's accuracy); "
        "n_count_test uses the normal approximation of the binomial count test.",
    ]
    report["distribution"] = {
        "attribute": d.attribute, "base_ratio": d.base_ratio, "attacks": list(d.attacks),
        "results": results,
        "models": {f"{s}@{r}": {"count": len(run.logits), "trained": run.trained,
                                "cached": run.cached}
                   for (s, r), run in trained.items()},
    }  # fmt: skip
    report["wall_s"] = time.perf_counter() - t_start
    return report
