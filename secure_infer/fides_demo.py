"""The `verify="fides"` part of `secure-infer demo`: a verified classification on the mesh.

The lead wires it into the demo: the mesh must include a node started with
`node_args(artefacts)["service"]` (the MNIST classifier) and one with
`node_args(artefacts)["verifier"]` (the Fides verifier in an enclave; SIMULATED and INSECURE
unless the node runs in an SEV-SNP/TDX guest with configfs-tsm), e.g.

    artefacts = build_artefacts()
    args = node_args(artefacts)
    NodeSpec(name="node-c", extra_args=args["service"] + args["verifier"])

`run_fides_demo(client, mesh, artefacts, judge=...)` then classifies held-out MNIST images with
`verify="fides"`, shows that simulated evidence is refused without the opt-in, and shows what
Fides does with a dishonest answer. No node of the demo is dishonest: the attack is applied on
the client to the honest service's returned distribution (Fides' top-1/top-2 swap) and judged
against the enclave's attested distribution, and the report says so. The "judge" node's
verifier (protocol "verdicts") is provisioned by the client sealed to its attested enclave
(`secure_infer.fides_provision`). The real-mesh attacks (dishonest node processes) are in
tests/fides_mesh.
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch

from secure_infer.classify_client import result_dict
from secure_infer.client import Client
from secure_infer.errors import SimulatedNotAllowed
from secure_infer.fides_client import FidesOptions, client_bundle, published_measurement
from secure_infer.fides_provision import provision_verifier
from secure_infer.localmesh import LocalMesh
from verification.fides import FidesVerifier
from verification.fides.artefacts import SCALES, build
from verification.fides.attacks import swap_top2
from verification.fides.experiment import prepare_mnist
from verification.fides.verifier import Recomputed

MODEL = "mnist"
N_IMAGES = 32
LATENCY_PAIRS = 9  # plain and verified requests timed in the demo (medians reported)
OWNER = "client"  # the CN of the demo client's certificate: it owns the judge's slot


def build_artefacts(scale: str = "test") -> Path:
    """Train or reuse the MNIST service model and its Fides bundle (see `artefacts`)."""
    return build("mnist", scale)


def node_args(artefacts: Path) -> dict[str, tuple[str, ...]]:
    """`node run` flags: "service" hosts the classifier, "verifier" the enclaved verifier
    (read from the node's disk), "judge" a slot whose verifier the client provisions sealed to
    the enclave (`run_fides_demo` does, for protocol "verdicts": the enclave judges and never
    reveals the verifier's distribution; the node never reads the verifier's weights). Both
    verifiers answer the demo client's certificate only (`--fides-client`): a verifier open to
    every mesh client lets the service's operator relay its answers as its own."""
    enrol = ("--fides-client", f"{MODEL}={OWNER}")  # the only certificate they answer
    return {
        "service": ("--classifier", f"{MODEL}={artefacts / 'service'}"),
        "verifier": ("--fides-verifier", f"{MODEL}={artefacts / 'fides'}", *enrol),
        "judge": ("--fides-sealed", f"{MODEL}={OWNER}", *enrol),
    }


def run_fides_demo(
    client: Client, mesh: LocalMesh, artefacts: Path, judge: str, scale: str = "test"
) -> dict[str, Any]:
    """Run the demo's Fides steps on a running mesh; returns a JSON-able report. `judge` is the
    node started with `node_args(...)["judge"]`: the client provisions its slot first.

    `scale` must be the one `artefacts` was built with ("test": seconds to train, weaker;
    "full": the bench's configuration, ~5 min to train on first use)."""
    data = prepare_mnist(SCALES["mnist"][scale])
    x, y = data.inputs["test"][:N_IMAGES], data.labels["test"][:N_IMAGES].numpy()
    options = FidesOptions(bundle=client_bundle(artefacts / "fides"), allow_simulated=True)
    client.classify(MODEL, x.numpy(), verify="fides", fides=options)  # warm-up: cold enclave
    walls: dict[str, list[float]] = {"plain": [], "fides": []}
    for _ in range(LATENCY_PAIRS):  # alternating; bench/fides_mesh.py measures properly
        plain = client.classify(MODEL, x.numpy(), privacy="none")
        res = client.classify(MODEL, x.numpy(), verify="fides", fides=options)
        walls["plain"].append(plain.timings["total_s"])
        walls["fides"].append(res.timings["total_s"])
    try:
        client.classify(
            MODEL, x[:2].numpy(), verify="fides", fides=FidesOptions(bundle=options.bundle)
        )
        refused = "accepted (the verifier runs on real TEE hardware)"
    except SimulatedNotAllowed as exc:
        refused = f"refused: {type(exc).__name__}: {exc}"
    fides = FidesVerifier.load(options.bundle)
    honest = res.probs.argmax(1)
    recomputed = None if res.recomputed is None else Recomputed(*res.recomputed)
    attacked = fides.judge(swap_top2(torch.from_numpy(res.probs)), res.verifier_probs, recomputed)
    hits = [v.reclassified_label == int(honest[i]) for i, v in enumerate(attacked) if v.attacked]
    provisioned = provision_verifier(
        mesh.nodes[judge].address,
        MODEL,
        artefacts / "fides",
        protocol="verdicts",
        tls=mesh.client_tls(),
        insecure_dev=mesh.insecure_dev,
        node_name=judge,
        allow_simulated=True,
        enrol=(OWNER,),  # the enclave itself then serves the demo client only
    )
    judged = client.classify(
        MODEL, x.numpy(), verify="fides", fides=dataclasses.replace(options, protocol="verdicts")
    )
    report = result_dict(res)
    report.update(
        {
            "examples": report["examples"][:5],  # the full list is long; the rates say the rest
            "mesh_nodes": {name: node.address for name, node in mesh.nodes.items()},
            "n_images": len(x),
            "service_accuracy": float(np.mean(res.predictions == y)),
            "clean_flagged_fraction": float(np.mean([c.attacked for c in res.checks])),
            # escalation: the enclave recomputed the service model on the verifier's least sure
            # images, and those answers were checked exactly against the recomputation
            "checked_exactly": int(sum(bool(c.exact) for c in res.checks)),
            "latency_ms_median": {  # of LATENCY_PAIRS alternating requests each
                mode: round(1000 * statistics.median(values), 2) for mode, values in walls.items()
            },
            "without_opt_in": refused,
            "verdicts_protocol": {
                "note": "the enclave on the judge node judged the service's answer and returned "
                "only flags and re-classified labels; the verifier's distribution stayed sealed",
                "verifier_node": judged.quote.verifier_node if judged.quote else None,
                "distribution_revealed": judged.verifier_probs is not None,
                # of the rows: the same verdicts as the client judging the same answers, but
                # for rows either enclave audited at random (checked exactly there)
                "verdicts_agreement": float(
                    np.mean(
                        [
                            a.attacked == b.attacked
                            for a, b in zip(judged.checks, res.checks, strict=True)
                        ]
                    )
                ),
                "latency_ms": round(1000 * judged.timings["total_s"], 2),
                "provisioned_sealed": {
                    "note": "the client attested the judge's enclave and sent the verifier "
                    "sealed to it; the node never read the weights"
                    + (
                        " (SIMULATED enclave: its host COULD read them from the process)"
                        if provisioned.simulated
                        else ""
                    ),
                    "simulated": provisioned.simulated,
                    "enrolled_clients": list(provisioned.enrolled),
                    "enrolment_checked_in_enclave": "checked inside the attested enclave"
                    in judged.threat_model,
                    "bytes": provisioned.model_bytes,
                    "seconds": round(provisioned.seconds, 3),
                    "measurement_is_the_published_one": provisioned.measurement
                    == published_measurement(options.bundle, "verdicts"),
                },
            },
            "client_side_swap_attack": {
                "note": "top-1/top-2 swap applied ON THE CLIENT to the honest service's answer "
                "(no demo node is dishonest); judged against the enclave's attested output",
                "detection_rate": len(hits) / len(attacked),
                "reclassified_to_honest_label": float(np.mean(hits)) if hits else None,
            },
        }
    )
    return report
