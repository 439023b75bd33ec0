"""The `secure-infer` command line: node, certs, models, infer, classify, fides, demo, audit.

Thin: parse, build config, call the SDK or daemon. Expected errors print
`ErrorType: message` on stderr without a traceback and exit non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from pathlib import Path
from typing import Any

_EXIT_ERROR = 1
_EXIT_USAGE = 2


def _tls_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("credentials")
    g.add_argument("--certs", type=Path, help="directory with ca.crt and NAME.crt/NAME.key")
    g.add_argument("--identity", default="client", help="certificate NAME inside --certs")
    g.add_argument("--ca", type=Path, help="mesh CA certificate (PEM)")
    g.add_argument("--cert", type=Path, help="this party's certificate (PEM)")
    g.add_argument("--key", type=Path, help="this party's private key (PEM)")
    g.add_argument(
        "--insecure-dev", action="store_true", help="plaintext gRPC, loopback only, for development"
    )


def _tls(args: argparse.Namespace) -> Any:
    from secure_infer.certs import TLSMaterial, material

    if args.insecure_dev:
        return None
    if args.ca and args.cert and args.key:
        return TLSMaterial(ca_cert=args.ca, cert=args.cert, key=args.key)
    if args.certs:
        return material(args.certs, args.identity)
    raise SystemExit(
        "error: give --certs DIR (with --identity NAME), or --ca/--cert/--key, "
        "or --insecure-dev for a loopback development mesh"
    )


def _grace(text: str) -> float:
    """--grace: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        prog="secure-infer", description=__doc__.splitlines()[0], formatter_class=fmt
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")

    node = sub.add_parser("node", help="run or inspect a mesh node", formatter_class=fmt)
    node_sub = node.add_subparsers(dest="node_command", required=True)
    run = node_sub.add_parser("run", help="run a node daemon", formatter_class=fmt)
    run.add_argument("--config", type=Path, help="node TOML file (flags override it)")
    run.add_argument("--name")
    run.add_argument("--listen", help="host:port to bind")
    run.add_argument("--advertise", help="host:port peers dial (default: listen address)")
    run.add_argument("--seeds", help="comma-separated host:port of nodes to join through")
    run.add_argument(
        "--span",
        action="append",
        metavar="MODEL:START:END",
        help="layer span to serve (repeatable; replaces the config's spans)",
    )
    run.add_argument(
        "--mpc-model",
        action="append",
        metavar="MODEL",
        help="model to run whole as an MPC party or dealer (repeatable; replaces mpc_models)",
    )
    run.add_argument(
        "--classifier",
        action="append",
        metavar="NAME=DIR",
        help="host a plaintext classifier directory (repeatable; replaces the config's)",
    )
    run.add_argument(
        "--mpc-classifier",
        action="append",
        metavar="NAME=DIR",
        help="run an MPCViT checkpoint (DIR/model.json + .safetensors) under MPC (repeatable)",
    )
    run.add_argument(
        "--fides-verifier",
        action="append",
        metavar="NAME=DIR",
        help="host a Fides verification model in an enclave (repeatable)",
    )
    run.add_argument(
        "--fides-sealed",
        action="append",
        metavar="NAME=OWNER",
        help="open a Fides verifier slot whose model OWNER (the CN of its mesh certificate) "
        "sends sealed to the enclave (`fides provision`): this node never holds the "
        "verifier's weights in the clear (on SEV-SNP/TDX hardware; repeatable)",
    )
    run.add_argument(
        "--fides-client",
        action="append",
        metavar="NAME=CN",
        help="answer Verify / OpenSession for verifier NAME only to the mesh certificate CN "
        "(repeatable; a verifier with none answers every mesh client, including a service's "
        "operator that would relay its answers as its own)",
    )
    run.add_argument(
        "--enclave",
        choices=["auto", "simulated", "configfs-tsm"],
        help="enclave backend for Fides verifiers (auto: configfs-tsm if present, else "
        "SIMULATED, which is insecure)",
    )
    run.add_argument(
        "--fides-protocol",
        choices=["distribution", "verdicts"],
        help="what Fides verifiers return: the verifier's distribution (clients judge it; "
        "the default) or verdicts only (the enclave judges; clients cannot distil the verifier)",
    )
    run.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    run.add_argument("--data-dir", help="directory of the node identity key")
    run.add_argument("--metrics", help="host:port of the Prometheus endpoint")
    run.add_argument("--ca", help="mesh CA certificate (PEM)")
    run.add_argument("--cert", help="node certificate (PEM)")
    run.add_argument("--key", help="node private key (PEM)")
    run.add_argument(
        "--insecure-dev",
        action="store_true",
        default=None,
        help="plaintext gRPC on loopback only, for development",
    )
    run.add_argument("--log-format", choices=["json", "text"])
    run.add_argument(
        "--heartbeat", type=float, dest="heartbeat_s", help="seconds between gossip rounds"
    )
    run.add_argument(
        "--dead-after",
        type=float,
        dest="dead_after_s",
        help="seconds without a fresh record after which a peer is dead",
    )
    run.add_argument(
        "--grace", type=_grace, default=10.0, help="seconds to drain on SIGTERM (>= 0)"
    )
    run.add_argument("--ready-file", help=argparse.SUPPRESS)
    status = node_sub.add_parser("status", help="show a live node", formatter_class=fmt)
    status.add_argument("address", help="host:port of the node")
    status.add_argument("--json", action="store_true")
    _tls_flags(status)

    certs = sub.add_parser(
        "certs", help="mesh PKI: a CA and node/client certificates", formatter_class=fmt
    )
    certs_sub = certs.add_subparsers(dest="certs_command", required=True)
    init = certs_sub.add_parser("init", help="create the mesh CA", formatter_class=fmt)
    init.add_argument("--dir", type=Path, default=Path("certs"))
    init.add_argument("--force", action="store_true", help="overwrite an existing CA")
    issue = certs_sub.add_parser(
        "issue", help="issue a node or client certificate", formatter_class=fmt
    )
    issue.add_argument("name")
    issue.add_argument("--dir", type=Path, default=Path("certs"))
    issue.add_argument("--role", choices=["node", "client"], default="node")
    issue.add_argument(
        "--host",
        action="append",
        help="SAN host (IP or DNS; repeatable; default 127.0.0.1, localhost, ::1)",
    )
    issue.add_argument("--days", type=int, default=365)
    issue.add_argument("--force", action="store_true")

    infer = sub.add_parser(
        "infer", help="one-shot embedding or generation through the mesh", formatter_class=fmt
    )
    infer.add_argument("--seeds", required=True, help="comma-separated host:port")
    infer.add_argument("--model", required=True)
    infer.add_argument("--text", action="append", help="text to embed (repeatable)")
    infer.add_argument("--prompt", help="prompt to generate from")
    infer.add_argument("--max-new-tokens", type=int, default=64)
    infer.add_argument("--timeout", type=float, default=30.0, help="seconds per hop")
    infer.add_argument("--json", action="store_true")
    infer.add_argument(
        "--verify",
        choices=["consensus"],
        help="run every span on k random nodes and let a majority decide (docs/consensus.md)",
    )
    infer.add_argument("--k", type=int, default=2, help="replicas per span under --verify")
    infer.add_argument(
        "--manifest", type=Path, help="the model publisher's manifest (default: build one locally)"
    )
    infer.add_argument("--publisher-key", help="hex Ed25519 key the manifest must be signed by")
    infer.add_argument("--verdict-log", type=Path, help="append signed verdicts (JSON lines)")
    infer.add_argument(
        "--candidates", help="comma-separated node names the replicas are drawn from (default: all)"
    )
    _tls_flags(infer)

    man = sub.add_parser(
        "manifest",
        help="build, sign or check a model manifest (weight digests + consensus tolerances)",
        formatter_class=fmt,
    )
    man_sub = man.add_subparsers(dest="manifest_command", required=True)
    build = man_sub.add_parser("build", help="digest and calibrate a model", formatter_class=fmt)
    build.add_argument("--model", required=True)
    build.add_argument("--out", type=Path, required=True)
    build.add_argument("--sign-key", type=Path, help="PEM Ed25519 key of the publisher")
    build.add_argument("--margin", type=float, default=4.0, help="tolerance safety margin")
    check = man_sub.add_parser("verify", help="check a manifest's signature", formatter_class=fmt)
    check.add_argument("path", type=Path)
    check.add_argument("--publisher-key", required=True, help="hex Ed25519 public key")
    verdict = sub.add_parser(
        "verdict", help="check signed consensus verdicts (JSON lines)", formatter_class=fmt
    )
    verdict.add_argument("path", type=Path)
    verdict.add_argument("--client-key", help="hex Ed25519 key the verdicts must be signed by")

    models = sub.add_parser(
        "models",
        help="what the mesh offers: split models, MPC, classifiers, Fides verifiers, HE heads",
        formatter_class=fmt,
    )
    models.add_argument("--seeds", required=True, help="comma-separated host:port")
    models.add_argument("--json", action="store_true")
    _tls_flags(models)

    cls = sub.add_parser(
        "classify",
        help="classify texts or images with a mesh-hosted classifier, optionally Fides-verified",
        formatter_class=fmt,
    )
    cls.add_argument("--seeds", required=True, help="comma-separated host:port")
    cls.add_argument("--model", required=True, help="classifier name (Classify.ListModels)")
    cls.add_argument("--text", action="append", help="text to classify (repeatable)")
    cls.add_argument("--images", type=Path, help=".npy file of float images (N, 784) in [0, 1]")
    cls.add_argument("--verify", choices=["fides"], help="check the answer with Fides")
    cls.add_argument(
        "--fides-bundle", type=Path, help="the Fides client bundle (fides export-client)"
    )
    cls.add_argument("--verifier", help="verifier name on the nodes (default: --model)")
    cls.add_argument(
        "--allow-simulated",
        action="store_true",
        help="accept INSECURE simulated enclave quotes (development only)",
    )
    cls.add_argument(
        "--attestation",
        choices=["session", "request"],
        default="session",
        help="one enclave quote per session and an HMAC per result (default), or a quote per "
        "request",
    )
    cls.add_argument(
        "--protocol",
        choices=["distribution", "verdicts"],
        default="distribution",
        help="the verifiers' Fides protocol (see `node run --fides-protocol`)",
    )
    cls.add_argument("--json", action="store_true")
    _tls_flags(cls)

    fides = sub.add_parser("fides", help="Fides verifier bundles", formatter_class=fmt)
    fides_sub = fides.add_subparsers(dest="fides_command", required=True)
    export = fides_sub.add_parser(
        "export-client",
        help="write the client bundle of a full Fides directory (no verifier weights: publish "
        "this one; the full one stays with the verifier's enclave host)",
        formatter_class=fmt,
    )
    export.add_argument("full", type=Path, help="full Fides directory (with verifier.safetensors)")
    export.add_argument("out", type=Path, help="where to write the client bundle")
    export.add_argument(
        "--labels-from",
        type=Path,
        help="the service's classifier directory: its label names are published in the bundle "
        "(clients then refuse a service node that lists other names)",
    )
    prov = fides_sub.add_parser(
        "provision",
        help="send a full Fides directory SEALED to the enclave of a node's verifier slot "
        "(`node run --fides-sealed NAME=OWNER`): the enclave is attested first, and only it "
        "can read the verifier's weights (on SEV-SNP/TDX hardware)",
        formatter_class=fmt,
    )
    prov.add_argument("full", type=Path, help="full Fides directory (with verifier.safetensors)")
    prov.add_argument("--node", required=True, help="host:port of the node with the slot")
    prov.add_argument("--verifier", required=True, help="the slot's name on that node")
    prov.add_argument("--node-name", default="", help="the node's certificate name to expect")
    prov.add_argument(
        "--protocol",
        choices=["distribution", "verdicts"],
        default="distribution",
        help="what the enclave will return (see `node run --fides-protocol`)",
    )
    prov.add_argument(
        "--allow-simulated",
        action="store_true",
        help="accept a SIMULATED enclave (development only: its host can read the model)",
    )
    prov.add_argument(
        "--enrol",
        action="append",
        default=[],
        metavar="CN",
        help="a client certificate CN (of this mesh CA) the enclave will serve, sealed with "
        "the model: the enclave then refuses every other caller, its host included "
        "(repeatable; none: it answers every caller, who can relay its answers)",
    )
    prov.add_argument("--json", action="store_true")
    _tls_flags(prov)

    demo = sub.add_parser(
        "demo", help="three local nodes, two models, end to end", formatter_class=fmt
    )
    demo.add_argument("--json", action="store_true", help="print one JSON object")
    demo.add_argument(
        "--mpc", action="store_true", help="also embed under MPC (input secret-shared)"
    )
    demo.add_argument("--workdir", type=Path, help="keep certs, configs and logs here")

    from secure_infer.audit.cli import add_audit_parser

    add_audit_parser(sub)
    return parser


