"""Subject-level membership inference (Suri et al., "Subject Membership Inference Attacks in
Federated Learning"), centralized black-box variant, on KDD Census-Income.

A *subject* owns several records. The question is whether any of a subject's records was used
in training. The attacker does not know the exact records: it holds other samples from the
subject's distribution (here: other records of the same subject, disjoint from the ones trained on).

Subjects: the public KDD file has no household identifier, so subjects are pseudo-households,
the groups of records that share the values of ``subject.key`` (by default residence, birth
countries of the person and parents, race, Hispanic origin, household role). Only groups with
between ``records_per_subject + known_per_subject`` and four times that many records are used
(small, specific groups). This is an approximation of real households and the report says so.

Game: ``n_subjects`` subjects, a seeded half are members. The target trains on
``background_size`` non-subject rows plus ``records_per_subject`` records of every member
subject. ``n_reference`` reference models train on same-sized random halves of a pool of twice
that many non-subject rows (OUT for every subject; the target's background rows are in the
pool). Scores per subject, over its known records:

* ``subject_loss``: mean negative loss of the target (threshold baseline).
* ``subject_lira``: mean of ``(phi_target - mu_ref) / sd_ref`` per known record, with ``phi`` the
  logit-scaled confidence and ``mu_ref, sd_ref`` from the reference models (offline LiRA,
  averaged over the subject's samples).

Not implemented: the paper's attack with per-round (federated) model access, and DP training.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from secure_infer.audit.attacks import confidence, logit_confidence
from secure_infer.audit.config import AuditConfig
from secure_infer.audit.data import load_dataset
from secure_infer.audit.errors import AuditConfigError, DataUnavailable
from secure_infer.audit.metrics import attack_metrics
from secure_infer.audit.models import ModelTarget, train_model
from secure_infer.audit.report import histogram, new_report
from secure_infer.audit.shadows import (
    STREAM_SHADOW,
    STREAM_TARGET,
    ShadowSpec,
    model_seed,
    train_shadows,
)

__all__ = ["THREAT_MODEL", "run_subject", "subject_groups"]

THREAT_MODEL = (
    "Black-box score access to the target. For each audited subject the attacker holds samples "
    "from the subject's distribution (other records of the subject, never the exact training "
    "records), knows the training recipe, and trains reference models on population data."
)


def subject_groups(attrs: dict[str, np.ndarray], key: list[str]) -> np.ndarray:
    """Subject id per row: the index of the row's joint value of the ``key`` columns."""
    missing = [k for k in key if k not in attrs]
    if missing:
        raise AuditConfigError(f"subject.key: unknown columns {missing}; available {sorted(attrs)}")
    codes = np.stack([np.unique(attrs[k], return_inverse=True)[1] for k in key], axis=1)
    return np.unique(codes, axis=0, return_inverse=True)[1].reshape(-1)


