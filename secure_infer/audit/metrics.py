"""Attack metrics: ROC curve, AUC, and TPR at fixed low false-positive rates.

Following Carlini et al. (LiRA), the headline numbers are TPR at 0.1 % and 1 % FPR; AUC and
balanced accuracy are reported too but say little about the worst-case (low-FPR) leakage.
With ``n`` negatives, TPR at FPR below ``1/n`` is not measurable; :func:`attack_metrics`
reports ``n_negatives`` so readers can judge the resolution.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

__all__ = ["FPR_POINTS", "attack_metrics", "tpr_at_fpr"]

FPR_POINTS = (0.001, 0.01)


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, max_fpr: float) -> float:
    """The highest TPR among ROC points whose FPR is at most ``max_fpr``."""
    ok = fpr <= max_fpr
    return float(tpr[ok].max()) if ok.any() else 0.0


def _thin(fpr: np.ndarray, tpr: np.ndarray, points: int = 300) -> tuple[list[float], list[float]]:
    """Keep about ``points`` ROC points, log-spaced in FPR (for plots on log-log axes)."""
    if len(fpr) <= points:
        return fpr.tolist(), tpr.tolist()
    grid = np.unique(np.concatenate([[0.0], np.logspace(-5, 0, points)]))
    idx = np.unique(np.clip(np.searchsorted(fpr, grid, side="right") - 1, 0, len(fpr) - 1))
    return fpr[idx].tolist(), tpr[idx].tolist()


def attack_metrics(scores: np.ndarray, is_member: np.ndarray) -> dict[str, Any]:
    """AUC, TPR at :data:`FPR_POINTS`, best balanced accuracy and a thinned ROC curve.

    ``scores``: higher means "more likely a member". Non-finite scores are an error.
    """
    scores = np.asarray(scores, np.float64)
    is_member = np.asarray(is_member, bool)
    if not np.isfinite(scores).all():
        raise ValueError("attack produced non-finite scores")
    fpr, tpr, _ = roc_curve(is_member, scores)
    roc_fpr, roc_tpr = _thin(fpr, tpr)
    return {
        "auc": float(roc_auc_score(is_member, scores)),
        "tpr_at_fpr": {f"{p:g}": tpr_at_fpr(fpr, tpr, p) for p in FPR_POINTS},
        "balanced_accuracy": float(np.max(1 - (fpr + (1 - tpr)) / 2)),
        "n_positives": int(is_member.sum()),
        "n_negatives": int((~is_member).sum()),
        "roc": {"fpr": roc_fpr, "tpr": roc_tpr},
    }