def node_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """`node run` flags -> `config.load` overrides (None: not given; the config file's value,
    or the default, stays). `config.load` checks every value."""
    from secure_infer import config as cfg

    return {
        "name": args.name,
        "listen": args.listen,
        "advertise": args.advertise,
        "seeds": args.seeds,
        "device": args.device,
        "data_dir": args.data_dir,
        "metrics": args.metrics,
        "insecure_dev": args.insecure_dev,
        "heartbeat_s": args.heartbeat_s,
        "dead_after_s": args.dead_after_s,
        "ca": args.ca,
        "cert": args.cert,
        "key": args.key,
        "log_format": args.log_format,
        "spans": [cfg.parse_span(s) for s in args.span] if args.span else None,
        "mpc_models": args.mpc_model,
        "classifiers": args.classifier,
        "fides_verifiers": args.fides_verifier,
        "mpc_classifiers": args.mpc_classifier,
        "enclave": args.enclave,
        "fides_protocol": args.fides_protocol,
        "fides_sealed": args.fides_sealed,
        "fides_clients": args.fides_client,
    }


def _node_run(args: argparse.Namespace) -> int:
    from secure_infer import config as cfg
    from secure_infer import daemon, logs

    config = cfg.load(args.config, node_overrides(args))
    logs.configure(config.settings.name, config.log_format)
    asyncio.run(daemon.serve(config, grace_s=args.grace, ready_file=args.ready_file))
    return 0


