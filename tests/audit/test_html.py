"""The HTML report renders in headless Chromium with its plots (Debian package `chromium`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from secure_infer.audit.config import AuditConfig
from secure_infer.audit.metrics import attack_metrics
from secure_infer.audit.report import histogram, new_report, render_html, summary
from tests.audit.conftest import validate_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs headless Chromium (Debian: apt-get install chromium)"
)


def _report() -> dict:
    rng = np.random.default_rng(0)
    member = np.r_[np.ones(500, bool), np.zeros(500, bool)]
    rep = new_report("membership", AuditConfig(), {
        "dataset": "mnist1d", "package": "mnist1d", "version": "0", "files": ["generated"],
        "rows": 1000, "features": 40, "preprocessing": "none", "duplicates_dropped": 0,
    }, "test threat model")  # fmt: skip
    rep["assumptions"] = ["synthetic scores for a rendering test"]
    rep["target"] = {"description": "t", "trained_by_tool": True, "members": 500,
                     "non_members": 500, "train_accuracy": 1.0, "test_accuracy": 0.5}  # fmt: skip
    rep["shadows"] = {"count": 2, "trained": 2, "cached": 0, "cache_dir": "/tmp", "wall_s": 1.0}
    rep["attacks"] = []
    for name, shift in (("loss", 0.5), ("lira_online", 1.5)):
        s = rng.normal(size=1000) + shift * member
        rep["attacks"].append({"name": name, **attack_metrics(s, member), "wall_s": 0.1,
                               "histogram": histogram(s, member)})  # fmt: skip
    rep["risk_table"] = {"attack": "lira_online", "unit": "row",
                         "rows": [{"id": 3, "member": True, "score": 2.5, "<b>": "x"}]}  # fmt: skip
    rep["wall_s"] = 1.0
    return rep


def _chromium(html: Path, *flags: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *flags,
         html.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip


def test_report_renders_with_plots(tmp_path: Path) -> None:
    rep = _report()
    validate_report(rep)
    page = tmp_path / "report.html"
    page.write_text(render_html(rep))
    assert "<b>" not in page.read_text().split("<body>")[1].replace("<b>Assumed", "")  # escaped
    dom = _chromium(page, "--dump-dom").stdout.decode()
    assert dom.count("<svg") >= 2 and 'id="roc"' in dom and 'id="hist"' in dom
    assert "ROC (log-log)" in dom or "ROC" in dom
    shot = tmp_path / "shot.png"
    _chromium(page, f"--screenshot={shot}", "--window-size=1200,1600")
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    assert img.std() > 20  # not a blank page
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50  # colored plot lines and fills
    assert "lira_online" in summary(rep)
