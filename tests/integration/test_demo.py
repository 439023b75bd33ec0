"""`secure-infer demo --json`: the main job, end to end, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.grpc, pytest.mark.slow]


def test_demo_json(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "secure_infer.cli", "demo", "--json", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out.stdout)
    assert doc["nodes"] == 3
    assert doc["embed"]["cosine_min"] >= 0.9999
    assert doc["embed"]["latency_s"] > 0
    assert doc["embed"]["local_latency_s"] > 0
    assert doc["generate"]["matches_local"] is True
    assert "Paris" in doc["generate"]["text"]
    assert doc["generate"]["tokens_per_s"] > 0
    assert doc["generate"]["local_tokens_per_s"] > 0
    assert doc["failover"]["killed_node"] in ("node-b", "node-c")
    assert doc["failover"]["completed"] is True
    assert doc["fides"]["verdict_ok"] is True
    assert doc["consensus"]["ok"] is True and doc["consensus"]["convicted"] == []
    assert [s["layers"] for s in doc["consensus"]["spans"]] == [[0, 3], [3, 6]]
    assert doc["fides"]["tee"]["simulated"] is True  # labelled: no hardware TEE here
    assert doc["fides"]["without_opt_in"].startswith("refused")
    offer = doc["services"]  # what the mesh offered before the demo's requests
    assert offer["split"]["all-MiniLM-L6-v2"]["covered"] and not offer["unreachable"]
    assert offer["fides_slots"]["mnist"][0]["owner"] == "client"  # provisioned later
    assert {v["protocol"] for v in offer["fides_verifiers"]["mnist"]} == {"distribution"}
    logs = {p.name for p in tmp_path.glob("*.log")}
    assert logs == {"node-a.log", "node-b.log", "node-c.log"}
