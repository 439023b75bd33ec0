"""The checked-in stubs in decentralized/v1 must be exactly what protoc generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_are_fresh(tmp_path: Path) -> None:
    protos = sorted((ROOT / "proto" / "decentralized" / "v1").glob("*.proto"))
    assert protos
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'proto'}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            *[str(p) for p in protos],
        ],
        check=True,
    )
    generated = sorted(p.relative_to(tmp_path) for p in (tmp_path / "decentralized/v1").glob("*"))
    assert generated, "protoc produced nothing"
    for rel in generated:
        checked_in = ROOT / rel
        assert checked_in.exists(), f"{rel} is generated but not checked in (run make proto)"
        assert checked_in.read_bytes() == (tmp_path / rel).read_bytes(), (
            f"{rel} is stale: run `make proto` and commit"
        )
