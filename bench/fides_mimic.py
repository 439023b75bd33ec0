"""What a service that KNOWS the Fides verifier can do: answer with the verifier's distribution.

    .venv/bin/python bench/fides_mimic.py --json [--scale full] [--seed N] [--queries 250,1000]

Fides compares the service's answer with the verification model's. If the service's operator
holds the verifier's weights (a published full bundle, a colluding verifier node, the host of a
simulated enclave), it can skip its own model and return the verifier's output, or a tempered
copy of it: a substitution by a model that costs ~10 % of its own. This bench measures that
attack on the MNIST artefacts of `verification.fides.artefacts` ("full" = the mesh and
bench/integrity.py configuration, trained on first use, ~5 min; "test" = the small one), side
by side with the reference attack the detector was built for (substitution by an independent
cheap model) and the clean false-positive rate, on the 500 held-out test queries. One JSON
object on stdout: per attack the detection rate (with its exact 95 % interval) and the answer's
accuracy against the true labels, and the ratio of the mimic's detection to the clean FP rate.

Without the weights, the verifier's FUNCTION still leaks to anyone who can query it, and every
client can: a verified request returns the verifier's distribution, which the client's detector
needs. `--queries N,...`: the service's operator, acting as a client, sends N images of its own
(its training split) with `verify="fides"`, collects the verifier's distributions, and distils
its own copy the way GDTL distils a verifier (its own service's first conv block + a head, same
budget and recipe, on those N answers; 15 % of them held out for GDTL's choice); it then answers
the test queries with that copy. Reported per N like the attacks above, plus the copy's
agreement with the verifier. The same copy distilled from the verifier's top-1 LABELS only
(what a protocol that returned verdicts instead of distributions would still leak, through
re-classified labels), as is and temperature-scaled (the attacker's best T of 0.25-16 against
the detector, an upper bound on what it could tune without the detector), shows how much of
the leak the distribution is.

This is why the client gets the client bundle (`secure-infer fides export-client`: no
verification model) and why the threat model requires the service and the verifier's host not
to collude; it is not an attack the detector can learn to catch (a copy is indistinguishable
from an honest service whose model happens to agree with the verifier).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from verification.fides import FidesVerifier  # noqa: E402
from verification.fides.artefacts import SCALES, build  # noqa: E402
from verification.fides.detector import rate_interval  # noqa: E402
from verification.fides.experiment import prepare_mnist, service_macs  # noqa: E402
from verification.fides.gdtl import ConvFamily, GdtlConfig, greedy_distill, wall_ms  # noqa: E402
from verification.fides.service_model import load_classifier  # noqa: E402
from verification.fides.training import batched  # noqa: E402
from verification.fides.verifier import Recomputed, top_margin  # noqa: E402

TEMPERATURES = (0.8, 1.2, 1.5)  # the mimic's p ** (1 / t), renormalised
HARD_T = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # temperatures tried on the label-only copy


def _tempered(p: np.ndarray, t: float) -> np.ndarray:
    q = np.power(np.maximum(p, 1e-38), 1.0 / t)
    return (q / q.sum(1, keepdims=True)).astype(np.float32)


def _row(
    fides: FidesVerifier,
    ps: np.ndarray,
    pv: np.ndarray,
    y: np.ndarray,
    recomputed: Recomputed | None = None,
) -> dict[str, Any]:
    """Detection of the answers `ps` (with escalation, the enclave's `recomputed` rows: an
    answer there is checked exactly against the service model's)."""
    judged = fides.judge_columns(ps, pv, recomputed)
    flagged = np.asarray(judged.attacked)
    lo, hi = rate_interval(int(flagged.sum()), len(flagged))
    return {
        "detection": round(float(flagged.mean()), 4),
        "detection_ci95": [round(lo, 4), round(hi, 4)],
        # flagged by an exact check (escalated or audited rows): proof, not a statistic; an
        # honest service is never flagged so
        "flagged_exactly": round(float((flagged & np.asarray(judged.exact)).mean()), 4),
        "answer_accuracy": round(float((ps.argmax(1) == y).mean()), 4),
    }


def extracted_copy(
    service: torch.nn.Module,
    fides: FidesVerifier,
    queries: torch.Tensor,
    widths: list[list[int]],
    gdtl: GdtlConfig,
    budget: int,
    labels_only: bool = False,
) -> torch.nn.Module:
    """The attacker's copy of the verifier, distilled from its answers to `queries` only."""
    pv = fides.verifier_probs(queries)
    if labels_only:  # one-hot targets, smoothed so that their log stays finite
        pv = torch.nn.functional.one_hot(pv.argmax(1), pv.shape[1]).float() * 0.999 + 1e-4
    logits = torch.log(pv.clamp_min(1e-30))
    n_val = max(1, int(0.15 * len(queries)))
    cfg = GdtlConfig(**{**gdtl.__dict__, "mac_budget": budget})
    res = greedy_distill(
        ConvFamily(service, widths),
        queries[n_val:],
        logits[n_val:],
        queries[:n_val],
        logits[:n_val],
        cfg,
    )
    return res.net.eval()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object (the default)")
    ap.add_argument("--scale", choices=sorted(SCALES["mnist"]), default="full")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument(
        "--queries",
        default="250,1000,3000",
        help="comma-separated numbers of verified queries the attacker distils a copy from "
        "('' to skip)",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = build("mnist", args.scale, seed=args.seed)
    fides = FidesVerifier.load(root / "fides")
    service = load_classifier(root / "service")
    substitute = load_classifier(root / "substitute")
    cfg = SCALES["mnist"][args.scale]
    if args.seed is not None:
        cfg = dataclasses.replace(cfg, seed=args.seed)
    data = prepare_mnist(cfg)
    x, y = data.inputs["test"], data.labels["test"].numpy()
    ps = service.probs(x).numpy()
    pv = fides.verifier_probs(x).numpy()
    # None unless the bundle escalates; audits drawn reproducibly (the enclave's are random)
    rec = fides.recompute(x, torch.from_numpy(pv), rng=np.random.default_rng(0))
    rows: dict[str, Any] = {
        "clean (honest service)": _row(fides, ps, pv, y, rec),
        "substitution (independent cheap model; reference)": _row(
            fides, substitute.probs(x).numpy(), pv, y, rec
        ),
        "mimic: the verifier's own distribution": _row(fides, pv.copy(), pv, y, rec),
    }
    if fides.escalation_margin is not None:
        # An ADAPTIVE service knows the verifier (or a copy) and the published margin: it
        # answers honestly where the margin escalates, with the verifier's distribution
        # elsewhere; only the enclave's random audits can catch it.
        adaptive = np.where(fides.escalates(pv)[:, None], ps, pv)
        rows["adaptive mimic: honest where the margin escalates, the verifier's elsewhere"] = _row(
            fides, adaptive, pv, y, rec
        )
    for t in TEMPERATURES:
        rows[f"mimic: the verifier's distribution at temperature {t}"] = _row(
            fides, _tempered(pv, t), pv, y, rec
        )
    net = service.net  # the operator's own model (a ConvPrefixNet)
    budget = int(cfg.verifier_budget * service_macs(data, net))
    own = data.inputs["train"]  # the service operator's own images
    for n in [int(q) for q in args.queries.split(",") if q]:
        t0 = time.perf_counter()
        copy = extracted_copy(net, fides, own[:n], cfg.widths, cfg.gdtl, budget)
        pc = batched(copy, x, 64).softmax(1).numpy()
        row = _row(fides, pc, pv, y, rec)
        row["agreement_with_verifier"] = round(float((pc.argmax(1) == pv.argmax(1)).mean()), 4)
        row["distil_s"] = round(time.perf_counter() - t0, 1)
        rows[f"mimic: a copy distilled from {n} verified queries"] = row
        if fides.escalation_margin is not None:  # honest where the copy predicts escalation
            honest_here = top_margin(pc) <= fides.escalation_margin * 1.02
            row = _row(fides, np.where(honest_here[:, None], ps, pc), pv, y, rec)
            row["service_model_run_on"] = round(float(honest_here.mean()), 4)
            rows[f"adaptive: a copy from {n} queries, honest where it predicts escalation"] = row
        t0 = time.perf_counter()
        hard = extracted_copy(net, fides, own[:n], cfg.widths, cfg.gdtl, budget, labels_only=True)
        logits = batched(hard, x, 64)
        row = _row(fides, logits.softmax(1).numpy(), pv, y, rec)
        row["agreement_with_verifier"] = round(
            float((logits.argmax(1).numpy() == pv.argmax(1)).mean()), 4
        )
        tuned = {
            t: _row(fides, (logits / t).softmax(1).numpy(), pv, y, rec)["detection"] for t in HARD_T
        }
        row["detection_best_temperature"] = min(tuned.values())
        row["distil_s"] = round(time.perf_counter() - t0, 1)
        rows[f"mimic: a copy distilled from the verifier's top-1 labels on {n} queries"] = row
    clean_fp = rows["clean (honest service)"]["detection"]
    mimic = rows["mimic: the verifier's own distribution"]["detection"]
    service_ms = wall_ms(service.net, x)
    verifier_ms = wall_ms(fides.verifier, x)
    report = {
        "bench": "fides_mimic",
        "artefacts": str(root),
        "queries": len(y),
        "threshold_target_fpr": cfg.max_fpr if cfg.threshold_fpr is None else cfg.threshold_fpr,
        "attacks": rows,
        "ratios": {
            "mimic_detection_over_clean_fp": round(mimic / clean_fp, 3) if clean_fp else None,
            "mimic_detection_over_substitution_detection": round(
                mimic
                / max(rows["substitution (independent cheap model; reference)"]["detection"], 1e-9),
                3,
            ),
            "mimic_cost_over_service_cost_wall": round(verifier_ms / service_ms, 3),
        },
        "wall_ms_test_split_1_thread": {
            "service": round(service_ms, 2),
            "verifier (the mimic's cost)": round(verifier_ms, 2),
        },
        "note": "a service that knows the verifier's weights is not detected: keep them "
        "secret (clients get the client bundle) and do not let it collude with the verifier's host",
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