def _node_status(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from decentralized.client import error_from_rpc
    from decentralized.errors import PeerMisbehaved
    from decentralized.identity import MeshCA, verify_record
    from decentralized.transport import sync_channel
    from decentralized.v1 import mesh_pb2, mesh_pb2_grpc
    from secure_infer.client import credentials
    from secure_infer.services import node_service_lines, node_services

    creds = credentials(_tls(args), args.insecure_dev)
    with sync_channel(args.address, creds) as channel:
        try:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5.0
            )
            info = mesh_pb2_grpc.MeshStub(channel).GetInfo(mesh_pb2.GetInfoRequest(), timeout=5.0)
            peers = mesh_pb2_grpc.MeshStub(channel).ListPeers(
                mesh_pb2.ListPeersRequest(), timeout=5.0
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, args.address) from None
        hosted = node_services(channel, args.address)
    ca = MeshCA.of(creds)
    rec = verify_record(info.record, ca=ca)  # the node's own: refused, the command fails
    peer_recs, refused = [], []
    for signed in peers.records:  # a peer's bad record is reported, not fatal
        try:
            peer_recs.append(verify_record(signed, ca=ca))
        except PeerMisbehaved as exc:
            refused.append(str(exc))
    doc = {
        "address": rec.address,
        "name": rec.name,
        "node_id": rec.node_id,
        "health": health_pb2.HealthCheckResponse.ServingStatus.Name(health.status),
        "device": rec.device,
        "version": rec.version,
        "uptime_s": round(info.uptime_s, 1),
        "load": rec.load,
        "layers_per_s": round(rec.layers_per_s, 1),
        "requests_total": info.requests_total,
        "errors_total": info.errors_total,
        "sessions": info.sessions,
        "draining": info.draining,
        "insecure_dev": rec.insecure_dev,
        "spans": [
            {"model": s.model, "start": s.start, "end": s.end, "weight_digest": s.weight_digest}
            for s in rec.spans
        ],
        "peers": [
            {
                "name": p.name,
                "node_id": p.node_id,
                "address": p.address,
                "spans": [f"{s.model}[{s.start},{s.end})" for s in p.spans],
            }
            for p in peer_recs
            if p.node_id != rec.node_id
        ],
        "refused_peer_records": refused,
        "mpc_models": list(rec.mpc_models),
        **hosted,
    }
    if args.json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return 0
    out = [
        f"node      {doc['name']} ({rec.node_id})",
        f"address   {doc['address']}   health {doc['health']}   device {doc['device']}",
        f"uptime    {doc['uptime_s']} s   requests {doc['requests_total']}   "
        f"errors {doc['errors_total']}   sessions {doc['sessions']}   load {doc['load']}",
        f"version   {doc['version']}" + ("   INSECURE-DEV" if rec.insecure_dev else ""),
        "spans:",
    ]
    out += [
        f"  {s['model']} [{s['start']}, {s['end']})  sha256 {s['weight_digest'][:16]}..."
        for s in doc["spans"]
    ]
    if doc["mpc_models"]:
        out.append(f"mpc models: {', '.join(doc['mpc_models'])}")
    out += node_service_lines(doc)
    out.append(f"peers ({len(doc['peers'])}):")
    out += [f"  {p['name']:<10} {p['address']:<22} {', '.join(p['spans'])}" for p in doc["peers"]]
    out += [f"  refused: {why}" for why in refused]
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def _certs(args: argparse.Namespace) -> int:
    from secure_infer import certs

    if args.certs_command == "init":
        path = certs.init_ca(args.dir, overwrite=args.force)
        sys.stdout.write(f"created mesh CA {path} (keep {args.dir / 'ca.key'} private)\n")
        return 0
    hosts = tuple(args.host) if args.host else ("127.0.0.1", "localhost", "::1")
    mat = certs.issue(
        args.dir, args.name, role=args.role, hosts=hosts, valid_days=args.days, overwrite=args.force
    )
    sys.stdout.write(f"issued {args.role} certificate {mat.cert} and key {mat.key}\n")
    return 0


