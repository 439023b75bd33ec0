"""What a node, or the whole mesh, offers a client: discovery for `node status`,
`secure-infer models` and `Client.services()`.

Node records (gossiped, signed) carry only the spans and MPC models a node serves; classifiers,
Fides verifiers, sealed verifier slots and HE heads are asked of each node (`Classify.ListModels`,
`HE.ListHeads`, over mTLS). Everything here is what the nodes SAY they serve: a span's weight
digest is checked only under `verify="consensus"`, a verifier's measurement only when a client
checks its quote, and "sealed by OWNER" is the node's word (the measurement is the same as a
load from disk).
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from decentralized.client import error_from_rpc
from decentralized.errors import MeshError, UnknownModel
from decentralized.models import get_spec
from decentralized.v1 import classify_pb2, classify_pb2_grpc, common_pb2, he_pb2, he_pb2_grpc

MPC_PARTIES = 3  # two computing parties and the dealer: mpc_worker.WORLD_SIZE (imports CrypTen)
_TIMEOUT_S = 5.0


def node_services(channel: grpc.Channel, address: str) -> dict[str, Any]:
    """What one node serves beyond its record: classifiers, Fides verifiers and sealed slots
    (`Classify.ListModels`), HE heads (`HE.ListHeads`); a service the node does not run is
    empty. Other gRPC errors raise the mesh's domain errors."""

    def ask(call: Any, request: Any) -> Any:
        try:
            return call(request, timeout=_TIMEOUT_S)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:  # type: ignore[attr-defined]
                return None
            raise error_from_rpc(exc, address) from None

    models = ask(
        classify_pb2_grpc.ClassifyStub(channel).ListModels, classify_pb2.ListModelsRequest()
    )
    heads = ask(he_pb2_grpc.HEStub(channel).ListHeads, he_pb2.ListHeadsRequest())
    models = models or classify_pb2.ListModelsReply()
    return {
        "classifiers": [
            {
                "name": c.name,
                "input_kind": c.input_kind,
                "n_classes": len(c.labels),
                "arch": c.arch,
                "digest": c.digest,
            }
            for c in models.classifiers
        ],
        "verifiers": [
            {
                "name": v.name,
                "task": v.task,
                "n_classes": v.n_classes,
                "protocol": v.protocol or "distribution",
                "platform": v.platform,
                "simulated": v.simulated,
                "measurement": v.measurement.hex(),
                "sealed_owner": v.sealed_owner,
                "enrolled_only": v.enrolled_only,
            }
            for v in models.verifiers
        ],
        "verifier_slots": [
            {"name": v.name, "owner": v.owner, "platform": v.platform, "simulated": v.simulated}
            for v in models.slots
        ],
        "he_heads": [
            {"name": h.name, "input_kind": h.input_kind, "layers": list(h.layers)}
            for h in (heads.heads if heads is not None else ())
        ],
    }


def split_coverage(model: str, records: Iterable[common_pb2.NodeRecord]) -> dict[str, Any]:
    """How the live nodes cover `model`'s layers: whether a chain of spans exists and, per
    layer, how many nodes serve it (`verify="consensus"` with k replicas needs k on every
    layer; the client plans the actual chains)."""
    try:
        n_layers = get_spec(model).num_layers
    except UnknownModel:
        n_layers = 0
    spans = [(rec.name, s.start, s.end) for rec in records for s in rec.spans if s.model == model]
    replicas = [
        sum(1 for _, start, end in spans if start <= layer < end) for layer in range(n_layers)
    ]
    return {
        "layers": n_layers,
        "covered": bool(replicas) and min(replicas) > 0,
        "replicas_min": min(replicas) if replicas else 0,
        "spans": [f"{name}[{start},{end})" for name, start, end in sorted(spans)],
    }


def mesh_services(records: list[common_pb2.NodeRecord], channel_of: Any) -> dict[str, Any]:
    """Every live node's offer, grouped by what a client can ask for. `channel_of(record)`
    gives a channel to a node; a node that does not answer is listed under `unreachable`."""
    nodes, unreachable = [], {}
    split: dict[str, Any] = {}
    mpc: dict[str, list[str]] = {}
    classifiers: dict[str, dict[str, Any]] = {}
    verifiers: dict[str, list[dict[str, Any]]] = {}
    slots: dict[str, list[dict[str, Any]]] = {}
    heads: dict[str, dict[str, Any]] = {}
    ordered = sorted(records, key=lambda r: r.name)

    def ask(rec: common_pb2.NodeRecord) -> dict[str, Any] | MeshError:
        try:
            return node_services(channel_of(rec), rec.address)
        except MeshError as exc:
            return exc

    # Every node at once: one that does not answer costs its timeout once, not once per node.
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(ordered)))) as pool:
        offers = list(pool.map(ask, ordered))
    for rec, offer in zip(ordered, offers, strict=True):
        nodes.append(
            {
                "name": rec.name,
                "address": rec.address,
                "node_id": rec.node_id,
                "device": rec.device,
                "load": rec.load,
                "insecure_dev": rec.insecure_dev,
            }
        )
        for model in rec.mpc_models:
            mpc.setdefault(model, []).append(rec.name)
        if isinstance(offer, MeshError):
            unreachable[rec.name] = f"{type(offer).__name__}: {offer}"
            continue
        for c in offer["classifiers"]:
            entry = classifiers.setdefault(c["name"], {**c, "nodes": []})
            entry["nodes"].append(rec.name)
            if entry["digest"] != c["digest"]:
                entry["digests_differ"] = True  # same name, other weights: pin a node
        for v in offer["verifiers"]:
            verifiers.setdefault(v["name"], []).append({"node": rec.name, **v})
        for v in offer["verifier_slots"]:
            slots.setdefault(v["name"], []).append({"node": rec.name, **v})
        for h in offer["he_heads"]:
            heads.setdefault(h["name"], {**h, "nodes": []})["nodes"].append(rec.name)
    for model in sorted({s.model for rec in records for s in rec.spans}):
        split[model] = split_coverage(model, records)
    return {
        "nodes": nodes,
        "unreachable": unreachable,
        "split": split,
        "mpc": {
            model: {"nodes": names, "ready": len(names) >= MPC_PARTIES, "use": _mpc_use(model)}
            for model, names in sorted(mpc.items())
        },
        "classifiers": classifiers,
        "fides_verifiers": verifiers,
        "fides_slots": slots,
        "he_heads": heads,
    }