def run_subject(cfg: AuditConfig) -> dict[str, Any]:
    """Run the subject-membership audit of ``cfg``; returns the report dict."""
    t_start = time.perf_counter()
    s = cfg.subject
    ds = load_dataset(cfg.data.name)
    gid = subject_groups(ds.attributes, s.key)
    rng = np.random.default_rng(cfg.data.seed)
    need = s.records_per_subject + s.known_per_subject
    sizes = np.bincount(gid)
    eligible = np.flatnonzero((sizes >= need) & (sizes <= 4 * need))
    if len(eligible) < s.n_subjects:
        raise DataUnavailable(
            f"only {len(eligible)} subjects of {ds.name} have {need}..{4 * need} records; "
            f"subject.n_subjects is {s.n_subjects}"
        )
    subjects = rng.choice(eligible, s.n_subjects, replace=False)
    member = rng.permutation(s.n_subjects) < s.n_subjects // 2
    owned, known = [], []
    for g in subjects:
        rows = rng.permutation(np.flatnonzero(gid == g))
        owned.append(rows[: s.records_per_subject])
        known.append(rows[s.records_per_subject : need])
    member_rows = np.concatenate([o for o, m in zip(owned, member, strict=True) if m])
    # Reference models train on as many rows as the target, drawn from a pool twice that size
    # (the target's background is the pool's first background_size rows).
    n_train = s.background_size + len(member_rows)
    outside = np.flatnonzero(~np.isin(gid, subjects))
    if len(outside) < 2 * n_train:
        raise DataUnavailable(
            f"subject.background_size={s.background_size}: the reference models' pool needs "
            f"2 x (background_size + {len(member_rows)} member records) = {2 * n_train} rows "
            f"outside the audited subjects; {ds.name} has {len(outside)} (lower "
            "subject.background_size, subject.n_subjects or subject.records_per_subject)"
        )
    ref_pool = rng.choice(outside, 2 * n_train, replace=False)
    train_rows = np.concatenate([ref_pool[: s.background_size], member_rows])
    recipe = cfg.model.recipe()
    seed = model_seed(cfg.data.seed, STREAM_TARGET)  # never a reference model's seed
    model = train_model(ds.x[train_rows], ds.y[train_rows], ds.n_classes, recipe, seed)
    target = ModelTarget(model, ds.n_features, ds.n_classes, "MLP trained by the audit tool")

    known_rows = np.concatenate(known)
    keep = np.zeros((s.n_reference, len(ref_pool)), bool)
    for k in range(s.n_reference):
        keep[k, rng.choice(len(ref_pool), len(train_rows), replace=False)] = True
    spec = ShadowSpec(
        ds.x[ref_pool], ds.y[ref_pool], ds.x[known_rows], ds.n_classes, recipe, keep,
        cfg.data.seed, {**ds.provenance.to_dict(), "subject_key": s.key}, (STREAM_SHADOW,),
    )  # fmt: skip
    t0 = time.perf_counter()
    run = train_shadows(
        spec, workers=cfg.run.workers, ray_address=cfg.run.ray_address or None,
        cache=Path(cfg.run.cache_dir) if cfg.run.cache_dir else None, progress=cfg.run.progress,
        label="reference models",
    )  # fmt: skip
    shadow_s = time.perf_counter() - t0

    y_known = ds.y[known_rows]
    t_logits = target.logits(ds.x[known_rows])
    phi_ref = logit_confidence(run.logits, np.broadcast_to(y_known, run.logits.shape[:2]))
    z = (logit_confidence(t_logits, y_known) - phi_ref.mean(0)) / (phi_ref.std(0) + 1e-6)
    per_subject = np.repeat(np.arange(s.n_subjects), s.known_per_subject)
    counts = np.bincount(per_subject)

    def by_subject(v: np.ndarray) -> np.ndarray:
        return np.bincount(per_subject, weights=v) / counts

    t1 = time.perf_counter()
    scores = {
        "subject_loss": by_subject(np.log(confidence(t_logits, y_known) + 1e-30)),
        "subject_lira": by_subject(z),
    }
    score_s = (time.perf_counter() - t1) / len(scores)
    attacks = [
        {
            "name": n,
            **attack_metrics(v, member),
            "wall_s": score_s,
            "histogram": histogram(v, member),
        }
        for n, v in scores.items()
    ]
    acc_rows = {
        "member": member_rows,
        "non-member": np.concatenate([o for o, m in zip(owned, member, strict=True) if not m]),
    }
    acc = {
        k: float((target.logits(ds.x[r]).argmax(1) == ds.y[r]).mean()) for k, r in acc_rows.items()
    }
    report = new_report("subject", cfg, ds.provenance.to_dict(), THREAT_MODEL)
    report["assumptions"] += [
        "Subjects are pseudo-households: records sharing the subject.key columns (the public KDD "
        "file has no household identifier).",
        "The reference models' recipe matches the target's; the target is trained by the tool.",
    ]
    report["target"] = {
        "description": target.description, "trained_by_tool": True,
        "members": int(member.sum()), "non_members": int((~member).sum()),
        "train_accuracy": acc["member"], "test_accuracy": acc["non-member"],
    }  # fmt: skip
    report["shadows"] = {
        "count": s.n_reference, "trained": run.trained, "cached": run.cached,
        "cache_dir": str(run.cache_dir), "wall_s": shadow_s,
    }  # fmt: skip
    report["attacks"] = attacks
    top = np.argsort(-scores["subject_lira"])[: cfg.run.top_n]
    report["risk_table"] = {
        "attack": "subject_lira",
        "unit": "subject",
        "rows": [
            {
                "id": int(subjects[i]),
                "member": bool(member[i]),
                "score": float(scores["subject_lira"][i]),
                "records": int(sizes[subjects[i]]),
            }  # fmt: skip
            for i in top
        ],
    }
    report["wall_s"] = time.perf_counter() - t_start
    return report
