"""Request latency through the mesh with and without `verify="fides"` (issue 5: <= 10 % added).

    .venv/bin/python bench/fides_mesh.py --json [--scale full] [--requests 40] [--batches 1,64]
        [--pin] [--protocol distribution|verdicts] [--enrolled] [--no-escalation]

Starts a local mesh of real node processes over mTLS: `service` hosts the MNIST service CNN as
a plaintext classifier, `verifier` hosts the Fides verification model in a SIMULATED enclave
(INSECURE; a hardware TEE adds its own quote cost, not measured here). The artefacts come from
`verification.fides.artefacts` ("full" = the bench/integrity.py configuration, trained on
first use, ~5 min; "test" = the small test configuration). For each batch size, requests
rotate between plain (`privacy="none"`) and verified (`verify="fides"`) classification of the
same held-out images (request i sends the i-th batch of the test split, the same in every mode,
so that escalated images come at their rate), after warm-up, the verified ones in both
attestation modes ("session": one quote per session, an HMAC per result, the SDK's default;
"request": a quote per request);
reported: median wall time per request of each, the added latency (ratio - 1), and the
verified request's parts (service RPC, verifier RPC, local checks + detector). One JSON object
on stdout. Wall times on a shared CPU are noisy.

`--pin` pins the service node's process to CPU 0 and the verifier node's process and its
enclave child to CPU 1 (every thread, `sched_setaffinity`), leaving the client unpinned: the
two nodes then stop competing for one core, as they would not on separate machines; the
client still shares both cores with them.

`--protocol verdicts` runs the verifier node with `--fides-protocol verdicts`: the enclave
judges and returns only verdicts, at the cost of a second call to it once the service has
answered (docs/fides.md).

MNIST bundles escalate (docs/fides.md: the enclave recomputes the service model on the
verifier's least sure ~5 % of images): medians hide what that costs the requests it hits, so
means are reported too (`added_latency_of_means`). `--no-escalation` runs the same trained
models with escalation turned off (the detector alone, with its own threshold): the reference.

`--enrolled` provisions the verifier sealed (`--fides-sealed`, `fides_provision`) with an
enrolment of the bench's client (`tee.enrolment`): its sessions then carry a request MAC and
encrypted answers, and per-request quotes are refused (only "session" is measured).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from secure_infer.client import Client  # noqa: E402
from secure_infer.fides_client import ATTESTATIONS, FidesOptions, client_bundle  # noqa: E402
from secure_infer.fides_provision import provision_verifier  # noqa: E402
from secure_infer.localmesh import LocalMesh, NodeSpec  # noqa: E402
from secure_infer.results import ClassificationResult  # noqa: E402
from verification.fides.artefacts import SCALES, build  # noqa: E402
from verification.fides.experiment import prepare_mnist  # noqa: E402

TARGET_ADDED = 0.10  # issue 5: verification adds <= 10 % to request latency


def _median_ms(values: list[float]) -> float:
    return round(1000 * statistics.median(values), 3)


def measure(
    client: Client,
    batches: list[torch.Tensor],
    options: FidesOptions,
    requests: int,
    attestations: tuple[str, ...] = ATTESTATIONS,
) -> dict[str, Any]:
    """Rotating plain and verified requests (in each attestation mode); request i sends
    `batches[i % len(batches)]` in every mode (so that an escalating verifier meets its
    escalated images at their rate, which one batch sent again and again would not show)."""
    modes = {m: dataclasses.replace(options, attestation=m) for m in attestations}

    def once(mode: str, x: torch.Tensor) -> ClassificationResult:
        if mode == "plain":
            return client.classify("mnist", x.numpy(), privacy="none")
        return client.classify("mnist", x.numpy(), verify="fides", fides=modes[mode])

    order = ["plain", *attestations]
    for _ in range(3):  # warm-up: catalog, channels, sessions, first forwards
        for mode in order:
            once(mode, batches[0])
    wall: dict[str, list[float]] = {m: [] for m in order}
    parts = {
        m: {"service_s": [], "verifier_s": [], "check_s": [], "judge_call_s": []}
        for m in attestations
    }
    flagged = exact = 0
    for i in range(requests):
        x = batches[i % len(batches)]
        for mode in order[i % len(order) :] + order[: i % len(order)]:
            t0 = time.perf_counter()
            res = once(mode, x)
            wall[mode].append(time.perf_counter() - t0)
            if mode != "plain":
                for key, values in parts[mode].items():
                    values.append(res.timings.get(key, 0.0))
                flagged += sum(c.attacked for c in res.checks)
                exact += sum(bool(c.exact) for c in res.checks)
    plain, plain_mean = statistics.median(wall["plain"]), statistics.mean(wall["plain"])
    row: dict[str, Any] = {
        "batch": len(batches[0]),
        "distinct_batches": len(batches),
        "requests": requests,
        "plain_ms": _median_ms(wall["plain"]),
        "plain_ms_mean": round(1000 * plain_mean, 3),
    }
    for mode in attestations:
        ratio = statistics.median(wall[mode]) / plain
        ratio_mean = statistics.mean(wall[mode]) / plain_mean
        row[mode] = {
            "fides_ms": _median_ms(wall[mode]),
            "ratio": round(ratio, 3),
            "added_latency": round(ratio - 1, 3),
            # means: the few requests with escalated images weigh in with what they cost
            "fides_ms_mean": round(1000 * statistics.mean(wall[mode]), 3),
            "added_latency_of_means": round(ratio_mean - 1, 3),
            "parts_ms": {k: _median_ms(v) for k, v in parts[mode].items()},
            "target_met": ratio - 1 <= TARGET_ADDED,
        }
    checked = len(attestations) * requests * len(batches[0])
    row["clean_flagged_fraction"] = round(flagged / checked, 4)
    row["checked_exactly_fraction"] = round(exact / checked, 4)  # escalated images
    return row


def without_escalation(fides: Path, out: Path) -> Path:
    """A copy of the Fides directory `fides` with escalation turned off: the same verifier,
    detector and re-classifier, the threshold the experiment calibrated for the detector alone
    (`metrics.json`'s "without_escalation", 2 %): the reference the escalating bundle is
    compared with, on the same trained models."""
    from verification.fides import FidesVerifier

    metrics = json.loads((fides.parent / "metrics.json").read_text())
    alone = FidesVerifier.load(fides)
    if alone.escalation_margin is None:
        raise SystemExit(f"{fides} does not escalate: nothing to turn off")
    alone.reference, alone.escalation_margin, alone.audit_rate = None, None, 0.0
    alone.threshold = float(metrics["without_escalation"]["threshold"])
    alone.save(out)
    return out


def fixed_costs(bundle: Path, x: torch.Tensor, repeats: int = 50) -> dict[str, float]:
    """In-process medians (ms, batch of `len(x)`) of what a verified request adds at minimum:
    the enclave round trip with its simulated quote and the client's quote check, or, in a
    session, the round trip with its HMAC tag and the tag check; and the detector."""
    from tee import (
        AttestedSession,
        NonceStore,
        Policy,
        SessionKey,
        SimulatedEnclave,
        TrustAnchors,
        verify_quote,
    )
    from verification.fides import FidesVerifier
    from verification.fides.enclave_app import ENTRY, decode_reply, encode_request, verifier_bundle

    fides = FidesVerifier.load(bundle)
    run_s, check_s, judge_s, srun_s, tag_s = [], [], [], [], []
    with SimulatedEnclave() as enclave:
        measurement = enclave.load(ENTRY, verifier_bundle(bundle))
        policy = Policy(
            allowed_launch_measurements=None,
            allowed_code_measurements=frozenset({measurement}),
            allow_simulated=True,
        )
        trust = TrustAnchors(simulated_keys=(enclave.platform_public_key,))
        store = NonceStore()
        request = encode_request(x, "image")
        for i in range(repeats + 3):
            nonce = store.issue()
            t0 = time.perf_counter()
            result = enclave.run(request, nonce=nonce)
            t1 = time.perf_counter()
            verify_quote(
                result.quote,
                input=request,
                output=result.output,
                nonce=nonce,
                policy=policy,
                trust=trust,
                nonce_store=store,
            )
            t2 = time.perf_counter()
            pv, recomputed = decode_reply(result.output)
            fides.judge(pv, pv, recomputed)
            t3 = time.perf_counter()
            if i >= 3:  # warm-up
                run_s.append(t1 - t0)
                check_s.append(t2 - t1)
                judge_s.append(t3 - t2)
        key, nonce = SessionKey(), store.issue()
        offer = enclave.open_session(key.public, nonce=nonce)
        session = AttestedSession.open(
            offer.quote,
            offer=offer.offer,
            key=key,
            nonce=nonce,
            policy=policy,
            trust=trust,
            nonce_store=store,
        )
        for i in range(repeats + 3):
            seq = session.next_seq()
            t0 = time.perf_counter()
            tagged = enclave.run_in_session(request, session_id=session.session_id, seq=seq)
            t1 = time.perf_counter()
            session.check(
                seq=seq, answered_seq=tagged.seq, data=request, output=tagged.output, tag=tagged.tag
            )
            t2 = time.perf_counter()
            if i >= 3:
                srun_s.append(t1 - t0)
                tag_s.append(t2 - t1)
    return {
        "enclave_round_trip_ms": _median_ms(run_s),
        "quote_check_ms": _median_ms(check_s),
        "session_round_trip_ms": _median_ms(srun_s),
        "session_tag_check_ms": _median_ms(tag_s),
        "detector_ms": _median_ms(judge_s),
    }


def pin_nodes(mesh: LocalMesh) -> dict[str, list[int]]:
    """Pin each node's process tree (all threads, the enclave child included) to one CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--pin needs at least 2 CPUs")
    pinned: dict[str, list[int]] = {}
    for name, cpu in (("service", cpus[0]), ("verifier", cpus[1])):
        root = mesh.nodes[name].process.pid
        pids = [root, *_children(root)]
        for pid in pids:
            for task in Path(f"/proc/{pid}/task").iterdir():
                os.sched_setaffinity(int(task.name), {cpu})
        pinned[name] = [cpu, *pids]
    return pinned


def _children(pid: int) -> list[int]:
    found = []
    for tid in Path(f"/proc/{pid}/task").iterdir():
        kids = (tid / "children").read_text().split()
        for kid in map(int, kids):
            found += [kid, *_children(kid)]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--scale", default="full", choices=sorted(SCALES["mnist"]))
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--pin", action="store_true", help="one CPU per node (see above)")
    parser.add_argument("--protocol", default="distribution", choices=["distribution", "verdicts"])
    parser.add_argument(
        "--enrolled",
        action="store_true",
        help="the verifier is provisioned sealed with an enrolment of the bench's client "
        "(tee.enrolment: sessions with request MACs and encrypted answers)",
    )
    parser.add_argument(
        "--no-escalation",
        action="store_true",
        help="the same artefacts with escalation turned off (the detector alone, its own "
        "threshold): the reference for what escalation costs",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    artefacts = build("mnist", args.scale)
    images = prepare_mnist(SCALES["mnist"][args.scale]).inputs["test"]
    with tempfile.TemporaryDirectory(prefix="fides-mesh-") as scratch:
        fides_dir = artefacts / "fides"
        if args.no_escalation:
            fides_dir = without_escalation(fides_dir, Path(scratch) / "alone" / "fides")
        run(args, artefacts, fides_dir, images)


def run(args: argparse.Namespace, artefacts: Path, fides_dir: Path, images: torch.Tensor) -> None:
    """The mesh, the measurements and the JSON report (`main`'s arguments)."""
    options = FidesOptions(
        bundle=client_bundle(fides_dir), allow_simulated=True, protocol=args.protocol
    )
    specs = [
        NodeSpec(name="service", extra_args=("--classifier", f"mnist={artefacts / 'service'}")),
        NodeSpec(
            name="verifier",
            extra_args=(
                *(
                    ("--fides-sealed", "mnist=client")  # the bench's client provisions it
                    if args.enrolled
                    else ("--fides-verifier", f"mnist={fides_dir}")
                ),
                *("--enclave", "simulated", "--fides-protocol", args.protocol),
            ),
        ),
    ]
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalMesh(Path(tmp), specs, threads=1) as mesh,
        Client(mesh.seeds, tls=mesh.client_tls()) as client,
    ):
        if args.enrolled:
            provision_verifier(
                mesh.nodes["verifier"].address,
                "mnist",
                fides_dir,
                protocol=args.protocol,
                tls=mesh.client_tls(),
                node_name="verifier",
                allow_simulated=True,
                enrol=("client",),
            )
        pinned = pin_nodes(mesh) if args.pin else None
        # an enrolled enclave refuses per-request quotes: sessions only
        attestations = ("session",) if args.enrolled else ATTESTATIONS
        rows = [
            measure(
                client,
                [images[i : i + b] for i in range(0, len(images) - b + 1, b)],
                options,
                args.requests,
                attestations,
            )
            for b in (int(v) for v in args.batches.split(","))
        ]
    doc = {
        "bench": "fides_mesh",
        "fixed_costs_batch1_in_process": fixed_costs(fides_dir, images[:1]),
        "scale": f"mnist/{args.scale}",
        "escalation": not args.no_escalation,
        "protocol": args.protocol,
        "enrolled": args.enrolled,
        "tee": "SIMULATED (INSECURE): enclave process + software-signed quote / session HMAC",
        "transport": "mTLS on loopback, one process per node, 1 torch thread each",
        "pinned": pinned,  # node -> [cpu, pids...], or None
        "target_added_latency": TARGET_ADDED,
        "results": rows,
    }
    if args.json:
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
