"""``secure-infer audit KIND`` (membership, subject, distribution, llm-membership): run, report.

Flags override the TOML file (``--config``); ``--set section.key=value`` overrides any key.
Errors are :class:`~secure_infer.audit.errors.AuditError` (a ``ValueError``), which the main CLI
prints as ``ErrorType: message`` with a non-zero exit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from secure_infer.audit.config import KINDS, load_config, parse_override

__all__ = ["add_audit_parser", "run_audit"]


def add_audit_parser(sub: Any) -> None:
    """Register the ``audit`` command on the main CLI's subparsers ``sub``."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    audit = sub.add_parser(
        "audit", help="privacy audit of a model (membership, ...)", formatter_class=fmt
    )
    kinds = audit.add_subparsers(dest="audit_kind", required=True)
    helps = {
        "membership": "record-level membership inference (loss, LiRA, RMIA)",
        "subject": "subject-level membership inference (a subject owns several records)",
        "distribution": "distribution (property) inference, Suri & Evans",
        "llm-membership": "membership of texts in a fine-tuned SmolLM2 (ICP-MIA probing)",
    }
    for kind in KINDS:
        p = kinds.add_parser(kind, help=helps[kind], formatter_class=fmt)
        p.add_argument("--config", type=Path, help="audit TOML file (flags override it)")
        p.add_argument("--data", help="data set name (data.name)")
        p.add_argument("--out", type=Path, help="report directory (run.out_dir)")
        p.add_argument("--workers", type=int, help="local training processes (run.workers)")
        p.add_argument("--ray-address", help="train on this Ray cluster (run.ray_address)")
        p.add_argument("--cache-dir", help="shadow model cache (run.cache_dir)")
        p.add_argument("--seed", type=int, help="data.seed")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.add_argument(
            "--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
            help="override any config key (TOML value syntax; repeatable)",
        )  # fmt: skip
        if kind == "membership":
            p.add_argument("--target", help="target model file (target.path)")
            p.add_argument("--members", help="the target's training row indices (target.members)")
            p.add_argument("--shadows", type=int, help="membership.n_shadows")
        p.add_argument("--json", action="store_true", help="print the JSON report, not the summary")


def _overrides(args: argparse.Namespace) -> list[dict[str, Any]]:
    flags = {
        ("data", "name"): args.data,
        ("data", "seed"): args.seed,
        ("run", "out_dir"): str(args.out) if args.out else None,
        ("run", "workers"): args.workers,
        ("run", "ray_address"): args.ray_address,
        ("run", "cache_dir"): args.cache_dir,
        ("run", "progress"): False if args.no_progress else None,
        ("target", "path"): getattr(args, "target", None),
        ("target", "members"): getattr(args, "members", None),
        ("membership", "n_shadows"): getattr(args, "shadows", None),
    }
    out = [{sec: {key: v}} for (sec, key), v in flags.items() if v is not None]
    return out + [parse_override(s) for s in args.set]


def run_audit(args: argparse.Namespace) -> int:
    """Run the audit ``args.audit_kind``; write report.json and report.html; print a summary."""
    import json

    import torch

    from secure_infer.audit.report import summary, write_reports

    # One thread: the machines are small and shared, and OpenMP spin-waiting on oversubscribed
    # cores slows small models by orders of magnitude. Parallelism is over processes (run.workers).
    torch.set_num_threads(1)
    cfg = load_config(args.config, args.audit_kind, _overrides(args))
    if cfg.run.ray_address:
        from secure_infer.audit.shadows import require_ray

        require_ray(cfg.run.ray_address)  # fail before any training
    if cfg.kind == "membership":
        from secure_infer.audit.membership import run_membership as runner
    elif cfg.kind == "subject":
        from secure_infer.audit.subject import run_subject as runner
    elif cfg.kind == "llm-membership":
        from secure_infer.audit.llm import run_llm_membership as runner
    else:
        from secure_infer.audit.distribution import run_distribution as runner
    report = runner(cfg)
    jpath, hpath = write_reports(report, Path(cfg.run.out_dir))
    if args.json:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        sys.stdout.write(summary(report) + f"reports: {hpath}  {jpath}\n")
    return 0
