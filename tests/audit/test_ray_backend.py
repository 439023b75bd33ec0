"""Shadow training on a real Ray cluster (`ray start --head` in a subprocess), through the CLI.

The cluster is a separate set of processes the audit connects to by address, as a user's cluster
would be; the shadows it trains must equal the local pool's on the same seeds (training is
deterministic with one torch thread), and the resume logic must be the same.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from secure_infer.cli import main

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

SMALL = [
    "--data", "mnist1d", "--shadows", "4", "--no-progress",
    "--set", "data.pool_size=600", "--set", "data.population_size=300",
    "--set", "model.epochs=40", "--set", "model.hidden=[64]",
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    ray_bin = Path(sys.executable).with_name("ray")
    port = _free_port()
    temp = tmp_path_factory.mktemp("ray")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    start = [
        str(ray_bin), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
        "--num-cpus", "2", "--include-dashboard", "false", "--temp-dir", str(temp),
        "--disable-usage-stats",
    ]  # fmt: skip
    out = subprocess.run(start, capture_output=True, text=True, timeout=180, env=env)
    if out.returncode != 0:
        pytest.fail(f"ray start failed: {out.stderr[-2000:]}")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        import ray

        ray.shutdown()
        subprocess.run([str(ray_bin), "stop", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def _audit(out: Path, extra: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    rc = main(["audit", "membership", *SMALL, "--out", str(out), *extra])
    captured = capsys.readouterr()
    assert rc == 0, captured.err[-2000:]
    return json.loads((out / "report.json").read_text())


def test_shadows_on_a_ray_cluster_match_the_local_pool(
    ray_cluster: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ray

    on_ray = _audit(tmp_path / "ray", ["--ray-address", ray_cluster], capsys)
    assert ray.is_initialized()
    # The driver joined the started cluster (Ray reports it under the host's address).
    assert ray.get_runtime_context().gcs_address.endswith(":" + ray_cluster.rsplit(":", 1)[1])
    assert on_ray["shadows"]["trained"] == 4 and on_ray["shadows"]["cached"] == 0
    ray_cache = Path(on_ray["shadows"]["cache_dir"])

    # The same configuration in a fresh cache, trained by the local pool.
    monkeypatch.setenv("SECURE_INFER_CACHE", str(tmp_path / "local-cache"))
    local = _audit(tmp_path / "local", ["--workers", "2"], capsys)
    local_cache = Path(local["shadows"]["cache_dir"])
    assert local_cache.name == ray_cache.name  # same configuration hash
    for k in range(4):
        with (
            np.load(ray_cache / f"shadow_{k:04d}.npz") as a,
            np.load(local_cache / f"shadow_{k:04d}.npz") as b,
        ):
            np.testing.assert_allclose(a["logits"], b["logits"], rtol=1e-5, atol=1e-5)
    assert [a["auc"] for a in on_ray["attacks"]] == pytest.approx(
        [a["auc"] for a in local["attacks"]], abs=1e-6
    )

    # Resume on Ray: only the missing shadows are trained again.
    (ray_cache / "shadow_0001.npz").unlink()
    monkeypatch.setenv("SECURE_INFER_CACHE", str(ray_cache.parents[1]))
    again = _audit(tmp_path / "ray2", ["--ray-address", ray_cluster], capsys)
    assert again["shadows"]["trained"] == 1 and again["shadows"]["cached"] == 3