def _infer(args: argparse.Namespace) -> int:
    from decentralized.models import get_spec
    from secure_infer import logs
    from secure_infer.client import Client

    logs.configure("client", "text", level=30)
    spec = get_spec(args.model)
    seeds = [s for s in args.seeds.split(",") if s]
    verify: dict[str, Any] = {}
    if args.verify:
        from decentralized.consensus import ConsensusOptions

        verify = {
            "verify": args.verify,
            "consensus": ConsensusOptions(
                k=args.k,
                max_replicas=max(args.k + 1, 4),
                manifest=args.manifest,
                publisher_key=bytes.fromhex(args.publisher_key) if args.publisher_key else None,
                verdict_log=args.verdict_log,
                candidates=tuple(n for n in (args.candidates or "").split(",") if n),
            ),
        }
    with Client(
        seeds, tls=_tls(args), insecure_dev=args.insecure_dev, hop_timeout_s=args.timeout
    ) as client:
        if spec.task == "embed":
            if not args.text:
                raise SystemExit("error: --text is required for an embedding model")
            res = client.embed(args.model, args.text, **verify)
            doc: dict[str, Any] = {
                "model": args.model,
                "embeddings": res.embeddings.tolist(),
                "timings": res.timings,
            }
            route, privacy, consensus = res.route, res.privacy, res.consensus
        else:
            if not args.prompt:
                raise SystemExit("error: --prompt is required for a generation model")
            if not args.json:
                for ev in client.generate_stream(
                    args.model, args.prompt, max_new_tokens=args.max_new_tokens, **verify
                ):
                    sys.stdout.write(ev.text)
                    sys.stdout.flush()
                    if ev.result is not None:
                        gen = ev.result
                sys.stdout.write("\n")
            else:
                gen = client.generate(
                    args.model, args.prompt, max_new_tokens=args.max_new_tokens, **verify
                )
            doc = {
                "model": args.model,
                "text": gen.text,
                "token_ids": list(gen.token_ids),
                "timings": gen.timings,
                "finish_reason": gen.finish_reason,
            }
            route, privacy, consensus = gen.route, gen.privacy, gen.consensus
    if consensus is not None:
        doc["consensus"] = consensus_dict(consensus)
    doc["route"] = [
        {
            "node": h.name,
            "node_id": h.node_id,
            "layers": [h.start, h.end],
            "weight_digest": h.weight_digest,
        }
        for h in route
    ]
    doc["privacy"] = {
        "mode": privacy.mode,
        "channel": privacy.channel,
        "node_views": list(privacy.node_views),
        "caveats": list(privacy.caveats),
    }
    if args.json:
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        if spec.task == "embed":
            for text, vec in zip(args.text, doc["embeddings"], strict=True):
                sys.stdout.write(
                    f"{text[:40]!r:<44} [{', '.join(f'{v:+.4f}' for v in vec[:6])}, ...]\n"
                )
        sys.stdout.write(str(privacy) + "\n")
        if consensus is not None:
            sys.stdout.write(consensus_text(consensus) + "\n")
    return 0


