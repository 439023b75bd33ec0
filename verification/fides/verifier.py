"""`FidesVerifier`: the verification model, the attack detector and the re-classifier together.

Threat model (Fides, Kumar et al. 2023). The service provider is untrusted: it may return any
distribution (swap or average top classes, switch labels), feed the service model adversarial
inputs (FGSM), or answer with a cheaper model. The verification model is trusted: in deployment
it runs inside an attested enclave on a verifier node and receives the client's original input;
this class does NOT provide or check that enclave (the `tee` layer and `secure_infer.
fides_client` do; used directly, the verifier runs in the caller's process and is only as
trustworthy as that process). The detector
and re-classifier run on the client. Detection is statistical: it errs at the rates measured by
`bench/integrity.py`, and an attack that leaves the returned distribution statistically close to
the service model's honest one (e.g. a substitute that agrees closely) can go undetected.

The verification model's weights must stay SECRET from the service's operator: a service that
knows them can answer with the verifier's own distribution (a substitution by a model that costs
~10 % of its own) and is never flagged (`bench/fides_mimic.py`: detection 0.0 on MNIST, at the
service's accuracy). So there are two bundles. The full one (`save`) is for whoever hosts the
verifier's enclave; the CLIENT bundle (`save_client`: no verifier weights, only what the client
runs, the detector and re-classifier, plus the verifier's model digest that the client pins as
the enclave's measurement) is what gets published to clients.

Saved layout (no pickle): `fides.json` (format version, task, configs, threshold, the detector's
probability floor `log_floor`, metadata) and `verifier.safetensors`, `detector.safetensors`,
`reclassifier.safetensors`. Format 3 added `disagreement_bonus` (see `DISAGREEMENT_BONUS`);
formats 2 (no bonus) and 1 (no `log_floor` either; its detectors used a floor of 1e-7) still
load and score as they were calibrated. Format 4 added escalation (`escalation_margin`, and in
the full bundle `reference.safetensors`, the service model; see `Recomputed`). A client
bundle's `fides.json` says `"kind": "client"`, records `n_classes` and `verifier_model_digest`,
and has no verifier or reference net.

Escalation (format 4). The distilled verifier agrees with the service's top-1 on ~98-99 % of
MNIST queries, and a swap between the two classes it hesitates between looks like an honest
disagreement: that is what limited detection (docs/fides.md). A bundle with escalation also
holds the SERVICE's own model (the `reference`: whoever distils the verifier holds it), and the
enclave runs it on the queries where the verifier is least sure of its own top-1 (top-1 minus
top-2 probability <= `escalation_margin`, set in training so that a chosen fraction of queries
escalates; the margin depends on the input only, so the enclave decides before it sees any
answer). Those queries are checked EXACTLY: the service's distribution must equal the
recomputation (`exact_mismatch`), any other answer is an attack, and the recomputed top-1 is
the honest class. The others are judged by the detector as before. A service that knows (or
has distilled a copy of) the verifier and the published margin can predict which queries
escalate and answer honestly exactly there: against it only the random AUDITS count
(`audit_rate`: the enclave also recomputes each other query with that probability, drawn from
the OS's entropy inside the enclave, so the service cannot predict them). Costs: the reference's
compute on the escalated and audited fraction, in the enclave, and a client choosing
ambiguous inputs (blank images) escalates them all; the reference's weights are in the
enclave's bundle (the service's owner must accept that the verifier's host could read them on a
SIMULATED enclave: provision the bundle sealed where that matters).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checks import as_images, as_probs, as_texts, probs_array
from .detector import (
    LEGACY_LOG_FLOOR,
    LOG_FLOOR,
    divergence_features_np,
    reclassifier_features_np,
)
from .errors import InvalidInput, ModelFormatError
from .nets import MLPNet, load_net, read_json, save_net, write_json
from .text import load_tokenizer, tokenize

FORMAT_VERSION = 4  # 2 added `log_floor`, 3 `disagreement_bonus`, 4 escalation
READABLE_VERSIONS = (1, 2, 3, 4)
# Added to the detector's logit when the two distributions' top-1 classes differ. The GAN-trained
# detector under-weights confident disagreement at a 2 % false-positive operating point (it is
# trained on balanced clean/attacked rows): on three MNIST training runs its top-2 swap
# detection was 0.964-0.984 while "flag every top-1 disagreement" caught 0.98-0.99. Chosen on
# those three runs' test splits (0 -> 2: swap 0.984/0.964/0.966 -> 0.994/0.980/0.980, the other
# attacks >= 0.988 / 0.992 / 0.998); validated on fresh runs in docs/fides.md. The threshold is
# calibrated on the scores with the bonus, so the false-positive rate keeps its guarantee.
# Training applies it only to a verifier with GDTL fidelity >= 0.96 (`experiment.choose_bonus`:
# with reviews' ~0.75 it cost label-keeping attacks far more than it gained).
DISAGREEMENT_BONUS = 2.0
TASKS = ("image", "text")  # image: (N, 784) or (N, 1, 28, 28) in [0, 1]; text: strings or ids
# An escalated query's answer passes when every class's log-probability is within
# `EXACT_LOG_TOLERANCE` of the recomputation's (classes below `EXACT_LIVE` in both are not
# compared; logs floored at `EXACT_FLOOR`) and its top-1 is the recomputation's, unless the two
# classes tie within `EXACT_TIE` nats there. Honest differences are float32 rounding: another
# batch composition or thread count moves a log-probability by up to ~1e-5 on the CPU (a
# review measured 1.14e-5 over 12,806 queries, none failing); the attacks move the top classes
# by tenths of a nat, except where the two top classes (nearly) tie: a swap of them is caught
# by the label rule, an average of classes within 1e-3 nats changes nothing that matters. Both
# sides must compute in strict float32: nodes run classifiers on the CPU; a GPU service would
# have to turn TF32 off (PyTorch's cuDNN default, which moves them by ~1e-3: honest answers
# would fail), and half precision is out.
EXACT_LOG_TOLERANCE = 1e-3
EXACT_TIE = 1e-4
EXACT_LIVE = 1e-20
EXACT_FLOOR = 1e-30


@dataclass(frozen=True)
class Recomputed:
    """The reference (service) model's distribution on the escalated rows of a batch."""

    rows: np.ndarray  # (k,) int64, strictly increasing row indices into the batch
    probs: np.ndarray  # (k, C) float32

    @classmethod
    def none(cls, n_classes: int) -> Recomputed:
        return cls(np.zeros(0, np.int64), np.zeros((0, n_classes), np.float32))


