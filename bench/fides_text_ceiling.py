"""Fides text task: the fidelity and detection a distilled verifier reaches, per transfer depth.

    .venv/bin/python bench/fides_text_ceiling.py --json [--depths 0,1,2,3,4,5,6]
        [--sigmas 0.25,0.5,1,2,4]

The reviews service of `bench/integrity.py` (`SCALES["reviews"]["full"]` of
`verification.fides.artefacts`, seed 0: 4,000 reviews, frozen all-MiniLM-L6-v2 sentence
embedding + a 384-256-2 head) is trained exactly as `experiment.run` trains it. Every verifier
candidate of GDTL's text family at depth d is the embedding layer + the first d MiniLM layers
(transferred, frozen), mean pooling, and a fresh head. Its features are the mean-pooled hidden
states that `text.encode_reviews` caches with the reviews (no MiniLM forward pass is run here
once that cache exists; the first run ever encodes the 4,000 reviews, ~5-7 min).

1. Per depth d (`--depths`):
   - cost: verifier multiply-accumulates (`nets.bert_macs` at 128 tokens + the head's) as a
     fraction of the service's (`experiment.service_macs`); GDTL's budget is 10 %, which only
     d = 0 meets;
   - fidelity (top-1 agreement with the service) on `test` of
     (a) "gdtl": GDTL's head recipe as `gdtl.greedy_distill` trains a candidate (KL at T = 4 +
         0.1 x CE on the service's top-1, `training.kd_loss`, the scale's epochs and lr, last
         epoch), one head per width of the scale ([], [64], [256]), the best on `fides` kept;
     (b) "recipe": the best on `fides` of standardised inputs + MSE on the logit difference
         (z1 - z0), heads [] and [256], weight decay 0 / 1e-3 / 1e-2, 200 epochs of Adam at
         1e-3, early stopping on `fides` fidelity (checked every 5 epochs);
     both distilled on the service's logits on `train` (2,400 reviews);
   - detection, for each of the two heads: the project's detector and re-classifier
     (`detector.train_detector_gan` on `fides` with every attack of `experiment.attack_outputs`
     as the known catalogue), the threshold calibrated on clean `calib` outputs to a 2 % false
     positive rate (`calibrate_threshold`), then on `test`: the clean false-positive rate and,
     per attack, the detection rate (all queries and label-changing ones) and re-classification
     accuracy. "best" names the head with the higher `fides` fidelity (ties: lower `fides`
     RMSE of the logit difference).
2. Synthetic verifiers, to show what fidelity detection needs: the service's own distribution
   ("exact") and, per sigma in `--sigmas`, a verifier whose logit difference is the service's
   plus sigma x N(0, 1) noise (a verifier of controlled fidelity; one seeded generator per
   sigma): fidelity, detection per attack and clean false positives, as above.
3. The service: accuracy on `train` and `test`, and the quantiles of its confidence
   |p(positive) - 0.5| per split (a service that is unsure on many test reviews is hard to
   imitate there).

Targets (issue 5): detection >= 0.98 per attack at a false-positive rate <= 0.02. Everything is
seeded; one torch thread. About 8 min on 2 shared cores for all seven depths. One JSON object
on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from verification.fides.artefacts import SCALES  # noqa: E402
from verification.fides.data import SPLITS, load_reviews, split_indices  # noqa: E402
from verification.fides.detector import (  # noqa: E402
    calibrate_threshold,
    divergence_features,
    reclassifier_features,
    train_detector_gan,
)
from verification.fides.experiment import (  # noqa: E402
    Scale,
    TaskData,
    _service_and_substitute,
    attack_outputs,
    prepare_reviews,
    service_macs,
)
from verification.fides.nets import MLP, MLPNet, bert_macs  # noqa: E402
from verification.fides.text import MAX_LENGTH, encode_reviews  # noqa: E402
from verification.fides.training import accuracy, batched, fit, kd_loss  # noqa: E402

SCALE = SCALES["reviews"]["full"]
TARGETS = {"detection_rate_min": 0.98, "false_positive_rate_max": 0.02}
# Recipe (b): standardised inputs, MSE on the logit difference, early stopping on `fides`.
RECIPE_HIDDEN = ([], [256])
RECIPE_WEIGHT_DECAYS = (0.0, 1e-3, 1e-2)
RECIPE_EPOCHS, RECIPE_LR, RECIPE_EVAL_EVERY = 200, 1e-3, 5
NOISE_SEED = 1
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
log = logging.getLogger("fides_text_ceiling")


# --------------------------------------------------------------------------- data and service


def load(scale: Scale) -> tuple[TaskData, dict[str, torch.Tensor], nn.Module, nn.Module]:
    """The task's splits, the pooled prefix states per split (N, 7, 384), service, substitute.

    `prepare_reviews` and `encode_reviews` read the same on-disk cache of MiniLM states (index
    0: embedding layer, index d: after transformer layer d; the last one, normalised, is the
    service's sentence embedding). Service and substitute are seeded as in `experiment.run`.
    """
    data = prepare_reviews(scale)
    reviews = load_reviews(scale.n_samples or 4000, scale.seed)
    pooled = encode_reviews(reviews)["pooled"]
    idx = split_indices(len(reviews.labels), scale.seed)
    feats = {s: pooled[i] for s, i in idx.items()}
    torch.manual_seed(scale.seed)  # as run() does before building the service
    service, substitute = _service_and_substitute(data, scale)
    return data, feats, service, substitute


def confidence_stats(data: TaskData, logits: dict[str, torch.Tensor]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s in SPLITS:
        conf = (logits[s].softmax(1)[:, 1] - 0.5).abs()
        out[s] = {
            "accuracy": round(accuracy(logits[s], data.labels[s]), 4),
            "abs_p_minus_half_quantiles": {
                f"q{round(100 * q)}": round(conf.quantile(q).item(), 4) for q in QUANTILES
            },
            "fraction_abs_p_minus_half_below_0.2": round((conf < 0.2).float().mean().item(), 4),
        }
    return out


# --------------------------------------------------------------------------- head distillation


def logit_diff(t: torch.Tensor) -> torch.Tensor:
    return t[:, 1] - t[:, 0]


def mse_diff(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the binary logit difference (the only thing softmax sees)."""
    return ((logit_diff(student) - logit_diff(teacher)) ** 2).mean()


def fidelity(student: torch.Tensor, teacher: torch.Tensor) -> float:
    return (student.argmax(1) == teacher.argmax(1)).float().mean().item()


def selection_key(student: torch.Tensor, teacher: torch.Tensor) -> tuple[float, float]:
    """Model selection on `fides`: higher fidelity, then lower MSE of the logit difference."""
    return fidelity(student, teacher), -mse_diff(student, teacher).item()


def gdtl_head(x: torch.Tensor, t: torch.Tensor, hidden: list[int], scale: Scale) -> nn.Module:
    """(a) GDTL's candidate head training (`gdtl.greedy_distill.candidate`): plain MLP head,
    `kd_loss`, the scale's epochs and lr, the last epoch kept. The head is initialised right
    after seeding (in GDTL it is built with the whole candidate just before)."""
    torch.manual_seed(scale.gdtl.seed)
    head = MLP(x.shape[1], hidden, 2)
    fit(
        head,
        head.parameters(),
        x,
        t,
        kd_loss,
        epochs=scale.gdtl.epochs,
        lr=scale.gdtl.lr,
        seed=scale.gdtl.seed,
    )
    return head.eval()


def recipe_head(
    x: torch.Tensor,
    t: torch.Tensor,
    x_val: torch.Tensor,
    t_val: torch.Tensor,
    hidden: list[int],
    weight_decay: float,
    seed: int = 0,
) -> tuple[nn.Module, int]:
    """(b) Standardised inputs (`MLPNet.standardise_on` the train features), Adam on the MSE
    of the logit difference; keeps the weights of the epoch with the best `selection_key` on
    the validation split. Returns the head and that epoch."""
    torch.manual_seed(seed)
    net = MLPNet(x.shape[1], hidden, 2)
    net.standardise_on(x)
    opt = torch.optim.Adam(net.parameters(), lr=RECIPE_LR, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    best_key, best_state, best_epoch = (-1.0, 0.0), None, 0
    for epoch in range(1, RECIPE_EPOCHS + 1):
        net.train()
        for rows in torch.randperm(len(x), generator=gen).split(128):
            opt.zero_grad()
            mse_diff(net(x[rows]), t[rows]).backward()
            opt.step()
        if epoch % RECIPE_EVAL_EVERY == 0 or epoch == RECIPE_EPOCHS:
            net.eval()
            key = selection_key(batched(net, x_val), t_val)
            if key > best_key:
                best_key, best_state, best_epoch = key, copy.deepcopy(net.state_dict()), epoch
    net.load_state_dict(best_state)
    return net.eval(), best_epoch


def head_name(kind: str, hidden: list[int], weight_decay: float | None = None) -> str:
    name = f"{kind}[{','.join(map(str, hidden))}]"
    return name if weight_decay is None else f"{name}_wd{weight_decay:g}"


# --------------------------------------------------------------------------- detection


class Detection:
    """The project's detector pipeline for a given verifier distribution (as `experiment.run`:
    GAN on `fides` with every attack known, threshold on clean `calib`, metrics on `test`)."""

    def __init__(self, data: TaskData, service: nn.Module, substitute: nn.Module, scale: Scale):
        self.scale = scale
        self.ps = {s: batched(service, x).softmax(1) for s, x in data.surface.items()}
        self.attacked = {
            s: attack_outputs(data, s, service, substitute, scale) for s in ("fides", "test")
        }

    @torch.no_grad()
    def evaluate(self, pv: dict[str, torch.Tensor]) -> dict[str, Any]:
        cfg, ps = self.scale.gan, self.ps
        with torch.enable_grad():
            gan = train_detector_gan(ps["fides"], pv["fides"], self.attacked["fides"], cfg)

        def score(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return gan.detector(divergence_features(p, v, cfg.log_floor)).squeeze(1)

        threshold = calibrate_threshold(score(ps["calib"], pv["calib"]), self.scale.max_fpr)
        honest, v_test = ps["test"].argmax(1), pv["test"]
        per_attack = {}
        for name, pa in self.attacked["test"].items():
            flagged = score(pa, v_test) > threshold
            changed = pa.argmax(1) != honest
            feats = reclassifier_features(pa, v_test, floor=cfg.log_floor)
            recl = gan.reclassifier(feats).argmax(1)
            per_attack[name] = {
                "detection_rate": _mean(flagged),
                "detection_rate_label_changed": _mean(flagged[changed]),
                "reclassification_accuracy": _mean((recl == honest)[flagged]),
            }
        fp = _mean(score(ps["test"], v_test) > threshold)
        detected = min(a["detection_rate"] for a in per_attack.values())
        return {
            "fidelity_test": round(fidelity(v_test, ps["test"]), 4),
            "false_positive_rate": fp,
            "attacks": per_attack,
            "meets_target": fp <= TARGETS["false_positive_rate_max"]
            and detected >= TARGETS["detection_rate_min"],
        }


def _mean(mask: torch.Tensor) -> float | None:
    return round(mask.float().mean().item(), 4) if len(mask) else None


# --------------------------------------------------------------------------- the two tables


def depth_row(
    d: int,
    feats: dict[str, torch.Tensor],
    logits: dict[str, torch.Tensor],
    labels: torch.Tensor,
    bert_cfg: dict[str, Any],
    svc_macs: int,
    detection: Detection,
    scale: Scale,
) -> dict[str, Any]:
    """Both head recipes at depth d, their cost, fidelity and detection."""
    t0 = time.time()
    x = {s: f[:, d] for s, f in feats.items()}
    candidates: dict[str, dict[str, Any]] = {"gdtl": {}, "recipe": {}}
    for hidden in scale.widths:  # (a) one GDTL head per width
        head = gdtl_head(x["train"], logits["train"], hidden, scale)
        candidates["gdtl"][head_name("gdtl", hidden)] = (head, None)
    for hidden in RECIPE_HIDDEN:  # (b) the better recipe's small grid
        for wd in RECIPE_WEIGHT_DECAYS:
            head, epoch = recipe_head(
                x["train"], logits["train"], x["fides"], logits["fides"], hidden, wd
            )
            candidates["recipe"][head_name("std_mse", hidden, wd)] = (head, epoch)
    row: dict[str, Any] = {"depth": d}
    chosen: dict[str, tuple[tuple[float, float], dict[str, torch.Tensor]]] = {}
    for kind, heads in candidates.items():
        tried, best = {}, None
        for name, (head, epoch) in heads.items():
            out = {s: batched(head, v) for s, v in x.items()}
            key = selection_key(out["fides"], logits["fides"])
            tried[name] = {
                "fidelity_fides": round(key[0], 4),
                "fidelity_test": round(fidelity(out["test"], logits["test"]), 4),
                **({"epoch": epoch} if epoch is not None else {}),
            }
            if best is None or key > best[0]:
                best = (key, name, head, out)
        key, name, head, out = best
        macs = bert_macs(bert_cfg, d, MAX_LENGTH) + head.macs()
        chosen[kind] = (key, {s: o.softmax(1) for s, o in out.items()})
        row[kind] = {
            "head": name,
            "fidelity_fides": round(key[0], 4),
            "fidelity_test": round(fidelity(out["test"], logits["test"]), 4),
            "rmse_logit_diff_test": round(mse_diff(out["test"], logits["test"]).sqrt().item(), 3),
            "verifier_accuracy_test": round(accuracy(out["test"], labels), 4),
            "macs": macs,
            "mac_fraction": float(f"{macs / svc_macs:.4g}"),
            "within_budget": macs <= scale.verifier_budget * svc_macs,
            "candidates": tried,
        }
        log.info(
            "d=%d %s best %s: fides %.4f test %.4f",
            d,
            kind,
            name,
            key[0],
            row[kind]["fidelity_test"],
        )
    for kind in candidates:
        row[kind]["detection"] = detection.evaluate(chosen[kind][1])
    row["best"] = max(candidates, key=lambda k: chosen[k][0])
    row["seconds"] = round(time.time() - t0, 1)
    log.info(
        "d=%d best=%s detection %s (%.0f s)",
        d,
        row["best"],
        json.dumps(row[row["best"]]["detection"]),
        row["seconds"],
    )
    return row


def synthetic_verifiers(
    logits: dict[str, torch.Tensor], detection: Detection, sigmas: list[float]
) -> list[dict[str, Any]]:
    """The service's own distribution ("exact"), then per sigma: its logit difference plus
    sigma x N(0, 1) noise, as a two-class distribution."""
    rows = [{"verifier": "exact", **detection.evaluate(dict(detection.ps))}]
    for sigma in sigmas:
        gen = torch.Generator().manual_seed(NOISE_SEED)
        pv = {}
        for s in SPLITS:  # one generator per sigma, drawn split by split in SPLITS order
            noisy = logit_diff(logits[s]) + sigma * torch.randn(len(logits[s]), generator=gen)
            pv[s] = torch.stack([torch.zeros_like(noisy), noisy], 1).softmax(1)
        rows.append({"verifier": f"noise{sigma:g}", "sigma": sigma, **detection.evaluate(pv)})
        log.info("noise %g: %s", sigma, json.dumps(rows[-1]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--depths", default="0,1,2,3,4,5,6", help="transfer depths (0-6)")
    parser.add_argument("--sigmas", default="0.25,0.5,1,2,4", help="synthetic noise levels")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    t0 = time.time()
    depths = [int(v) for v in args.depths.split(",") if v.strip()]
    sigmas = [float(v) for v in args.sigmas.split(",") if v.strip()]

    data, feats, service, substitute = load(SCALE)
    n_layers = data.bert.config.num_hidden_layers
    if any(not 0 <= d <= n_layers for d in depths):
        parser.error(f"depths must lie in 0..{n_layers}")
    logits = {s: batched(service, x) for s, x in data.surface.items()}
    svc_macs = service_macs(data, service)
    detection = Detection(data, service, substitute, SCALE)
    rows = [
        depth_row(
            d,
            feats,
            logits,
            data.labels["test"],
            data.bert.config.to_dict(),
            svc_macs,
            detection,
            SCALE,
        )
        for d in depths
    ]
    doc = {
        "bench": "fides_text_ceiling",
        "scale": "reviews/full",
        "seed": SCALE.seed,
        "splits": {s: len(y) for s, y in data.labels.items()},
        "targets": {**TARGETS, "verifier_mac_budget": SCALE.verifier_budget},
        "service": {
            "macs": svc_macs,
            "accuracy_train": round(accuracy(logits["train"], data.labels["train"]), 4),
            "accuracy_test": round(accuracy(logits["test"], data.labels["test"]), 4),
            "per_split": confidence_stats(data, logits),
        },
        "recipes": {
            "gdtl": f"MLP head, kd_loss (T=4, +0.1 CE), {SCALE.gdtl.epochs} epochs, lr "
            f"{SCALE.gdtl.lr:g}, widths {SCALE.widths}, best on fides",
            "recipe": "standardised inputs, MSE on the logit difference, heads "
            f"{list(RECIPE_HIDDEN)}, weight decay {list(RECIPE_WEIGHT_DECAYS)}, "
            f"{RECIPE_EPOCHS} epochs, lr {RECIPE_LR:g}, "
            f"early stopping on fides every {RECIPE_EVAL_EVERY} epochs, best on fides",
        },
        "depths": rows,
        "synthetic": synthetic_verifiers(logits, detection, sigmas),
        "wall_s": round(time.time() - t0, 1),
        "platform": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
    }
    if args.json:
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