def consensus_dict(report: Any) -> dict[str, Any]:
    """A ConsensusReport as JSON-ready data (verdicts by id; the log has them in full)."""
    return {
        "checked": report.checked,
        "k": report.k,
        "manifest": report.manifest,
        "threat_model": report.threat_model,
        "spans": [
            {
                "layers": [s.start, s.end],
                "tolerance": s.tolerance,
                "replicas": list(s.replicas),
                "max_agreeing_distance": s.max_agreeing_distance,
                "escalations": s.escalations,
                "convicted": list(s.convicted),
                "faults": list(s.faults),
            }
            for s in report.spans
        ],
        "verdicts": [v.id for v in report.verdicts],
        "refused": report.refused,
    }


def consensus_text(report: Any) -> str:
    lines = [f"consensus: k={report.k}, manifest {report.manifest}"]
    for s in report.spans:
        lines.append(
            f"  layers [{s.start}, {s.end}): {', '.join(s.replicas)} agree within "
            f"{s.max_agreeing_distance:.1e} (tolerance {s.tolerance:.1e})"
            + (f"; CONVICTED {', '.join(s.convicted)}" if s.convicted else "")
            + (f"; {len(s.faults)} fault(s)" if s.faults else "")
        )
    for name, why in sorted(report.refused.items()):
        lines.append(f"  refused {name}: {why}")
    lines.append(f"threat model: {report.threat_model}")
    return "\n".join(lines)


