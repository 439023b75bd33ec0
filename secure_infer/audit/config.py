"""Audit configuration: a TOML file, overridden by flags, validated before anything runs.

Sections and keys (defaults in the dataclasses below; docs/audit.md has an example file)::

    [data]          name, pool_size, population_size, seed
    [target]        path, members, seeds, certs, identity, insecure_dev
                    (omit path and members: the tool trains the target; mesh://NAME: served)
    [model]         hidden, epochs, batch_size, lr, weight_decay   (the training recipe)
    [membership]    attacks, n_shadows, fixed_variance, rmia_gamma, rmia_offline_a
    [distribution]  attribute, base_ratio, ratios, train_size, adv_models, victim_models,
                    probe_size, attacks, bootstrap
    [subject]       key, records_per_subject, n_subjects, known_per_subject, background_size,
                    n_reference
    [llm]           members, non_members, references, max_tokens, train_layers, epochs, lr,
                    batch_size, perturb, attacks          (llm-membership)
    [run]           workers, ray_address, cache_dir, out_dir, top_n, progress

Unknown sections or keys, wrong types and out-of-range values raise
:class:`~secure_infer.audit.errors.AuditConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secure_infer.audit.attacks import ATTACKS, MIN_PER_EXAMPLE
from secure_infer.audit.data import DATASETS
from secure_infer.audit.errors import AuditConfigError
from secure_infer.audit.models import Recipe

__all__ = [
    "DIST_ATTACKS",
    "FIXED_VARIANCE_BELOW",
    "KINDS",
    "MIN_PER_EXAMPLE",
    "AuditConfig",
    "load_config",
    "parse_override",
]

KINDS = ("membership", "subject", "distribution", "llm-membership")
DIST_ATTACKS = ("loss_test", "threshold_test", "kl", "pin")


@dataclass
class DataConfig:
    name: str = "adult"  # one of secure_infer.audit.data.DATASETS
    pool_size: int = 2000  # audited rows (members + non-members) when the tool trains the target
    population_size: int = 2000  # RMIA population rows z, disjoint from the audited rows
    seed: int = 0  # seeds every sampling and training step


@dataclass
class TargetConfig:
    path: str = ""  # model file (TorchScript or the tool's checkpoint), or mesh://NAME (a
    # classifier a node serves); empty: the tool trains the target
    members: str = ""  # .npy/.txt/.json with the dataset row indices the target was trained on
    seeds: list[str] = field(default_factory=list)  # mesh://: nodes to reach the mesh through
    certs: str = ""  # mesh://: directory with ca.crt and the client's certificate and key
    identity: str = "client"  # mesh://: the client certificate's name in `certs`
    insecure_dev: bool = False  # mesh://: plaintext gRPC on loopback (development only)


@dataclass
class ModelConfig:
    hidden: list[int] = field(default_factory=lambda: [64, 32])
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0

    def recipe(self) -> Recipe:
        return Recipe(tuple(self.hidden), self.epochs, self.batch_size, self.lr, self.weight_decay)


FIXED_VARIANCE_BELOW = 64  # fewer shadows: LiRA's default is one global variance per side


@dataclass
class MembershipConfig:
    attacks: list[str] = field(default_factory=lambda: list(ATTACKS))
    n_shadows: int = 8  # shadow = reference models; every row is IN exactly half of them
    # LiRA: one global std per side (true) or one per example (false); None ("auto", the
    # default): global below FIXED_VARIANCE_BELOW shadows (Carlini et al.). Per-example needs
    # at least MIN_PER_EXAMPLE IN and OUT models per example.
    fixed_variance: bool | None = None
    rmia_gamma: float = 1.0  # RMIA likelihood-ratio threshold
    rmia_offline_a: float = 0.3  # RMIA offline linear correction of p(x)

    def lira_fixed_variance(self) -> bool:
        """The variance LiRA uses: the configured one, or the default for ``n_shadows``."""
        if self.fixed_variance is None:
            return self.n_shadows < FIXED_VARIANCE_BELOW
        return self.fixed_variance


@dataclass
class DistributionConfig:
    attribute: str = "female"  # boolean attribute whose ratio the adversary infers
    base_ratio: float = 0.5  # ratio of the first distribution D0
    ratios: list[float] = field(default_factory=lambda: [0.2])  # each is tested against base
    train_size: int = 1000  # rows per trained model
    adv_models: int = 16  # adversary's models per ratio (meta-classifier / threshold training)
    victim_models: int = 8  # victim models per ratio (the evaluation)
    probe_size: int = 500  # rows per distribution used to query the models
    attacks: list[str] = field(default_factory=lambda: list(DIST_ATTACKS))
    bootstrap: int = 1000  # bootstrap resamples for the confidence intervals


@dataclass
class SubjectConfig:
    key: list[str] = field(
        default_factory=lambda: [
            "state_of_previous_residence",
            "country_of_birth_self",
            "country_of_birth_father",
            "country_of_birth_mother",
            "race",
            "hispanic_origin",
            "detailed_household_summary_in_household",
        ]
    )  # columns whose joint value defines a subject (pseudo-household)
    records_per_subject: int = 8  # records each subject contributes to training when a member
    n_subjects: int = 100  # audited subjects (half are members)
    known_per_subject: int = 8  # other records of the subject the attacker holds
    background_size: int = 2000  # non-subject rows in every training set
    n_reference: int = 8  # reference models trained without any audited subject


LLM_ATTACKS = ("loss", "reference", "icp_reference", "icp_self")


@dataclass
class LLMConfig:
    members: int = 64  # reviews the tool fine-tunes SmolLM2 on
    non_members: int = 64  # held-out reviews of the same source and length
    references: int = 2  # held-out reviews used as in-context references (icp_reference)
    max_tokens: int = 32  # every text is cut to exactly this many tokens
    train_layers: int = 4  # last decoder blocks fine-tuned (+ final norm); embedding frozen
    epochs: int = 2
    lr: float = 1e-4
    batch_size: int = 8
    perturb: float = 0.3  # fraction of words dropped in the self-perturbed context (icp_self)
    attacks: list[str] = field(default_factory=lambda: list(LLM_ATTACKS))


@dataclass
class RunConfig:
    workers: int = 2  # local processes for shadow training
    ray_address: str = ""  # Ray cluster address; empty: local processes
    cache_dir: str = ""  # empty: $SECURE_INFER_CACHE/audit or ~/.cache/secure-infer/audit
    out_dir: str = "audit-report"
    top_n: int = 20  # rows of the per-example risk table
    progress: bool = True  # tqdm progress bars on stderr


@dataclass
class AuditConfig:
    kind: str = "membership"
    data: DataConfig = field(default_factory=DataConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    membership: MembershipConfig = field(default_factory=MembershipConfig)
    distribution: DistributionConfig = field(default_factory=DistributionConfig)
    subject: SubjectConfig = field(default_factory=SubjectConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = {f.name for f in dataclasses.fields(AuditConfig) if f.name != "kind"}


def _coerce(where: str, default: Any, value: Any) -> Any:
    if default is None:  # an optional bool whose unset value is "auto"
        if value == "auto":
            return None
        if not isinstance(value, bool):
            raise AuditConfigError(
                f'{where}: expected true, false or "auto", got {type(value).__name__} {value!r}'
            )
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:  # list
        ok = isinstance(value, list)
        if ok and default:
            value = [_coerce(f"{where}[{i}]", default[0], v) for i, v in enumerate(value)]
    if not ok:
        raise AuditConfigError(
            f"{where}: expected {type(default).__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def _apply(cfg: AuditConfig, doc: dict[str, Any], origin: str) -> None:
    for sec, body in doc.items():
        if sec == "kind":
            cfg.kind = _coerce(f"{origin}: kind", "", body)
            continue
        if sec not in _SECTIONS:
            raise AuditConfigError(f"{origin}: unknown section [{sec}]; known: {sorted(_SECTIONS)}")
        if not isinstance(body, dict):
            raise AuditConfigError(f"{origin}: [{sec}] must be a table")
        obj = getattr(cfg, sec)
        defaults = dataclasses.asdict(type(obj)())  # types come from the defaults
        for key, value in body.items():
            if key not in defaults:
                raise AuditConfigError(
                    f"{origin}: unknown key {sec}.{key}; known: {sorted(defaults)}"
                )
            setattr(obj, key, _coerce(f"{origin}: {sec}.{key}", defaults[key], value))


def parse_override(text: str) -> dict[str, Any]:
    """``section.key=value`` (value in TOML syntax, or a bare string) -> nested dict."""
    path, sep, raw = text.partition("=")
    sec, dot, key = path.strip().partition(".")
    if not sep or not dot or not key:
        raise AuditConfigError(f"--set {text!r}: expected section.key=value")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return {sec: {key: value}}


def _check(cfg: AuditConfig) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise AuditConfigError(msg)

    need(cfg.kind in KINDS, f"kind: {cfg.kind!r} is not one of {KINDS}")
    need(
        cfg.data.name in DATASETS, f"data.name: {cfg.data.name!r} is not one of {sorted(DATASETS)}"
    )
    need(cfg.data.seed >= 0, "data.seed must be >= 0")
    need(cfg.data.pool_size >= 20, "data.pool_size must be >= 20")
    need(cfg.data.population_size >= 10, "data.population_size must be >= 10")
    need(bool(cfg.target.path) == bool(cfg.target.members),
         "target.path and target.members go together (a model file and its training "
         "rows)")  # fmt: skip
    if cfg.target.path.startswith("mesh://"):
        need(bool(cfg.target.seeds), "target.seeds: a mesh:// target needs seed addresses")
        need(
            bool(cfg.target.certs) or cfg.target.insecure_dev,
            "target.certs: a mesh:// target needs the client's certificates (or insecure_dev)",
        )
    need(all(h > 0 for h in cfg.model.hidden), "model.hidden: widths must be positive")
    need(cfg.model.epochs >= 1 and cfg.model.batch_size >= 1, "model.epochs and batch_size >= 1")
    need(cfg.model.lr > 0, "model.lr must be > 0")
    m = cfg.membership
    bad = sorted(set(m.attacks) - set(ATTACKS))
    need(not bad, f"membership.attacks: unknown {bad}; choose from {ATTACKS}")
    need(bool(m.attacks), "membership.attacks is empty")
    need(m.n_shadows >= 2 and m.n_shadows % 2 == 0, "membership.n_shadows must be even and >= 2")
    per_side = m.n_shadows // 2  # balanced masks: every row is IN (and OUT) of half the shadows
    need(
        m.fixed_variance is not False or per_side >= MIN_PER_EXAMPLE,
        f"membership.fixed_variance=false (a per-example LiRA variance) needs at least "
        f"{MIN_PER_EXAMPLE} IN and {MIN_PER_EXAMPLE} OUT shadow models per example, i.e. "
        f"membership.n_shadows >= {2 * MIN_PER_EXAMPLE}; n_shadows is {m.n_shadows} "
        f"({per_side} per side): use more shadows or fixed_variance=true",
    )
    need(m.rmia_gamma > 0, "membership.rmia_gamma must be > 0")
    need(0 <= m.rmia_offline_a <= 1, "membership.rmia_offline_a must be in [0, 1]")
    d = cfg.distribution
    need(
        all(0 <= r <= 1 for r in [*d.ratios, d.base_ratio]), "distribution ratios must be in [0, 1]"
    )
    need(d.base_ratio not in d.ratios, "distribution.ratios must not contain base_ratio")
    need(bool(d.ratios), "distribution.ratios is empty")
    need(
        not any({d.base_ratio, r} == {0.0, 1.0} for r in d.ratios),
        "distribution: ratios 0 and 1 differ in every row (one row tells them apart); "
        "n_leaked is not defined for that pair",
    )
    bad = sorted(set(d.attacks) - set(DIST_ATTACKS))
    need(not bad, f"distribution.attacks: unknown {bad}; choose from {DIST_ATTACKS}")
    need(
        d.adv_models >= 2 and d.victim_models >= 1,
        "distribution: adv_models >= 2, victim_models >= 1",
    )
    need(d.train_size >= 10 and d.probe_size >= 10, "distribution: train_size, probe_size >= 10")
    s = cfg.subject
    need(s.n_subjects >= 4 and s.n_subjects % 2 == 0, "subject.n_subjects must be even and >= 4")
    need(s.records_per_subject >= 1 and s.known_per_subject >= 1, "subject record counts >= 1")
    need(s.n_reference >= 1, "subject.n_reference must be >= 1")
    need(bool(s.key), "subject.key is empty")
    c = cfg.llm
    need(c.members >= 2 and c.non_members >= 2, "llm.members and llm.non_members must be >= 2")
    need(c.references >= 1 and c.max_tokens >= 8, "llm.references >= 1, llm.max_tokens >= 8")
    need(1 <= c.train_layers <= 30, "llm.train_layers must be in [1, 30] (SmolLM2 has 30)")
    need(c.epochs >= 1 and c.batch_size >= 1 and c.lr > 0, "llm.epochs, batch_size >= 1, lr > 0")
    need(0 < c.perturb < 1, "llm.perturb must be in (0, 1)")
    bad = sorted(set(c.attacks) - set(LLM_ATTACKS))
    need(not bad and bool(c.attacks), f"llm.attacks: unknown {bad}; choose from {LLM_ATTACKS}")
    need(cfg.run.workers >= 1, "run.workers must be >= 1")
    need(cfg.run.top_n >= 1, "run.top_n must be >= 1")


def load_config(
    path: Path | None, kind: str, overrides: list[dict[str, Any]] | None = None
) -> AuditConfig:
    """Defaults, then the TOML file at ``path``, then ``overrides`` (flags), then validation."""
    cfg = AuditConfig(kind=kind)
    if path is not None:
        try:
            doc = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise AuditConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise AuditConfigError(f"{path}: invalid TOML: {exc}") from None
        _apply(cfg, doc, str(path))
        if cfg.kind != kind:
            raise AuditConfigError(f"{path} is a {cfg.kind!r} config; the command is {kind!r}")
    for ov in overrides or []:
        _apply(cfg, ov, "flags")
    _check(cfg)
    return cfg
