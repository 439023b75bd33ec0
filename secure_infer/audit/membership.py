"""Record-level membership audit: loss baseline, LiRA online/offline and RMIA on one target.

Setup (the LiRA/RMIA auditor's game):
1. The audited rows are the target's members plus as many non-members from the same data set
   (when the tool trains the target, a random ``pool_size`` rows of which a seeded half are
   members). A disjoint sample of ``population_size`` rows serves RMIA as population ``z``.
2. ``n_shadows`` shadow (= reference) models are trained with the same recipe, each on a random
   half of the audited rows, every row IN exactly half of them.
3. Every attack scores every audited row; metrics compare scores to true membership.

Assumed, and stated in the report: the shadow recipe matches how the target was trained, and the
audited non-members come from the target's training distribution.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from secure_infer.audit.attacks import AttackInputs, confidence, run_attack
from secure_infer.audit.config import FIXED_VARIANCE_BELOW, AuditConfig
from secure_infer.audit.data import Dataset, load_dataset
from secure_infer.audit.errors import AuditConfigError, DataUnavailable
from secure_infer.audit.mesh_target import MeshTarget, is_mesh
from secure_infer.audit.metrics import attack_metrics
from secure_infer.audit.models import LocalTorchTarget, ModelTarget, Target, train_model
from secure_infer.audit.report import histogram, new_report
from secure_infer.audit.shadows import (
    STREAM_SHADOW,
    STREAM_TARGET,
    ShadowSpec,
    balanced_keep,
    model_seed,
    train_shadows,
)

__all__ = ["THREAT_MODEL", "audit_rows", "load_members", "run_membership", "score_target"]

THREAT_MODEL = (
    "Black-box score access: the attacker queries the target on chosen rows and reads its logits. "
    "It knows the training recipe and holds data from the same population, with which it trains "
    "shadow/reference models. It does not see the target's weights or gradients."
)


def load_members(path: Path, n_rows: int) -> np.ndarray:
    """Row indices of the target's training set from .npy, .json (a list) or text (one a line).

    Every problem with the file is an :class:`AuditConfigError` (or :class:`DataUnavailable` if
    it is missing) naming ``target.members`` and the file."""
    path = Path(path)
    where = f"target.members file {path}"
    if not path.is_file():
        raise DataUnavailable(f"{where} does not exist")
    try:
        if path.suffix == ".npy":
            form = "a .npy array"
            idx = np.load(path, allow_pickle=False)
        elif path.suffix == ".json":
            form = "a JSON list of integers"
            idx = np.asarray(json.loads(path.read_text()))
        else:
            form = "text with one integer row index a line"
            with warnings.catch_warnings():  # an empty file is reported below, not warned about
                warnings.simplefilter("ignore", UserWarning)
                idx = np.loadtxt(path, dtype=np.int64, ndmin=1)
    except (ValueError, OSError, EOFError, UnicodeDecodeError) as exc:
        msg = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise AuditConfigError(f"{where} cannot be read as {form}: {msg}") from None
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise AuditConfigError(
            f"{where}: expected a flat list of integer row indices, got {idx.dtype} values of "
            f"shape {idx.shape}"
        )
    if len(idx) == 0:
        raise AuditConfigError(f"{where} lists no row indices")
    if idx.min() < 0 or idx.max() >= n_rows:
        raise AuditConfigError(
            f"{where}: indices must lie in [0, {n_rows}) (rows of the de-duplicated data set); "
            f"found {int(idx.min())}..{int(idx.max())}"
        )
    if len(np.unique(idx)) != len(idx):
        raise AuditConfigError(f"{where}: duplicate row indices")
    return idx.astype(np.int64)


def audit_rows(cfg: AuditConfig, ds: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(audited row indices, membership mask, population row indices)."""
    rng = np.random.default_rng(cfg.data.seed)
    if cfg.target.path:
        members = load_members(Path(cfg.target.members), len(ds))
        rest = rng.permutation(np.setdiff1d(np.arange(len(ds)), members))
        need = len(members) + cfg.data.population_size
        if len(rest) < need:
            raise DataUnavailable(
                f"{ds.name} has {len(rest)} non-member rows; {need} are needed "
                "(as many non-members as members, plus the population)"
            )
        pool = np.concatenate([members, rest[: len(members)]])
        member = np.arange(len(pool)) < len(members)
        return pool, member, rest[len(members) : need]
    need = cfg.data.pool_size + cfg.data.population_size
    if need > len(ds):
        raise DataUnavailable(f"{ds.name} has {len(ds)} rows; pool + population need {need}")
    perm = rng.permutation(len(ds))[:need]
    pool, pop = perm[: cfg.data.pool_size], perm[cfg.data.pool_size :]
    member = rng.permutation(len(pool)) < len(pool) // 2
    return pool, member, pop


def _target(cfg: AuditConfig, ds: Dataset, pool: np.ndarray, member: np.ndarray) -> Target:
    if is_mesh(cfg.target.path):
        t = cfg.target
        mesh = MeshTarget(
            t.path, t.seeds, certs=t.certs, identity=t.identity, insecure_dev=t.insecure_dev
        )
        mesh.check_fits(ds.n_features, ds.n_classes)
        return mesh
    if cfg.target.path:
        target = LocalTorchTarget(Path(cfg.target.path))
        target.check_fits(ds.n_features, ds.n_classes)
        return target
    rows = pool[member]
    seed = model_seed(cfg.data.seed, STREAM_TARGET)  # never a shadow model's seed
    model = train_model(ds.x[rows], ds.y[rows], ds.n_classes, cfg.model.recipe(), seed)
    return ModelTarget(model, ds.n_features, ds.n_classes, "MLP trained by the audit tool")