def _manifest(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from verification.consensus import Manifest

    if args.manifest_command == "verify":
        m = Manifest.load(args.path, publisher_key=bytes.fromhex(args.publisher_key))
        sys.stdout.write(
            f"OK: {m.model}, {m.num_layers} layers, {len(m.tolerances)} span tolerances, "
            f"signed by {m.publisher_key.hex()}\n"
        )
        return 0
    from decentralized.models.calibrate import build_manifest

    manifest = build_manifest(args.model, margin=args.margin)
    if args.sign_key is not None:
        key = serialization.load_pem_private_key(args.sign_key.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{args.sign_key}: expected an Ed25519 private key")
        manifest = manifest.sign(key)
    manifest.save(args.out)
    worst = max(t.value for t in manifest.tolerances.values())
    sys.stdout.write(
        f"wrote {args.out}: {manifest.num_layers} layer digests, {len(manifest.tolerances)} "
        f"span tolerances (largest {worst:.2e}), "
        + (f"signed by {manifest.publisher_key.hex()}" if manifest.signed else "UNSIGNED")
        + "\n"
    )
    return 0


def _verdicts(args: argparse.Namespace) -> int:
    """Check every verdict of a JSON-lines file; one line of output per verdict, exit 1 if
    any is refused (a refused one does not stop the others from being checked)."""
    from verification.consensus import InvalidVerdict, verify_verdict

    pinned = bytes.fromhex(args.client_key) if args.client_key else None
    verified = refused = 0
    for number, line in enumerate(args.path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            v = verify_verdict(line, client_key=pinned)
        except InvalidVerdict as exc:
            refused += 1
            sys.stdout.write(f"REFUSED line {number}: {exc}\n")
            continue
        verified += 1
        who = ", ".join(n[:8] for n in v.convicted) or "nobody (undecided)"
        sys.stdout.write(
            f"OK line {number} {v.id[:12]}: {v.model} [{v.start}, {v.end}) epoch {v.epoch}, "
            f"{len(v.receipts)} receipts, convicted {who}"
            + (", evidence checked" if v.evidence else ", digests only")
            + "\n"
        )
    sys.stdout.write(
        f"{verified} verdict(s) verified" + (f", {refused} refused" if refused else "") + "\n"
    )
    return _EXIT_ERROR if refused else 0


def _models(args: argparse.Namespace) -> int:
    from secure_infer import logs
    from secure_infer.client import Client
    from secure_infer.services import service_lines

    logs.configure("client", "text", level=30)
    seeds = [s for s in args.seeds.split(",") if s]
    with Client(seeds, tls=_tls(args), insecure_dev=args.insecure_dev) as client:
        doc = client.services()
    if args.json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        sys.stdout.write("\n".join(service_lines(doc)) + "\n")
    return 0


def _classify(args: argparse.Namespace) -> int:
    from secure_infer import logs
    from secure_infer.classify_client import result_dict
    from secure_infer.client import Client
    from secure_infer.fides_client import FidesOptions

    logs.configure("client", "text", level=30)
    if (args.text is None) == (args.images is None):
        raise SystemExit("error: give --text (repeatable) or --images FILE.npy")
    inputs: Any = args.text
    if args.images is not None:
        import numpy as np

        inputs = np.load(args.images, allow_pickle=False)
    options = None
    if args.verify:
        if args.fides_bundle is None:
            raise SystemExit("error: --verify fides needs --fides-bundle DIR")
        options = FidesOptions(
            bundle=args.fides_bundle,
            verifier=args.verifier,
            allow_simulated=args.allow_simulated,
            attestation=args.attestation,
            protocol=args.protocol,
        )
    seeds = [s for s in args.seeds.split(",") if s]
    with Client(seeds, tls=_tls(args), insecure_dev=args.insecure_dev) as client:
        res = client.classify(args.model, inputs, privacy="none", verify=args.verify, fides=options)
    doc = result_dict(res)
    if args.json:
        sys.stdout.write(json.dumps(doc) + "\n")
        return 0
    out = [f"model {res.model} on node {res.node_name} ({res.node_id[:8]})"]
    for i, ex in enumerate(doc["examples"]):
        line = f"  [{i}] service label {ex['label']}"
        if "attacked" in ex:
            verdict = "ATTACK FLAGGED" if ex["attacked"] else "ok"
            if ex["score"] is None:  # protocol "verdicts": the enclave reveals only the verdict
                line += f"   fides: {verdict} (judged in the enclave)"
            elif ex.get("exact"):  # escalated: compared with the enclave's recomputation
                line += f"   fides: {verdict} (checked exactly: the enclave recomputed it)"
            else:
                line += f"   fides: {verdict} (score {ex['score']:+.2f} vs {ex['threshold']:+.2f})"
            if ex["reclassified"] is not None:
                line += f" -> re-classified {ex['reclassified']}"
        out.append(line)
    if res.quote is not None:
        out.append(f"TEE: {res.quote}")
        if res.quote.simulated:
            out.append(
                "WARNING: the TEE is SIMULATED (insecure): its quote proves nothing about "
                "isolation or which code ran"
            )
    out.append(str(res.privacy))
    if res.threat_model:
        out.append(f"threat model: {res.threat_model}")
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def _fides_export(args: argparse.Namespace) -> int:
    from secure_infer.fides_client import export_client_bundle, published_measurement
    from verification.fides import ModelFormatError

    try:
        labels = None
        if args.labels_from is not None:
            from verification.fides.service_model import load_classifier

            labels = load_classifier(args.labels_from).labels
        out = export_client_bundle(args.full, args.out, labels)
    except ModelFormatError as exc:
        sys.stderr.write(f"ModelFormatError: {exc}\n")
        return _EXIT_ERROR
    sys.stdout.write(f"client bundle written to {out} (no verification model weights)\n")
    for protocol in ("distribution", "verdicts"):
        pinned = published_measurement(out, protocol)
        assert pinned is not None  # noqa: S101 - a fresh export records both
        sys.stdout.write(f"enclave measurement clients pin (protocol {protocol}): {pinned.hex()}\n")
    return 0


def _fides_provision(args: argparse.Namespace) -> int:
    from secure_infer import logs
    from secure_infer.fides_provision import provision_verifier
    from verification.fides import ModelFormatError

    logs.configure("client", "text", level=30)
    try:
        result = provision_verifier(
            args.node,
            args.verifier,
            args.full,
            protocol=args.protocol,
            tls=_tls(args),
            insecure_dev=args.insecure_dev,
            node_name=args.node_name,
            allow_simulated=args.allow_simulated,
            enrol=tuple(args.enrol),
        )
    except ModelFormatError as exc:
        sys.stderr.write(f"ModelFormatError: {exc}\n")
        return _EXIT_ERROR
    if args.json:
        doc = {
            "verifier": result.verifier,
            "node_id": result.node_id,
            "protocol": result.protocol,
            "measurement": result.measurement.hex(),
            "platform": result.platform,
            "simulated": result.simulated,
            "pinning": result.pinning,
            "model_bytes": result.model_bytes,
            "seconds": round(result.seconds, 3),
            "enrolled": list(result.enrolled),
        }
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        sys.stdout.write(result.summary() + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from secure_infer import __version__

        sys.stdout.write(f"secure-infer {__version__}\n")
        return 0
    if args.command is None:
        parser.print_help()
        return _EXIT_USAGE
    from secure_infer.errors import (
        AttestationError,
        CertError,
        ConfigError,
        ConsensusError,
        MeshError,
    )

    try:
        if args.command == "node" and args.node_command == "run":
            return _node_run(args)
        if args.command == "node":
            return _node_status(args)
        if args.command == "certs":
            return _certs(args)
        if args.command == "infer":
            return _infer(args)
        if args.command == "models":
            return _models(args)
        if args.command == "classify":
            return _classify(args)
        if args.command == "manifest":
            return _manifest(args)
        if args.command == "verdict":
            return _verdicts(args)
        if args.command == "fides" and args.fides_command == "provision":
            return _fides_provision(args)
        if args.command == "fides":
            return _fides_export(args)
        if args.command == "demo":
            from secure_infer.demo import run_demo

            return run_demo(json_output=args.json, workdir=args.workdir, mpc=args.mpc)
        if args.command == "audit":
            from secure_infer.audit.cli import run_audit

            return run_audit(args)
    except (
        MeshError,
        AttestationError,
        ConsensusError,
        CertError,
        ConfigError,
        ValueError,
        OSError,
    ) as exc:
        sys.stderr.write(f"{type(exc).__name__}: {exc}\n")
        return _EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    parser.print_help()
    return _EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
