"""What the reports say about their numbers: resolution of TPR at low FPR, oracle thresholds."""

from __future__ import annotations

import numpy as np

from secure_infer.audit.config import AuditConfig
from secure_infer.audit.metrics import attack_metrics
from secure_infer.audit.report import NOT_MEASURABLE, histogram, new_report, render_html, summary
from tests.audit.conftest import validate_report


def _report(n: int) -> dict:
    """A membership report on real-shaped synthetic scores with ``n`` members and non-members."""
    rng = np.random.default_rng(0)
    member = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    rep = new_report("membership", AuditConfig(), {
        "dataset": "mnist1d", "package": "mnist1d", "version": "0", "files": ["generated"],
        "rows": 2 * n, "features": 40, "preprocessing": "none", "duplicates_dropped": 0,
    }, "test threat model")  # fmt: skip
    rep["target"] = {"description": "t", "trained_by_tool": True, "members": n,
                     "non_members": n, "train_accuracy": 1.0, "test_accuracy": 0.5}  # fmt: skip
    rep["shadows"] = {"count": 2, "trained": 2, "cached": 0, "cache_dir": "/tmp", "wall_s": 1.0}
    s = rng.normal(size=2 * n) + member
    rep["attacks"] = [{"name": "lira_online", **attack_metrics(s, member), "wall_s": 0.1,
                       "histogram": histogram(s, member)}]  # fmt: skip
    rep["risk_table"] = {"attack": "lira_online", "unit": "row", "rows": []}
    rep["wall_s"] = 1.0
    return rep


def test_tpr_below_the_resolution_is_marked_in_html_and_summary() -> None:
    """64 non-members (the llm-membership default): TPR@0.1% and @1% are TPR at FPR 0."""
    rep = _report(64)
    validate_report(rep)
    a = rep["attacks"][0]
    assert a["tpr_at_fpr_measurable"] == {"0.001": False, "0.01": False}
    page, text = render_html(rep), summary(rep)
    for out in (page, text):
        assert NOT_MEASURABLE in out and "1/64" in out
    assert f"{a['tpr_at_fpr']['0.01']:.4f}*" in page and f"{a['tpr_at_fpr']['0.01']:.4f}*" in text


def test_measurable_tpr_is_not_marked_and_balanced_accuracy_is_labelled() -> None:
    rep = _report(1000)
    validate_report(rep)
    page, text = render_html(rep), summary(rep)
    assert NOT_MEASURABLE not in page and NOT_MEASURABLE not in text and "*" not in text
    assert "best bal. acc. (oracle threshold)" in page
    assert rep["attacks"][0]["tpr_at_fpr_measurable"] == {"0.001": True, "0.01": True}
