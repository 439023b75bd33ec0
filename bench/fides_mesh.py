"""Request latency through the mesh with and without `verify="fides"` (issue 5: <= 10 % added).

    .venv/bin/python bench/fides_mesh.py --json [--scale full] [--requests 40] [--batches 1,64]

Starts a local mesh of real node processes over mTLS: `service` hosts the MNIST service CNN as
a plaintext classifier, `verifier` hosts the Fides verification model in a SIMULATED enclave
(INSECURE; a hardware TEE adds its own quote cost, not measured here). The artefacts come from
`verification.fides.artefacts` ("full" = the bench/integrity.py configuration, trained on
first use, ~5 min; "test" = the small test configuration). For each batch size, requests
alternate between plain (`privacy="none"`) and verified (`verify="fides"`) classification of
the same held-out images, after warm-up; reported: median wall time per request of each, the
added latency (ratio - 1), and the verified request's parts (service RPC, verifier RPC, local
quote check + detector). One JSON object on stdout. Wall times on a shared CPU are noisy.
"""

from __future__ import annotations

import argparse
import json
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
from secure_infer.fides_client import FidesOptions  # noqa: E402
from secure_infer.localmesh import LocalMesh, NodeSpec  # noqa: E402
from verification.fides.artefacts import SCALES, build  # noqa: E402
from verification.fides.experiment import prepare_mnist  # noqa: E402

TARGET_ADDED = 0.10  # issue 5: verification adds <= 10 % to request latency


def _median_ms(values: list[float]) -> float:
    return round(1000 * statistics.median(values), 3)


def measure(
    client: Client, x: torch.Tensor, options: FidesOptions, requests: int
) -> dict[str, Any]:
    """Paired, alternating plain and verified requests on the same batch."""
    for _ in range(3):  # warm-up: catalog, channels, first forwards
        client.classify("mnist", x.numpy(), privacy="none")
        client.classify("mnist", x.numpy(), verify="fides", fides=options)
    plain: list[float] = []
    fides: list[float] = []
    parts: dict[str, list[float]] = {"service_s": [], "verifier_s": [], "check_s": []}
    flagged = 0
    for i in range(requests):
        order = (False, True) if i % 2 == 0 else (True, False)
        for verified in order:
            t0 = time.perf_counter()
            if verified:
                res = client.classify("mnist", x.numpy(), verify="fides", fides=options)
                fides.append(time.perf_counter() - t0)
                for key in parts:
                    parts[key].append(res.timings[key])
                flagged += sum(c.attacked for c in res.checks)
            else:
                client.classify("mnist", x.numpy(), privacy="none")
                plain.append(time.perf_counter() - t0)
    ratio = statistics.median(fides) / statistics.median(plain)
    return {
        "batch": len(x),
        "requests": requests,
        "plain_ms": _median_ms(plain),
        "fides_ms": _median_ms(fides),
        "ratio": round(ratio, 3),
        "added_latency": round(ratio - 1, 3),
        "fides_parts_ms": {k: _median_ms(v) for k, v in parts.items()},
        "clean_flagged_fraction": round(flagged / (requests * len(x)), 4),
        "target_met": ratio - 1 <= TARGET_ADDED,
    }


def fixed_costs(bundle: Path, x: torch.Tensor, repeats: int = 50) -> dict[str, float]:
    """In-process medians (ms, batch of `len(x)`) of what a verified request adds at minimum:
    the enclave round trip with its simulated quote, the client's quote check, the detector."""
    from tee import NonceStore, Policy, SimulatedEnclave, TrustAnchors, verify_quote
    from verification.fides import FidesVerifier
    from verification.fides.enclave_app import ENTRY, decode_output, encode_request, verifier_bundle

    fides = FidesVerifier.load(bundle)
    run_s, check_s, judge_s = [], [], []
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
                output=result.output,
                nonce=nonce,
                policy=policy,
                trust=trust,
                nonce_store=store,
            )
            t2 = time.perf_counter()
            pv = decode_output(result.output)
            fides.judge(pv, pv)
            t3 = time.perf_counter()
            if i >= 3:  # warm-up
                run_s.append(t1 - t0)
                check_s.append(t2 - t1)
                judge_s.append(t3 - t2)
    return {
        "enclave_round_trip_ms": _median_ms(run_s),
        "quote_check_ms": _median_ms(check_s),
        "detector_ms": _median_ms(judge_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--scale", default="full", choices=sorted(SCALES["mnist"]))
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--batches", default="1,64")
    args = parser.parse_args()
    torch.set_num_threads(1)
    artefacts = build("mnist", args.scale)
    images = prepare_mnist(SCALES["mnist"][args.scale]).inputs["test"]
    options = FidesOptions(bundle=artefacts / "fides", allow_simulated=True)
    specs = [
        NodeSpec(name="service", extra_args=("--classifier", f"mnist={artefacts / 'service'}")),
        NodeSpec(
            name="verifier",
            extra_args=(
                "--fides-verifier",
                f"mnist={artefacts / 'fides'}",
                "--enclave",
                "simulated",
            ),
        ),
    ]
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalMesh(Path(tmp), specs, threads=1) as mesh,
        Client(mesh.seeds, tls=mesh.client_tls()) as client,
    ):
        rows = [
            measure(client, images[:b], options, args.requests)
            for b in (int(v) for v in args.batches.split(","))
        ]
    doc = {
        "bench": "fides_mesh",
        "fixed_costs_batch1_in_process": fixed_costs(artefacts / "fides", images[:1]),
        "scale": f"mnist/{args.scale}",
        "tee": "SIMULATED (INSECURE): enclave process + software-signed quote",
        "transport": "mTLS on loopback, one process per node, 1 torch thread each",
        "target_added_latency": TARGET_ADDED,
        "results": rows,
    }
    if args.json:
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