def _mpc_use(model: str) -> str:
    """Registry models run embed / generate under MPC; other names are MPC classifiers
    (`node run --mpc-classifier`), which nodes list in their records the same way."""
    try:
        get_spec(model)
    except UnknownModel:
        return "classify"
    return "embed/generate"


def _audience(v: dict[str, Any]) -> str:
    """Who may query a verifier: anyone on the mesh can relay an open one's answers."""
    return "enrolled clients only" if v.get("enrolled_only") else "open to every mesh client"


def _tee(v: dict[str, Any]) -> str:
    """A verifier's or slot's enclave, SIMULATED said loudly."""
    return "SIMULATED enclave (insecure)" if v["simulated"] else f"{v['platform']} enclave"


def node_service_lines(doc: dict[str, Any]) -> list[str]:
    """`node_services`' answer as text (`secure-infer node status`)."""
    out = []
    if doc["classifiers"]:
        out.append("classifiers:")
        out += [
            f"  {c['name']:<16} {c['input_kind']:<6} {c['arch']}  sha256 {c['digest'][:16]}..."
            for c in doc["classifiers"]
        ]
    if doc["verifiers"]:
        out.append("fides verifiers:")
        for v in doc["verifiers"]:
            how = f"sealed by {v['sealed_owner']}" if v["sealed_owner"] else "loaded from disk"
            out.append(
                f"  {v['name']:<16} {v['task']:<6} protocol {v['protocol']}, {_tee(v)}, "
                f"{how}, {_audience(v)}, measurement {v['measurement'][:16]}..."
            )
    if doc["verifier_slots"]:
        out.append("fides verifier slots (awaiting their sealed model):")
        out += [
            f"  {v['name']:<16} owner {v['owner']:<12} {_tee(v)}" for v in doc["verifier_slots"]
        ]
    if doc["he_heads"]:
        out.append("he heads:")
        out += [
            f"  {h['name']:<16} {h['input_kind']:<16} {', '.join(h['layers'])}"
            for h in doc["he_heads"]
        ]
    return out


def service_lines(doc: dict[str, Any], nodes: bool = True) -> list[str]:
    """`mesh_services`' answer as text (`secure-infer models`); `nodes=False` leaves out the
    list of nodes (not the ones that did not answer)."""
    out = [f"nodes ({len(doc['nodes'])}):"] if nodes else []
    out += [
        f"  {n['name']:<12} {n['address']:<22} {n['device']}"
        + ("   INSECURE-DEV" if n["insecure_dev"] else "")
        for n in (doc["nodes"] if nodes else ())
    ]
    out += [f"  {name:<12} did not answer: {why}" for name, why in doc["unreachable"].items()]
    if doc["split"]:
        out.append('split inference (embed / generate; verify="consensus" needs k replicas):')
        for model, s in doc["split"].items():
            state = (
                f"covered, >= {s['replicas_min']} node(s) per layer"
                if s["covered"]
                else "NOT covered (some layers have no node)"
            )
            out.append(f"  {model:<24} {s['layers']:>2} layers  {state}: {' '.join(s['spans'])}")
    if doc["mpc"]:
        out.append(f'MPC (privacy="mpc": {MPC_PARTIES} nodes, one of them the TRUSTED dealer):')
        out += [
            f"  {model:<24} {m['use']:<15} {' '.join(m['nodes'])}"
            + ("" if m["ready"] else "  (too few nodes)")
            for model, m in doc["mpc"].items()
        ]
    if doc["classifiers"]:
        out.append("classifiers (classify):")
        out += [
            f"  {name:<24} {c['input_kind']:<6} {c['n_classes']} classes  {' '.join(c['nodes'])}"
            + ("  (nodes hold different weights)" if c.get("digests_differ") else "")
            for name, c in doc["classifiers"].items()
        ]
    if doc["fides_verifiers"]:
        out.append('Fides verifiers (verify="fides"):')
        for name, hosts in doc["fides_verifiers"].items():
            for v in hosts:
                how = f", sealed by {v['sealed_owner']}" if v["sealed_owner"] else ""
                out.append(
                    f"  {name:<24} {v['node']:<12} protocol {v['protocol']}, {_tee(v)}{how}, "
                    f"{_audience(v)}"
                )
    if doc["fides_slots"]:
        out.append("Fides verifier slots awaiting their owner's sealed model:")
        out += [
            f"  {name:<24} {v['node']:<12} owner {v['owner']}"
            for name, hosts in doc["fides_slots"].items()
            for v in hosts
        ]
    if doc["he_heads"]:
        out.append('HE heads (classify privacy="he"):')
        out += [
            f"  {name:<24} {h['input_kind']:<18} {' '.join(h['nodes'])}"
            for name, h in doc["he_heads"].items()
        ]
    return out
