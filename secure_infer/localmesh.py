"""A mesh of real node daemons on this machine: one OS process per node, mTLS on loopback.

Used by `secure-infer demo`, the benchmarks and the integration tests. Each node is started as
`python -m secure_infer.cli node run ...` with its own certificate, identity and log file; the
harness waits until every node has bound its port and sees every other node.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from secure_infer import certs
from secure_infer.certs import TLSMaterial

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSpec:
    name: str  # node name and certificate CN
    spans: tuple[tuple[str, int, int], ...] = ()  # (model, start, end) served
    mpc_models: tuple[str, ...] = ()  # models run whole as an MPC party or dealer
    entry: str = "secure_infer.cli"  # module run with `python -m` (tests: adversarial nodes)
    extra_args: tuple[str, ...] = ()  # appended to `node run` (e.g. --classifier NAME=DIR)


@dataclass(slots=True)
class NodeProcess:
    spec: NodeSpec
    process: subprocess.Popen[bytes]
    address: str = ""
    node_id: str = ""
    log: Path = field(default_factory=Path)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


class LocalMesh:
    """Start, inspect and stop a set of node daemons on 127.0.0.1."""

    def __init__(
        self,
        workdir: Path,
        nodes: list[NodeSpec],
        *,
        insecure_dev: bool = False,
        heartbeat_s: float = 1.0,
        dead_after_s: float = 4.0,
        threads: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.specs = nodes
        self.insecure_dev = insecure_dev
        self.heartbeat_s = heartbeat_s
        self.dead_after_s = dead_after_s
        self.threads = threads
        self.nodes: dict[str, NodeProcess] = {}
        self.certs_dir = workdir / "certs"

    # -- PKI ---------------------------------------------------------------------------------
    def _pki(self) -> None:
        if self.insecure_dev:
            return
        if not (self.certs_dir / "ca.crt").exists():
            certs.init_ca(self.certs_dir)
        for name in [s.name for s in self.specs] + ["client"]:
            if not (self.certs_dir / f"{name}.crt").exists():
                certs.issue(self.certs_dir, name, role="client" if name == "client" else "node")

    def client_tls(self) -> TLSMaterial | None:
        return None if self.insecure_dev else certs.material(self.certs_dir, "client")

    @property
    def seeds(self) -> list[str]:
        return [n.address for n in self.nodes.values() if n.alive and n.address]

    # -- processes ---------------------------------------------------------------------------
    def _command(self, spec: NodeSpec, seeds: list[str], ready: Path) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            spec.entry,
            "node",
            "run",
            "--name",
            spec.name,
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(self.workdir / spec.name),
            "--ready-file",
            str(ready),
            "--log-format",
            "json",
        ]
        if seeds:
            cmd += ["--seeds", ",".join(seeds)]
        for model, start, end in spec.spans:
            cmd += ["--span", f"{model}:{start}:{end}"]
        for model in spec.mpc_models:
            cmd += ["--mpc-model", model]
        cmd += spec.extra_args
        if self.insecure_dev:
            cmd += ["--insecure-dev"]
        else:
            cmd += [
                "--ca",
                str(self.certs_dir / "ca.crt"),
                "--cert",
                str(self.certs_dir / f"{spec.name}.crt"),
                "--key",
                str(self.certs_dir / f"{spec.name}.key"),
            ]
        return cmd

    def start(self, timeout_s: float = 180.0) -> None:
        """Start every node (the first is the seed of the others) and wait for the mesh."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._pki()
        env = dict(os.environ)
        if self.threads:
            env["SECURE_INFER_THREADS"] = str(self.threads)
        seeds: list[str] = []
        pending: list[tuple[NodeProcess, Path]] = []
        for i, spec in enumerate(self.specs):
            ready = self.workdir / f"{spec.name}.ready"
            ready.unlink(missing_ok=True)
            log = self.workdir / f"{spec.name}.log"
            cmd = self._command(spec, seeds, ready)
            cmd += ["--heartbeat", str(self.heartbeat_s), "--dead-after", str(self.dead_after_s)]
            with open(log, "wb") as log_file:
                proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
            node = NodeProcess(spec=spec, process=proc, log=log)
            self.nodes[spec.name] = node
            pending.append((node, ready))
            if i == 0:  # the first node is every other node's seed: wait for its address
                self._wait_ready(node, ready, timeout_s)
                seeds = [node.address]
        for node, ready in pending[1:]:
            self._wait_ready(node, ready, timeout_s)
        self.wait_converged(timeout_s=max(10.0, 5 * self.heartbeat_s))

    def _wait_ready(self, node: NodeProcess, ready: Path, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready.exists():
            if not node.alive:
                raise RuntimeError(
                    f"node {node.spec.name} exited with {node.process.returncode}; "
                    f"log {node.log}:\n{_tail(node.log)}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {node.spec.name} not ready after {timeout_s:.0f} s")
            time.sleep(0.1)
        address, node_id, _ = ready.read_text().split("\n", 2)
        node.address, node.node_id = address, node_id

    def wait_converged(self, timeout_s: float = 15.0) -> None:
        """Wait until every live node's peer list contains every other live node."""
        from secure_infer.client import Client

        deadline = time.monotonic() + timeout_s
        want = {n.node_id for n in self.nodes.values() if n.alive}
        with Client(self.seeds, tls=self.client_tls(), insecure_dev=self.insecure_dev) as client:
            while True:
                seen = {n["node_id"] for n in client.nodes()}
                if want <= seen:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"mesh did not converge: want {want}, seen {seen}")
                time.sleep(0.2)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        node = self.nodes[name]
        if node.alive:
            node.process.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.process.wait(timeout=30)

    def stop(self, grace_s: float = 15.0) -> None:
        for node in self.nodes.values():
            if node.alive:
                with contextlib.suppress(ProcessLookupError):
                    node.process.send_signal(signal.SIGCONT)
                    node.process.terminate()
        deadline = time.monotonic() + grace_s
        for node in self.nodes.values():
            try:
                node.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()

    def __enter__(self) -> LocalMesh:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
