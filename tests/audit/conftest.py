"""Audit test helpers: a per-test shadow cache and small, fast configurations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "audit-report.schema.json"


@pytest.fixture(autouse=True)
def _audit_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECURE_INFER_CACHE", str(tmp_path / "cache"))


def validate_report(report: dict[str, Any]) -> None:
    """Validate ``report`` against docs/audit-report.schema.json (needs jsonschema)."""
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text())).validate(report)