def escalated_rows(
    verifier_probs: np.ndarray,
    margin: float,
    audit_rate: float = 0.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """The rows (int64, increasing) an escalating enclave recomputes: every query whose
    verifier top-1 margin is at most `margin`, and each other query with probability
    `audit_rate` (random audits; drawn from the OS's entropy, which nobody outside the enclave
    can predict, unless `rng` is given: reproducible evaluation only)."""
    chosen = _below_margin(verifier_probs, margin)
    if audit_rate:
        n = len(chosen)
        if rng is None:
            draws = np.frombuffer(os.urandom(4 * n), dtype="<u4") / 2.0**32
        else:
            draws = rng.random(n)
        chosen |= draws < audit_rate
    return chosen.nonzero()[0].astype(np.int64)


def _below_margin(verifier_probs: np.ndarray, margin: float) -> np.ndarray:
    """(N,) bool: the rows whose verifier top-1 margin is at most `margin` (the enclave's and
    the client's one escalation rule)."""
    return top_margin(np.asarray(verifier_probs, np.float32)) <= margin


def top_margin(p: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability of each row of an (N, C) array, C >= 2."""
    part = np.partition(p, p.shape[1] - 2, axis=1)
    return part[:, -1] - part[:, -2]


def exact_mismatch(service_probs: np.ndarray, reference_probs: np.ndarray) -> np.ndarray:
    """(k,) bool: rows where the service's distribution differs from the recomputation by more
    than `EXACT_LOG_TOLERANCE` in the log-probability of some class, or names another top-1
    than the recomputation's where that one leads by more than `EXACT_TIE` (see there)."""
    log_s = np.log(np.maximum(service_probs, EXACT_FLOOR))
    log_r = np.log(np.maximum(reference_probs, EXACT_FLOOR))
    live = np.maximum(service_probs, reference_probs) >= EXACT_LIVE
    moved = (np.where(live, np.abs(log_s - log_r), 0.0) > EXACT_LOG_TOLERANCE).any(axis=1)
    rows = np.arange(len(log_r))
    lead = log_r[rows, log_r.argmax(1)] - log_r[rows, log_s.argmax(1)]
    return moved | (lead > EXACT_TIE)


@dataclass(frozen=True)
class Verdict:
    """Fides' decision on one query."""

    attacked: bool  # score > threshold, or for an `exact` row: differs from the recomputation
    score: float  # detector logit (computed for every row; the threshold ignores `exact` rows)
    threshold: float  # calibrated on clean traffic to a target false-positive rate
    service_label: int  # top-1 of the distribution the service returned
    verifier_label: int  # top-1 of the verification model
    reclassified_label: int | None  # the re-classifier's estimate of the honest class, if attacked
    # Escalated: checked against the service model's recomputation in the enclave (`attacked`
    # is then "differs from it", and `reclassified_label` its top-1), not by the detector.
    exact: bool = False


@dataclass(frozen=True)
class Judgement:
    """Fides' decisions on a batch of queries, one list per `Verdict` field."""

    attacked: list[bool]
    score: list[float]
    threshold: float
    service_label: list[int]
    verifier_label: list[int]
    reclassified_label: list[int | None]
    exact: list[bool]

    def verdicts(self) -> list[Verdict]:
        return [
            Verdict(a, s, self.threshold, sl, vl, r, e)
            for a, s, sl, vl, r, e in zip(
                self.attacked,
                self.score,
                self.service_label,
                self.verifier_label,
                self.reclassified_label,
                self.exact,
                strict=True,
            )
        ]


class FidesVerifier:
    """Verification model + detector + re-classifier, with a calibrated threshold."""

    def __init__(
        self,
        task: str,
        verifier: nn.Module | None,
        detector: nn.Module,
        reclassifier: nn.Module,
        threshold: float,
        metadata: dict[str, Any] | None = None,
        max_length: int = 128,
        log_floor: float = LOG_FLOOR,
        *,
        disagreement_bonus: float = DISAGREEMENT_BONUS,
        n_classes: int | None = None,
        verifier_model_digest: str | None = None,
        verdicts_model_digest: str | None = None,
        reference: nn.Module | None = None,
        escalation_margin: float | None = None,
        audit_rate: float = 0.0,
    ) -> None:
        """`verifier` None makes a client-side instance (a client bundle): it judges
        distributions computed elsewhere and cannot run the verification model itself; it then
        needs `n_classes`, and carries the enclave model digest it was exported with.

        `escalation_margin` (with `reference`, the service model, unless client-side) turns on
        escalation (module docstring); None: every query is judged by the detector.
        `audit_rate`: with escalation, the enclave also recomputes each other query with this
        probability, at random (`escalated_rows`)."""
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if not 0.0 < log_floor < 1.0:  # also rejects NaN
            raise ValueError(f"log_floor must lie in (0, 1), got {log_floor!r}")
        self.task = task
        if verifier is None and n_classes is None:
            raise ValueError("a client-side FidesVerifier (no verifier net) needs n_classes")
        self.verifier = verifier.eval() if verifier is not None else None
        self.detector, self.reclassifier = detector.eval(), reclassifier.eval()
        self.threshold = float(threshold)
        self.n_classes = int(n_classes if verifier is None else verifier.config["n_classes"])
        self.verifier_model_digest = verifier_model_digest
        self.verdicts_model_digest = verdicts_model_digest
        self.metadata = dict(metadata or {})
        self.max_length = max_length
        self.log_floor = float(log_floor)  # the detector's feature floor (`GanConfig.log_floor`)
        if not 0.0 <= disagreement_bonus < float("inf"):  # also rejects NaN
            raise ValueError(f"disagreement_bonus must be finite, >= 0: {disagreement_bonus!r}")
        self.disagreement_bonus = float(disagreement_bonus)
        if escalation_margin is not None:
            if not 0.0 <= escalation_margin <= 1.0:  # also rejects NaN
                raise ValueError(f"escalation_margin must lie in [0, 1]: {escalation_margin!r}")
            if verifier is not None and reference is None:
                raise ValueError("escalation needs the reference (service) model")
            if reference is not None and reference.config["n_classes"] != self.n_classes:
                raise ValueError("the reference model's classes differ from the verifier's")
        elif reference is not None or audit_rate:
            raise ValueError("a reference model or audits without an escalation_margin")
        if not 0.0 <= audit_rate < 1.0:  # also rejects NaN
            raise ValueError(f"audit_rate must lie in [0, 1): {audit_rate!r}")
        self.escalation_margin = None if escalation_margin is None else float(escalation_margin)
        self.audit_rate = float(audit_rate)
        self.reference = reference.eval() if reference is not None else None
        self._tokenizer: Any = None

    @property
    def client_only(self) -> bool:
        """True for a client bundle: no verification model here (it runs in an enclave)."""
        return self.verifier is None

    def _net(self) -> nn.Module:
        if self.verifier is None:
            raise ModelFormatError(
                "this is a client bundle: the verification model is not in it (it runs in the "
                "verifier's enclave); judge distributions with `judge` / `judge_columns`"
            )
        return self.verifier

    def prepare(self, inputs: object) -> torch.Tensor:
        """Validate client inputs and turn them into the verification model's input tensor."""
        if self.task == "image":
            return as_images(inputs)
        if isinstance(inputs, torch.Tensor):
            if inputs.dtype != torch.int64 or inputs.dim() != 2 or len(inputs) == 0:
                raise InvalidInput("text token ids must be a non-empty int64 (N, T) tensor")
            vocab = self._net().config["bert"]["vocab_size"]
            if (inputs < 0).any() or (inputs >= vocab).any():
                raise InvalidInput(f"token ids must lie in [0, {vocab})")
            return inputs
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer()
        return tokenize(self._tokenizer, as_texts(inputs), self.max_length)

    @torch.no_grad()
    def verifier_probs(self, inputs: object) -> torch.Tensor:
        """The verification model's distribution (N, C) on the client's inputs."""
        return self._net()(self.prepare(inputs)).softmax(1)

    def scores(self, service_probs: torch.Tensor, verifier_probs: torch.Tensor) -> torch.Tensor:
        """Detector logits (N,) for already validated distributions (the same computation as
        `judge`'s, so a threshold calibrated on these scores is the one `judge` applies)."""
        ps, pv = (np.asarray(p.detach(), np.float32) for p in (service_probs, verifier_probs))
        return torch.from_numpy(self._detect(ps, pv)[1])

    def escalates(self, verifier_probs: np.ndarray) -> np.ndarray:
        """(N,) bool: the queries the enclave recomputes with the service model (see
        `Recomputed`): the verifier's top-1 margin is at most `escalation_margin`."""
        if self.escalation_margin is None:
            return np.zeros(len(verifier_probs), bool)
        return _below_margin(verifier_probs, self.escalation_margin)

    @torch.no_grad()
    def recompute(
        self,
        x: torch.Tensor,
        verifier_probs: torch.Tensor,
        rng: np.random.Generator | None = None,
    ) -> Recomputed | None:
        """The reference model's distribution on the escalated and audited rows of the
        prepared inputs `x`, as the enclave computes it (None without escalation; `rng`: see
        `escalated_rows`)."""
        if self.escalation_margin is None:
            return None
        if self.reference is None:
            raise ModelFormatError("this bundle has no reference model (a client bundle?)")
        rows = escalated_rows(verifier_probs.numpy(), self.escalation_margin, self.audit_rate, rng)
        if not len(rows):
            return Recomputed.none(self.n_classes)
        probs = self.reference(x[torch.from_numpy(rows)]).softmax(1).float()
        return Recomputed(rows, np.ascontiguousarray(probs.numpy()))

    def calibration_scores(
        self, service_probs: torch.Tensor, verifier_probs: torch.Tensor
    ) -> torch.Tensor:
        """`scores`, with -inf on escalated queries: those are checked exactly, never by the
        threshold, so a threshold calibrated on these scores spends its false-positive budget
        on the queries the detector judges."""
        scores = self.scores(service_probs, verifier_probs)
        scores[torch.from_numpy(self.escalates(verifier_probs.detach().numpy()))] = -float("inf")
        return scores

    def check_recomputed(
        self, recomputed: Recomputed | None, verifier_probs: np.ndarray
    ) -> Recomputed | None:
        """`recomputed` validated against this bundle's escalation rule and the verifier's
        distribution: what a client checks of an enclave's answer. `InvalidInput` unless the
        rows are increasing row indices of the batch that include every escalated one (and,
        without audits, no other), with one valid distribution each."""
        if self.escalation_margin is None:
            if recomputed is not None and len(recomputed.rows):
                raise InvalidInput("recomputed rows from a verifier without escalation")
            return None
        if recomputed is None:
            raise InvalidInput("the verifier escalates but sent no recomputed rows")
        n = len(verifier_probs)
        want = self.escalates(verifier_probs)
        rows = np.asarray(recomputed.rows)
        if rows.dtype.kind not in "iu" or rows.ndim != 1:
            raise InvalidInput("recomputed rows must be a 1-D integer array")
        if len(rows) and (rows[0] < 0 or rows[-1] >= n or (np.diff(rows) <= 0).any()):
            raise InvalidInput(f"recomputed rows are not increasing row indices of {n} inputs")
        chosen = np.zeros(n, bool)
        chosen[rows] = True
        missing = (want & ~chosen).nonzero()[0]
        if len(missing):
            raise InvalidInput(
                f"escalated rows {missing.tolist()[:8]} were not recomputed "
                f"(margin <= {self.escalation_margin})"
            )
        if not self.audit_rate and (chosen & ~want).any():
            raise InvalidInput(
                "recomputed rows that do not escalate, from a verifier that audits none"
            )
        if not len(rows):
            return Recomputed.none(self.n_classes)
        try:
            probs = probs_array(recomputed.probs, self.n_classes, n_rows=len(rows))
        except InvalidInput as exc:
            raise InvalidInput(f"recomputed distributions: {exc}") from None
        return Recomputed(rows.astype(np.int64), probs)

    def _detect(self, ps: np.ndarray, pv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(divergence features, detector logits) for validated float32 arrays."""
        features = divergence_features_np(ps, pv, self.log_floor)
        logit = _apply(self.detector, features)[:, 0]
        if self.disagreement_bonus:
            differ = ps.argmax(1) != pv.argmax(1)
            logit = logit + np.float32(self.disagreement_bonus) * differ.astype(np.float32)
        return features, logit

    @torch.no_grad()
    def verify(self, inputs: object, service_probs: object) -> list[Verdict]:
        """One `Verdict` per query; raises `InvalidInput` on malformed inputs or outputs."""
        net = self._net()
        x = self.prepare(inputs)
        ps = as_probs(service_probs, self.n_classes, n_rows=len(x))
        pv = net(x).softmax(1)
        return self.judge(ps, pv, self.recompute(x, pv))

    def judge(
        self, service_probs: object, verifier_probs: object, recomputed: Recomputed | None = None
    ) -> list[Verdict]:
        """Verdicts from both distributions, the verifier's computed elsewhere (an enclave),
        and with escalation the enclave's `recomputed` rows.

        All are validated (`InvalidInput` on shape, range or normalisation errors, or
        recomputed rows that are not the escalated ones)."""
        return self.judge_columns(service_probs, verifier_probs, recomputed).verdicts()

    def judge_columns(
        self, service_probs: object, verifier_probs: object, recomputed: Recomputed | None = None
    ) -> Judgement:
        """`judge`'s decisions as columns (what a caller that builds its own per-row objects
        wants: the client does, on every verified request). Features in numpy, the two small
        networks in torch: ~0.15 ms for one row, ~0.5 ms for 256 on one core."""
        pv = probs_array(verifier_probs, self.n_classes)
        ps = probs_array(service_probs, self.n_classes, n_rows=len(pv))
        return self.judge_checked(ps, pv, self.check_recomputed(recomputed, pv))

    def judge_checked(
        self, ps: np.ndarray, pv: np.ndarray, recomputed: Recomputed | None
    ) -> Judgement:
        """`judge_columns` on what its checks already returned: `probs_array` for both
        distributions and `check_recomputed` (a caller that checks each side where it
        arrives, to blame the right node, does not pay for the checks twice)."""
        features, score = self._detect(ps, pv)
        flagged = score > self.threshold
        exact = np.zeros(len(ps), bool)
        recl: list[int | None] = [None] * len(ps)
        if recomputed is not None and len(recomputed.rows):
            rows = recomputed.rows
            exact[rows] = True
            flagged[rows] = exact_mismatch(ps[rows], recomputed.probs)
            for i, label, bad in zip(
                rows.tolist(),
                recomputed.probs.argmax(1).tolist(),
                flagged[rows].tolist(),
                strict=True,
            ):
                if bad:  # the recomputation's top-1 is the honest class
                    recl[i] = label
        detected = flagged & ~exact
        if detected.any():  # the re-classifier runs only where the detector flagged an attack
            rows = detected.nonzero()[0]
            feats = reclassifier_features_np(ps[rows], pv[rows], features[rows], self.log_floor)
            labels = _apply(self.reclassifier, feats).argmax(1).tolist()
            for i, label in zip(rows.tolist(), labels, strict=True):
                recl[i] = label
        # Python lists: iterating arrays element by element costs microseconds a row.
        return Judgement(
            attacked=flagged.tolist(),
            score=score.tolist(),
            threshold=self.threshold,
            service_label=ps.argmax(1).tolist(),
            verifier_label=pv.argmax(1).tolist(),
            reclassified_label=recl,
            exact=exact.tolist(),
        )

    def save(self, directory: str | Path) -> Path:
        """Write the safetensors weights and `fides.json` into `directory` (created): the FULL
        bundle, verification model included (for the verifier's enclave host, not clients)."""
        net = self._net()
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        config = {
            "format_version": FORMAT_VERSION,
            "task": self.task,
            "threshold": self.threshold,
            "max_length": self.max_length,
            "log_floor": self.log_floor,
            "disagreement_bonus": self.disagreement_bonus,
            "escalation_margin": self.escalation_margin,
            "audit_rate": self.audit_rate,
            "metadata": self.metadata,
            "nets": {
                "verifier": save_net(net, path, "verifier"),
                **{name: save_net(getattr(self, name), path, name) for name in _CLIENT_NETS},
            },
        }
        if self.reference is not None:
            config["nets"]["reference"] = save_net(self.reference, path, "reference")
        write_json(path / "fides.json", config)
        return path

    def save_client(
        self,
        directory: str | Path,
        verifier_model_digest: str,
        verdicts_model_digest: str | None = None,
    ) -> Path:
        """Write the CLIENT bundle into `directory` (created): detector, re-classifier,
        threshold, and `verifier_model_digest` (hex, the enclave model digest of the full
        bundle, which a client pins) and, for protocol "verdicts", `verdicts_model_digest`;
        no verification model weights."""
        for digest in (verifier_model_digest, verdicts_model_digest):
            if digest is not None and (
                len(digest) != 96 or not all(c in "0123456789abcdef" for c in digest)
            ):
                raise ValueError("model digests must be 96 lower-case hex digits (SHA-384)")
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        if (path / "verifier.safetensors").exists() or (path / "reference.safetensors").exists():
            raise ValueError(f"{path} holds verification model weights: not a client directory")
        config = {
            "format_version": FORMAT_VERSION,
            "kind": "client",
            "task": self.task,
            "n_classes": self.n_classes,
            "verifier_model_digest": verifier_model_digest,
            "verdicts_model_digest": verdicts_model_digest,
            "threshold": self.threshold,
            "max_length": self.max_length,
            "log_floor": self.log_floor,
            "disagreement_bonus": self.disagreement_bonus,
            "escalation_margin": self.escalation_margin,
            "audit_rate": self.audit_rate,
            "metadata": self.metadata,
            "nets": {name: save_net(getattr(self, name), path, name) for name in _CLIENT_NETS},
        }
        write_json(path / "fides.json", config)
        return path

    @classmethod
    def load(cls, directory: str | Path) -> FidesVerifier:
        """Load a directory written by `save`; raises `ModelFormatError` if inconsistent."""
        path = Path(directory)
        config = read_json(path / "fides.json")
        version = config.get("format_version")
        if version not in READABLE_VERSIONS:
            raise ModelFormatError(f"unsupported format_version {config.get('format_version')!r}")
        client = config.get("kind", "full") == "client"
        try:
            margin = config.get("escalation_margin") if version >= 4 else None
            names = _CLIENT_NETS if client else ("verifier", *_CLIENT_NETS)
            if margin is not None and not client:
                names = (*names, "reference")
            nets = {name: load_net(config["nets"][name], path, name) for name in names}
            return cls(
                config["task"],
                nets.get("verifier"),
                nets["detector"],
                nets["reclassifier"],
                config["threshold"],
                config.get("metadata"),
                config["max_length"],
                float(config["log_floor"]) if version >= 2 else LEGACY_LOG_FLOOR,
                disagreement_bonus=float(config["disagreement_bonus"]) if version >= 3 else 0.0,
                n_classes=int(config["n_classes"]) if client else None,
                verifier_model_digest=str(config["verifier_model_digest"]) if client else None,
                verdicts_model_digest=config.get("verdicts_model_digest") if client else None,
                reference=nets.get("reference"),
                escalation_margin=None if margin is None else float(margin),
                audit_rate=float(config.get("audit_rate", 0.0)) if version >= 4 else 0.0,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFormatError(f"{path / 'fides.json'} is malformed: {exc!r}") from exc


_CLIENT_NETS = ("detector", "reclassifier")  # what a client runs


_Views = tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]]]


def _numpy_views(net: MLPNet) -> _Views:
    """(shift, scale, [(weight^T, bias)]) as numpy views of `net`'s tensors, made once per set
    of tensors (a view sees in-place updates; new tensors, e.g. after `to()`, make new views)."""
    tensors = (
        net.shift,
        net.scale,
        *(p for m in net.net if isinstance(m, nn.Linear) for p in (m.weight, m.bias)),
    )
    cached = net.__dict__.get("_numpy_views")
    if cached is not None and all(a is b for a, b in zip(cached[0], tensors, strict=True)):
        return cached[1]
    arrays = [t.detach().numpy() for t in tensors]
    views: _Views = (
        arrays[0],
        arrays[1],
        [(w.T, b) for w, b in zip(arrays[2::2], arrays[3::2], strict=True)],
    )
    net.__dict__["_numpy_views"] = (tensors, views)
    return views


_BLAS: Any = None


def _one_blas_thread() -> Any:
    """A context in which numpy's BLAS runs on one thread (`threadpoolctl`; ~20 us).

    The detector's products are small (rows x ~50 features x 128 units). From a few hundred
    rows OpenBLAS splits them over every core, and its idle workers then spin-wait for more
    work: measured in `bench/fides_mesh.py` at batch 256, the client burned ~70 ms of CPU per
    verified request (3 ms of it work), which on a machine it shares with the nodes slowed the
    service and verifier calls by half (an enclave judging under protocol "verdicts" did the
    same). The limit is process-wide while it holds (BLAS keeps one global thread count), and
    covers the BLAS libraries loaded at the first call: numpy's, which runs these products."""
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController

        _BLAS = ThreadpoolController().select(user_api="blas")
    return _BLAS.limit(limits=1)


def _apply(net: nn.Module, x: np.ndarray) -> np.ndarray:
    """`net` on a float32 array, without autograd bookkeeping.

    An `MLPNet` (the detector and the re-classifier) runs in numpy on views of its own
    parameters (no copies, so training or `load_state_dict` is seen at once): the same
    arithmetic as its forward (standardise, Linear-ReLU layers, Linear) without torch's
    per-call dispatch, which dominates on the few rows a request judges (~0.3 ms -> ~0.03 ms
    for one row, on the client's and the enclave's critical path). Anything else runs in torch.
    """
    if isinstance(net, MLPNet):
        shift, scale, layers = _numpy_views(net)
        with _one_blas_thread():
            h = (x - shift) / scale
            for i, (weight_t, bias) in enumerate(layers):
                h = h @ weight_t + bias
                if i + 1 < len(layers):
                    np.maximum(h, 0.0, out=h)
        return h.astype(np.float32, copy=False)
    with torch.inference_mode():
        return net(torch.from_numpy(x)).numpy()
