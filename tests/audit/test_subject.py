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
    # background_size 100 < the 160 member records: the reference pool used to be 2 x 100 rows
    # for models trained on 260, and numpy's "Cannot take a larger sample than population".
    rc = main([
        "audit", "subject", "--data", "census", "--workers", "2", "--no-progress",
        "--out", str(out), "--set", "subject.n_subjects=40", "--set", "subject.background_size=100",
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


def test_subject_background_too_large_names_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["audit", "subject", "--data", "census", "--no-progress",
               "--set", "subject.background_size=100000"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("DataUnavailable: subject.background_size=100000"), err
    assert err.count("\n") == 1


def test_known_records_are_never_copies_of_training_records() -> None:
    """The subject threat model: the attacker holds other samples of a subject, never its
    training records. KDD has exact (x, y) copies inside pseudo-households; the audit's data set
    has none left, so no known record can equal an owned one."""
    from secure_infer.audit.config import AuditConfig
    from secure_infer.audit.data import load_dataset

    ds = load_dataset("census")
    s = AuditConfig(kind="subject").subject
    gid = subject_groups(ds.attributes, s.key)
    sizes = np.bincount(gid)
    need = s.records_per_subject + s.known_per_subject
    eligible = np.flatnonzero((sizes >= need) & (sizes <= 4 * need))
    rows = np.flatnonzero(np.isin(gid, eligible))
    xy = np.concatenate([ds.x[rows], ds.y[rows, None].astype(np.float32)], axis=1)
    assert len(np.unique(xy, axis=0)) == len(rows)  # no two records of any subject are equal
