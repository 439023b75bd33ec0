"""`secure-infer node run` up to the daemon: flags are checked before anything starts, and a
metrics port that cannot be bound fails before the node does (no processes, no models)."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import pytest

from secure_infer import cli, daemon
from secure_infer.config import load
from secure_infer.localmesh import LocalMesh, NodeSpec

SPAN = ["--insecure-dev", "--span", "all-MiniLM-L6-v2:0:3"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--device", "foo"], "ConfigError: command line: [node] device: expected auto, cpu, cuda"),
        (["--metrics", "9101"], "ConfigError: command line: [node] metrics: expected HOST:PORT"),
        (["--metrics", "127.0.0.1:x"], "[node] metrics: expected HOST:PORT with a port 1-65535"),
        (["--heartbeat", "nan"], "[node] heartbeat_s: expected a finite number of seconds > 0"),
        (["--seeds", "127.0.0.1"], "[node] seeds item: expected HOST:PORT"),
    ],
)
def test_bad_flags_are_one_line_config_errors(
    flags: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """They used to surface as a RuntimeError traceback (--device foo), after the node was
    serving (--metrics 9101: ValueError, then "Event loop is closed"), or not at all."""

    async def serve(*args: object, **kwargs: object) -> None:
        raise AssertionError("the daemon was reached with an invalid flag")

    monkeypatch.setattr(daemon, "serve", serve)
    argv = ["node", "run", *SPAN, "--data-dir", str(tmp_path), *flags]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_grace_is_checked_by_the_parser(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "_node_run", lambda args: pytest.fail("--grace nan was accepted"))
    with pytest.raises(SystemExit) as info:
        cli.main(["node", "run", *SPAN, "--grace", "nan"])
    assert info.value.code == 2
    assert "--grace: expected a finite number of seconds >= 0" in capsys.readouterr().err


def test_a_busy_metrics_port_fails_before_the_node_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from decentralized.node import Node

    async def never(self: Node) -> int:
        raise AssertionError("the node started although its metrics port is taken")

    monkeypatch.setattr(Node, "start", never)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        config = load(
            None,
            {
                "insecure_dev": True,
                "spans": [("all-MiniLM-L6-v2", 0, 3)],
                "metrics": address,
                "data_dir": str(tmp_path),
            },
        )
        with pytest.raises(OSError, match=f"could not serve metrics on {address}"):
            asyncio.run(daemon.serve(config))


@pytest.mark.parametrize("insecure_dev", [False, True])
def test_localmesh_node_commands_validate(tmp_path: Path, insecure_dev: bool) -> None:
    """What `LocalMesh` (demo, benchmarks, integration tests) passes to `node run` passes the
    checks: spans, MPC models, seeds, heartbeat/dead-after, mTLS files or --insecure-dev."""
    spec = NodeSpec(
        name="node-b",
        spans=(("all-MiniLM-L6-v2", 0, 3), ("SmolLM2-135M-Instruct", 15, 30)),
        mpc_models=("all-MiniLM-L6-v2", "SmolLM2-135M-Instruct"),
        extra_args=("--enclave", "simulated", "--fides-protocol", "verdicts"),
    )
    mesh = LocalMesh(tmp_path, [spec], insecure_dev=insecure_dev)
    cmd = mesh._command(spec, ["127.0.0.1:40001"], tmp_path / "ready")
    cmd += ["--heartbeat", str(mesh.heartbeat_s), "--dead-after", str(mesh.dead_after_s)]
    assert cmd[:5] == [sys.executable, "-m", "secure_infer.cli", "node", "run"]
    args = cli.build_parser().parse_args(cmd[3:])
    config = load(args.config, cli.node_overrides(args))
    assert config.settings.name == "node-b" and len(config.settings.spans) == 2
    assert config.insecure_dev is insecure_dev and (config.tls is None) is insecure_dev
    assert config.settings.seeds == ("127.0.0.1:40001",)
