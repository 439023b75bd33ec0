"""Subject membership on KDD Census-Income pseudo-households, end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from secure_infer.audit.errors import AuditConfigError
from secure_infer.audit.subject import subject_groups
from secure_infer.cli import main
from tests.audit.conftest import validate_report


def test_subject_groups_joint_key() -> None:
    attrs = {"a": np.array(["x", "x", "y", "y"]), "b": np.array(["1", "2", "1", "1"])}
    gid = subject_groups(attrs, ["a", "b"])
    assert gid[2] == gid[3] and len({gid[0], gid[1], gid[2]}) == 3
    with pytest.raises(AuditConfigError, match="unknown columns"):
        subject_groups(attrs, ["zip"])


def test_subject_audit_on_census(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "subj"
    rc = main([
        "audit", "subject", "--data", "census", "--workers", "2", "--no-progress",
        "--out", str(out), "--set", "subject.n_subjects=40", "--set", "subject.background_size=600",
        "--set", "subject.n_reference=4", "--set", "model.epochs=25",
    ])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    validate_report(report)
    assert {a["name"] for a in report["attacks"]} == {"subject_loss", "subject_lira"}
    assert all(a["n_positives"] == 20 and a["n_negatives"] == 20 for a in report["attacks"])
    assert report["risk_table"]["unit"] == "subject"
    assert any("pseudo-households" in a for a in report["assumptions"])
    # members' own records are fitted better than non-members' (the target memorizes subjects)
    assert report["target"]["train_accuracy"] >= report["target"]["test_accuracy"]
