"""Integrity benchmark: Fides verification and consensus across redundant nodes.

Fides, per service model (MNIST 5,000 CNN; MiniLM + head on movie reviews)
    Trains everything from scratch with `verification.fides.experiment.run` (MiniLM embeddings
    of the review sample are cached under the Fides cache directory after the first run):
    service model, cheaper substitute, GDTL verifier (cost budget: 10 % of the service model's
    multiply-accumulates), detector and re-classifier in the GAN framework, threshold calibrated
    on clean `calib` traffic to a false-positive rate <= 2 % (MNIST: 1 %, below). MNIST
    escalates (`Scale.escalate_fraction`, `--escalate F`, 0 = off): the enclave also runs the
    service model on the 5 % of queries the verifier is least sure of, which are checked
    exactly; `without_escalation` holds the same detector's figures alone (threshold at 2 %),
    `escalated_fraction` and `verification_mac_ratio` what escalation costs (the enclave's
    multiply-accumulates per query over the service's). All figures are on the held-out `test`
    split:
      - false_positive_rate on clean outputs,
      - per attack: detection_rate (all attacked queries) and detection_rate_label_changed (only
        queries whose returned top-1 differs from the honest one), reclassification_accuracy
        (flagged queries whose re-classified label equals the service's honest top-1) and
        attacked_output_accuracy (the same for the attacked output itself, the weak baseline),
        verifier_top1_accuracy (the same for the verifier's own top-1: the baseline the
        re-classifier has to beat; it does not, on MNIST: both track the verifier's fidelity),
        and two threshold-free views of the scores: roc_auc (clean vs attacked test queries)
        and detection_rate_at_test_operating_point (the threshold that flags 2 % of the clean
        test queries, chosen on them: not deployable, it shows what the scores separate apart
        from the calibration split's draw),
      - latency: median wall time of one request (batch 1) of the service model (image: the
        CNN; text: sentence-transformers encode + head, tokenisation included) against the
        verification model on the same input (text: tokenisation included; with escalation the
        service model on escalated requests too), calls alternated, and the ratio of the mean
        times (`ratio_of_means`, what the latency target is checked on: escalated requests
        weigh in with what they cost, which a median hides);
        the per-sample time in batches of 256 (image) / 32 (text); ratio = verifier / service;
        the cost of a whole `FidesVerifier.verify` call (input checks, verifier, detector,
        re-classifier); and the ratio of multiply-accumulates (GDTL's cost model).
    Targets (issue 5): detection >= 0.98 per attack at FP <= 0.02, re-classification >= 0.94,
    verifier latency <= 0.10 of the service's.

Consensus (`--tasks ...,consensus`): `bench/consensus_mesh.py` on a mesh of real node processes:
detection rate by fraction of misbehaving nodes (independent and colluding liars) at k = 2 and 3,
exclusion within the epoch, latency overhead at k = 2 and 3 (see that module's docstring).

Run: `.venv/bin/python bench/integrity.py --json` (about 10-15 min on 2 busy cores, of which
MiniLM encoding of 4,000 reviews is ~7 min on the first run only).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from verification.fides.artefacts import SCALES as ARTEFACT_SCALES  # noqa: E402
from verification.fides.data import cache_dir  # noqa: E402
from verification.fides.experiment import TaskData, prepare_mnist, prepare_reviews, run  # noqa: E402
from verification.fides.text import MiniLMEncoder  # noqa: E402

TARGETS = {
    "detection_rate_min": 0.98,
    "false_positive_rate_max": 0.02,
    "reclassification_accuracy_min": 0.94,
    "latency_ratio_max": 0.10,
}
# The "full" configurations of verification.fides.artefacts (the mesh's artefacts are the same).
SCALES = {task: scales["full"] for task, scales in ARTEFACT_SCALES.items()}


def paired_ms(
    fa: Callable[[Any], object], fb: Callable[[Any], object], args: list[Any]
) -> tuple[list[float], list[float]]:
    """Wall ms of `fa` and `fb` on each of `args`, alternating calls (after one warm-up each)."""
    fa(args[0])
    fb(args[0])
    ta: list[float] = []
    tb: list[float] = []
    for a in args:
        for fn, times in ((fa, ta), (fb, tb)):
            t = time.perf_counter()
            fn(a)
            times.append(1e3 * (time.perf_counter() - t))
    return ta, tb


def paired_median_ms(
    fa: Callable[[Any], object], fb: Callable[[Any], object], args: list[Any]
) -> tuple[float, float]:
    """Median wall ms of `fa` and `fb` over `args` (`paired_ms`)."""
    ta, tb = paired_ms(fa, fb, args)
    return statistics.median(ta), statistics.median(tb)


@torch.no_grad()
def latency(
    task: str, data: TaskData, outcome: Any, encoder: MiniLMEncoder | None, requests: int
) -> dict[str, float]:
    """Service model vs verification model on the same requests (see the module docstring)."""
    fides, service = outcome.fides, outcome.service
    if task == "mnist":
        x = data.inputs["test"]
        single = [x[i : i + 1] for i in range(requests)]
        batches = [x[:256]] * 20  # the same batch, timed 20 times
        per = 256

        def svc(b: torch.Tensor) -> torch.Tensor:
            return service(b).softmax(1)

        def ver(b: torch.Tensor) -> torch.Tensor:  # what the enclave computes
            pv = fides.verifier(b).softmax(1)
            fides.recompute(b, pv)  # the service model on escalated rows (None: no escalation)
            return pv
    else:
        single = [[t] for t in data.texts["test"][:requests]]
        batches = [data.texts["test"][i : i + 32] for i in range(0, 320, 32)]
        per = 32

        def svc(t: list[str]) -> torch.Tensor:
            return service(encoder.encode(t)).softmax(1)

        ver = fides.verifier_probs  # tokenisation included, as in the service's encode
    s1_all, v1_all = paired_ms(svc, ver, single)
    s1, v1 = statistics.median(s1_all), statistics.median(v1_all)
    sb, vb = paired_median_ms(svc, ver, batches)
    answers = {id(a): svc(a) for a in single}  # the service's outputs, computed beforehand
    _, verify1 = paired_median_ms(ver, lambda a: fides.verify(a, answers[id(a)]), single)
    return {
        "service_ms": s1,
        "verifier_ms": v1,
        "ratio": v1 / s1,
        # means: an escalated single request also runs the service model in the enclave,
        # which medians over mostly unescalated requests do not show
        "ratio_of_means": statistics.mean(v1_all) / statistics.mean(s1_all),
        "service_ms_per_sample_batched": sb / per,
        "verifier_ms_per_sample_batched": vb / per,
        "ratio_batched": vb / sb,
        "verify_call_ms": verify1,  # input checks + verifier + detector + re-classifier
        "mac_ratio": outcome.metrics["verifier_macs"] / outcome.metrics["service_macs"],
    }


def fides_task(
    task: str,
    requests: int,
    train_attacks: tuple[str, ...] | None,
    seed: int = 0,
    escalate: float | None = None,
) -> dict[str, Any]:
    scale = dataclasses.replace(SCALES[task], train_attacks=train_attacks, seed=seed)
    if escalate is not None and task == "mnist":
        scale = dataclasses.replace(scale, escalate_fraction=escalate)
    t0 = time.time()
    encoder = MiniLMEncoder() if task == "reviews" else None
    data = prepare_mnist(scale) if task == "mnist" else prepare_reviews(scale, encoder)
    outcome = run(data, scale)
    m = outcome.metrics
    m["latency"] = latency(task, data, outcome, encoder, requests)
    name = (
        f"bench-{task}"
        + ("-heldout" if train_attacks else "")
        + (f"-seed{seed}" if seed else "")
        + (f"-escalate{escalate:g}" if escalate is not None else "")
    )
    m["saved_to"] = str(outcome.fides.save(cache_dir() / name))
    att = m["attacks"].values()
    m["targets_met"] = {
        "detection": all(a["detection_rate"] >= TARGETS["detection_rate_min"] for a in att),
        "false_positive_rate": m["false_positive_rate"] <= TARGETS["false_positive_rate_max"],
        "reclassification": all(
            (a["reclassification_accuracy"] or 0) >= TARGETS["reclassification_accuracy_min"]
            for a in att
        ),
        # the ratio of mean times: escalated requests count with what they cost
        "latency": m["latency"]["ratio_of_means"] <= TARGETS["latency_ratio_max"],
    }
    m["seed"] = seed
    m["wall_s"] = time.time() - t0
    return m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--tasks", default="mnist,reviews", help="comma-separated subset")
    parser.add_argument("--requests", type=int, default=100, help="batch-1 requests timed")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--consensus-requests", type=int, default=300, help="requests per consensus setting"
    )
    parser.add_argument(
        "--train-attacks",
        default=None,
        help="comma-separated attacks known to the GAN training (default: all); the others "
        "are evaluated as unseen",
    )
    parser.add_argument("--seed", type=int, default=0, help="Scale.seed: splits, training, attacks")
    parser.add_argument(
        "--escalate",
        type=float,
        default=None,
        help="MNIST: Scale.escalate_fraction (default: the full scale's; 0 turns escalation off)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    known = tuple(args.train_attacks.split(",")) if args.train_attacks else None
    tasks = args.tasks.split(",")
    fides = {
        t: fides_task(t, args.requests, known, args.seed, args.escalate)
        for t in tasks
        if t != "consensus"
    }
    consensus = None
    if "consensus" in tasks:
        from bench.consensus_mesh import run as run_consensus

        consensus = run_consensus(args.consensus_requests, 50, 50, 5)
    result = {
        "bench": "integrity",
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": args.threads,
            "cpu": platform.processor() or platform.machine(),
        },
        "targets": TARGETS,
        "train_attacks": list(known) if known else "all",
        "fides": fides,
        "consensus": consensus,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for task, m in fides.items():
        lo, hi = m["false_positive_rate_ci95"]
        print(
            f"{task}: FP {m['false_positive_rate']:.3f} [95 % CI {lo:.3f}, {hi:.3f}]  "
            f"latency ratio {m['latency']['ratio']:.3f}"
        )
        for name, a in m["attacks"].items():
            lo, hi = a["detection_rate_ci95"]
            print(
                f"  {name:20s} detect {a['detection_rate']:.3f} [{lo:.3f}, {hi:.3f}]  "
                f"reclassify {a['reclassification_accuracy']} "
                f"(verifier's top-1 {a['verifier_top1_accuracy']})  AUC {a['roc_auc']:.4f}  "
                f"detect at the test split's own 2 % point "
                f"{a['detection_rate_at_test_operating_point']:.3f}"
            )


if __name__ == "__main__":
    main()