def score_target(
    cfg: AuditConfig, target: Target, ds: Dataset, pool: np.ndarray, pop: np.ndarray,
    shadows: np.ndarray, keep: np.ndarray,
) -> dict[str, tuple[np.ndarray, float]]:  # fmt: skip
    """Run every configured attack; returns {name: (scores, wall seconds)}."""
    inp = AttackInputs(
        target_logits=target.logits(ds.x[pool]),
        shadow_logits=shadows[:, : len(pool)],
        keep=keep,
        y=ds.y[pool],
        target_pop_logits=target.logits(ds.x[pop]),
        shadow_pop_logits=shadows[:, len(pool) :],
        y_pop=ds.y[pop],
    )
    m = cfg.membership
    out = {}
    for name in m.attacks:
        t0 = time.perf_counter()
        scores = run_attack(
            name,
            inp,
            fixed_variance=m.lira_fixed_variance(),
            gamma=m.rmia_gamma,
            offline_a=m.rmia_offline_a,
        )
        out[name] = (scores, time.perf_counter() - t0)
    return out


def run_membership(cfg: AuditConfig) -> dict[str, Any]:
    """Run the record-level membership audit described by ``cfg``; returns the report dict."""
    t_start = time.perf_counter()
    ds = load_dataset(cfg.data.name)
    pool, member, pop = audit_rows(cfg, ds)
    target = _target(cfg, ds, pool, member)
    keep = balanced_keep(cfg.membership.n_shadows, len(pool), cfg.data.seed + 1)
    spec = ShadowSpec(
        ds.x[pool], ds.y[pool], ds.x[np.concatenate([pool, pop])], ds.n_classes,
        cfg.model.recipe(), keep, cfg.data.seed, ds.provenance.to_dict(), (STREAM_SHADOW,),
    )  # fmt: skip
    t0 = time.perf_counter()
    run = train_shadows(
        spec,
        workers=cfg.run.workers,
        ray_address=cfg.run.ray_address or None,
        cache=Path(cfg.run.cache_dir) if cfg.run.cache_dir else None,
        progress=cfg.run.progress,
    )
    shadow_s = time.perf_counter() - t0
    results = score_target(cfg, target, ds, pool, pop, run.logits, keep)

    logits = target.logits(ds.x[pool])
    acc = logits.argmax(1) == ds.y[pool]
    loss = -np.log(confidence(logits, ds.y[pool]) + 1e-30)
    attacks = []
    for name, (scores, wall) in results.items():
        entry = {"name": name, **attack_metrics(scores, member), "wall_s": wall}
        entry["histogram"] = histogram(scores, member)
        attacks.append(entry)
    best = max(attacks, key=lambda a: (a["tpr_at_fpr"]["0.001"], a["auc"]))
    top = np.argsort(-results[best["name"]][0])[: cfg.run.top_n]
    report = new_report("membership", cfg, ds.provenance.to_dict(), THREAT_MODEL)
    report["assumptions"] += [
        "The shadow models' training recipe (architecture, epochs, optimizer) matches the "
        "target's.",
        "Audited non-members are drawn from the same data set as the target's members.",
    ]
    report["target"] = {
        "description": target.description,
        "trained_by_tool": not cfg.target.path,
        "members": int(member.sum()),
        "non_members": int((~member).sum()),
        "train_accuracy": float(acc[member].mean()),
        "test_accuracy": float(acc[~member].mean()),
    }
    m = cfg.membership
    fixed = m.lira_fixed_variance()
    report["shadows"] = {
        "count": len(keep), "trained": run.trained, "cached": run.cached,
        "cache_dir": str(run.cache_dir), "wall_s": shadow_s,
        "lira_variance": "global" if fixed else "per-example",
        "in_per_example": int(keep.sum(0).min()), "out_per_example": int((~keep).sum(0).min()),
    }  # fmt: skip
    if any(a.startswith("lira") for a in m.attacks):
        how = "set by membership.fixed_variance" if m.fixed_variance is not None else (
            f"the default with {m.n_shadows} < {FIXED_VARIANCE_BELOW} shadows"
            if fixed else f"the default with {m.n_shadows} >= {FIXED_VARIANCE_BELOW} shadows"
        )  # fmt: skip
        report["assumptions"].append(
            f"LiRA models each example's IN/OUT confidences as Gaussians with "
            f"{'one global' if fixed else 'a per-example'} standard deviation per side ({how}; "
            f"{int(keep.sum(0).min())} IN and {int((~keep).sum(0).min())} OUT shadow models per "
            "example)."
        )
    report["attacks"] = attacks
    report["risk_table"] = {
        "attack": best["name"],
        "unit": "row",
        "rows": [
            {
                "id": int(pool[i]),
                "label": int(ds.y[pool[i]]),
                "member": bool(member[i]),
                "score": float(results[best["name"]][0][i]),
                "loss": float(loss[i]),
            }
            for i in top
        ],
    }
    report["wall_s"] = time.perf_counter() - t_start
    return report
