"""The node daemon as a user runs it: config checks, metrics, status, SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from secure_infer import Client, certs
from secure_infer.localmesh import LocalMesh

pytestmark = pytest.mark.grpc
CLI = [sys.executable, "-m", "secure_infer.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(CLI + args, capture_output=True, text=True, timeout=timeout)


def test_refuses_a_certificate_peers_would_reject(tmp_path: Path) -> None:
    certs.init_ca(tmp_path)
    certs.issue(tmp_path, "node-a", role="node")
    certs.issue(tmp_path, "alice", role="client")
    base = [
        "node",
        "run",
        "--listen",
        "127.0.0.1:0",
        "--span",
        "all-MiniLM-L6-v2:0:6",
        "--ca",
        str(tmp_path / "ca.crt"),
    ]
    out = _run(
        base
        + [
            "--name",
            "node-b",
            "--cert",
            str(tmp_path / "node-a.crt"),
            "--key",
            str(tmp_path / "node-a.key"),
        ]
    )
    assert out.returncode == 1
    assert "CertError: node name 'node-b' must equal the CN" in out.stderr
    out = _run(
        base
        + [
            "--name",
            "alice",
            "--cert",
            str(tmp_path / "alice.crt"),
            "--key",
            str(tmp_path / "alice.key"),
        ]
    )
    assert out.returncode == 1
    assert "not a node certificate" in out.stderr


def test_plaintext_only_on_loopback_and_bad_spans() -> None:
    out = _run(
        [
            "node",
            "run",
            "--insecure-dev",
            "--listen",
            "0.0.0.0:7001",
            "--span",
            "all-MiniLM-L6-v2:0:6",
        ]
    )
    assert out.returncode == 1
    assert "ConfigError: insecure_dev is allowed only on loopback" in out.stderr
    out = _run(["node", "run", "--insecure-dev", "--span", "all-MiniLM-L6-v2:2:9"])
    assert out.returncode == 1
    assert "outside layers [0, 6)" in out.stderr
    assert "Traceback" not in out.stderr


def test_config_types_and_flags_are_checked_before_starting(tmp_path: Path) -> None:
    """`insecure_dev = "false"` (a string) used to start a PLAINTEXT node despite its [tls]
    section; `--metrics 9101` used to fail only once the node served, with a traceback."""
    toml = tmp_path / "node.toml"
    toml.write_text(
        '[node]\nname = "node-a"\ninsecure_dev = "false"\n'
        '[tls]\nca = "ca.crt"\ncert = "node-a.crt"\nkey = "node-a.key"\n'
        '[[spans]]\nmodel = "all-MiniLM-L6-v2"\nstart = 0\nend = 3\n'
    )
    out = _run(["node", "run", "--config", str(toml)], timeout=60)
    assert out.returncode == 1, out.stderr
    assert f"ConfigError: {toml}: [node] insecure_dev: expected true or false" in out.stderr
    assert "INSECURE" not in out.stderr and "Traceback" not in out.stderr
    flags = ["--insecure-dev", "--span", "all-MiniLM-L6-v2:0:3", "--metrics", "9101"]
    out = _run(["node", "run", "--data-dir", str(tmp_path / "d"), *flags], timeout=60)
    assert out.returncode == 1, out.stderr
    assert "ConfigError: command line: [node] metrics: expected HOST:PORT" in out.stderr
    assert "INSECURE" not in out.stderr and "Traceback" not in out.stderr


def test_metrics_status_and_graceful_sigterm(tmp_path: Path) -> None:
    port, mport = _free_port(), _free_port()
    ready = tmp_path / "ready"
    log = tmp_path / "node.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            CLI
            + [
                "node",
                "run",
                "--insecure-dev",
                "--name",
                "solo",
                "--listen",
                f"127.0.0.1:{port}",
                "--metrics",
                f"127.0.0.1:{mport}",
                "--span",
                "all-MiniLM-L6-v2:0:6",
                "--data-dir",
                str(tmp_path / "solo"),
                "--ready-file",
                str(ready),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        infer = _run(
            [
                "infer",
                "--insecure-dev",
                "--seeds",
                f"127.0.0.1:{port}",
                "--model",
                "all-MiniLM-L6-v2",
                "--text",
                "hello",
                "--json",
            ]
        )
        assert infer.returncode == 0, infer.stderr
        assert '"INSECURE plaintext gRPC' in infer.stdout
        status = _run(["node", "status", f"127.0.0.1:{port}", "--insecure-dev"])
        assert status.returncode == 0, status.stderr
        assert "INSECURE-DEV" in status.stdout
        assert "all-MiniLM-L6-v2 [0, 6)" in status.stdout
        body = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read()
        text = body.decode()
        assert 'secure_infer_requests_total{code="OK",method="Forward"} 1.0' in text
        assert "secure_infer_request_seconds_bucket" in text
        assert "secure_infer_tensor_bytes_received_total" in text
        # The identity key is created once and kept.
        assert (tmp_path / "solo" / "identity.key").stat().st_mode & 0o777 == 0o600
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    text = log.read_text()
    assert "INSECURE" in text
    assert "draining" in text


def test_a_node_with_a_foreign_certificate_cannot_join(
    minilm_mesh: LocalMesh, tmp_path: Path
) -> None:
    certs.init_ca(tmp_path / "evil")
    bad = certs.issue(tmp_path / "evil", "intruder", role="node")
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        CLI
        + [
            "node",
            "run",
            "--name",
            "intruder",
            "--listen",
            "127.0.0.1:0",
            "--seeds",
            ",".join(minilm_mesh.seeds),
            "--span",
            "all-MiniLM-L6-v2:0:6",
            "--ca",
            str(bad.ca_cert),
            "--cert",
            str(bad.cert),
            "--key",
            str(bad.key),
            "--data-dir",
            str(tmp_path / "intruder"),
            "--ready-file",
            str(ready),
            "--heartbeat",
            "0.5",
            "--dead-after",
            "2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(3)  # several heartbeat rounds: every one fails the TLS handshake
        with Client(minilm_mesh.seeds, tls=minilm_mesh.client_tls()) as client:
            names = {n["name"] for n in client.nodes()}
        assert "intruder" not in names
        assert names == {"node-a", "node-b", "node-c"}
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_sigterm_mid_request_finishes_the_work(tmp_path: Path) -> None:
    """A node told to stop while computing finishes the request in flight; nothing is lost."""
    import threading

    import numpy as np

    from secure_infer.localmesh import NodeSpec
    from tests.conftest import start_mesh

    mesh = start_mesh(
        tmp_path,
        [
            NodeSpec(name="solo-a", spans=(("all-MiniLM-L6-v2", 0, 6),)),
            NodeSpec(name="solo-b", spans=(("all-MiniLM-L6-v2", 0, 6),)),
        ],
    )
    texts = [f"Sentence {i}: " + "a fairly long text about meshes " * 12 for i in range(64)]
    results: dict[str, object] = {}
    try:
        with Client(mesh.seeds, tls=mesh.client_tls()) as client:
            reference = client.embed("all-MiniLM-L6-v2", texts[:2]).embeddings
            target = client.embed("all-MiniLM-L6-v2", texts[:1]).route[0].name

            def run() -> None:
                results["res"] = client.embed("all-MiniLM-L6-v2", texts)

            worker = threading.Thread(target=run)
            worker.start()
            time.sleep(0.3)  # the batch takes seconds of compute: the node is mid-forward
            mesh.kill(target, signal.SIGTERM)
            worker.join(timeout=120)
        res = results["res"]
        assert res.embeddings.shape == (64, 384)  # type: ignore[attr-defined]
        assert np.allclose(res.embeddings[:2], reference, atol=1e-5)  # type: ignore[attr-defined]
        node = mesh.nodes[target]
        assert node.process.returncode == 0
        log = node.log.read_text()
        assert "draining" in log
        assert '"stopped"' in log
    finally:
        mesh.stop()
