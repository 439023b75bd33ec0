"""Attack metrics: ROC curve, AUC, and TPR at fixed low false-positive rates.

Following Carlini et al. (LiRA), the headline numbers are TPR at 0.1 % and 1 % FPR; AUC and
balanced accuracy are reported too but say little about the worst-case (low-FPR) leakage.

Resolution: with ``n`` non-members the smallest non-zero FPR is ``1/n``. For an FPR point
``p < 1/n`` the only operating points at or below ``p`` have FPR 0, so "TPR at ``p``" is the TPR
at zero false positives, not a measurement at ``p``; :func:`attack_metrics` flags such points in
``tpr_at_fpr_measurable`` and the reports print them as "not measurable (TPR at FPR=0 shown)".

``balanced_accuracy`` is the best balanced accuracy over all thresholds, the threshold being
chosen on the evaluated scores themselves (an oracle threshold): an optimistic figure, not the
accuracy of an attack that must fix its threshold beforehand.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

__all__ = ["FPR_POINTS", "attack_metrics", "measurable", "tpr_at_fpr"]

FPR_POINTS = (0.001, 0.01)


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, max_fpr: float) -> float:
    """The highest TPR among ROC points whose FPR is at most ``max_fpr``."""
    ok = fpr <= max_fpr
    return float(tpr[ok].max()) if ok.any() else 0.0


def measurable(max_fpr: float, n_negatives: int) -> bool:
    """Whether an FPR of ``max_fpr`` can be reached with ``n_negatives`` (``max_fpr >= 1/n``)."""
    return max_fpr * n_negatives >= 1 - 1e-9


def _thin(fpr: np.ndarray, tpr: np.ndarray, points: int = 300) -> tuple[list[float], list[float]]:
    """Keep about ``points`` ROC points, log-spaced in FPR (for plots on log-log axes)."""
    if len(fpr) <= points:
        return fpr.tolist(), tpr.tolist()
    grid = np.unique(np.concatenate([[0.0], np.logspace(-5, 0, points)]))
    idx = np.unique(np.clip(np.searchsorted(fpr, grid, side="right") - 1, 0, len(fpr) - 1))
    return fpr[idx].tolist(), tpr[idx].tolist()


def attack_metrics(scores: np.ndarray, is_member: np.ndarray) -> dict[str, Any]:
    """AUC, TPR at :data:`FPR_POINTS`, best balanced accuracy and a thinned ROC curve.

    ``scores``: higher means "more likely a member". Non-finite scores are an error. Every
    distinct score is an operating point (``drop_intermediate=False``: collinear points at the
    low-FPR end are real thresholds that ``tpr_at_fpr`` must see).
    """
    scores = np.asarray(scores, np.float64)
    is_member = np.asarray(is_member, bool)
    if not np.isfinite(scores).all():
        raise ValueError("attack produced non-finite scores")
    fpr, tpr, _ = roc_curve(is_member, scores, drop_intermediate=False)
    roc_fpr, roc_tpr = _thin(fpr, tpr)
    n_neg = int((~is_member).sum())
    return {
        "auc": float(roc_auc_score(is_member, scores)),
        "tpr_at_fpr": {f"{p:g}": tpr_at_fpr(fpr, tpr, p) for p in FPR_POINTS},
        "tpr_at_fpr_measurable": {f"{p:g}": measurable(p, n_neg) for p in FPR_POINTS},
        "balanced_accuracy": float(np.max(1 - (fpr + (1 - tpr)) / 2)),
        "n_positives": int(is_member.sum()),
        "n_negatives": n_neg,
        "roc": {"fpr": roc_fpr, "tpr": roc_tpr},
    }
