"""Distribution inference on Adult (ratio of women): n_leaked, PIN invariance, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import binom

from secure_infer.audit.distribution import (
    PINMetaClassifier,
    accuracy_bound,
    n_count_test,
    n_leaked,
)
from secure_infer.audit.models import build_mlp
from secure_infer.audit.shadows import ShadowRun, ShadowSpec, train_shadows
from secure_infer.cli import main
from tests.audit.conftest import validate_report


def test_n_leaked_is_suri_and_evans_definition() -> None:
    """n_leaked as the authors define it (their code, FormEstDistRisks get_n_effective):
    log(1 - (2w - 1)^2) / log(max(lo / hi, (1 - hi) / (1 - lo)))."""
    # By hand: w 0.92, 0.5 vs 0.8: log(1 - 0.84^2) / log(max(0.625, 0.4)) = -1.2228 / -0.4700.
    assert n_leaked(0.92, 0.5, 0.8) == pytest.approx(np.log(1 - 0.84**2) / np.log(0.625))
    assert n_leaked(0.92, 0.5, 0.8) == pytest.approx(2.6017, abs=1e-4)  # the review: 2.60
    # 0.5 vs 0.2: rho = max(0.4, 0.5/0.8 = 0.625); symmetric in the two ratios.
    assert n_leaked(0.8, 0.5, 0.2) == pytest.approx(np.log(1 - 0.6**2) / np.log(0.625))
    assert n_leaked(0.8, 0.2, 0.5) == n_leaked(0.8, 0.5, 0.2)
    assert n_leaked(0.5, 0.2, 0.5) == 0.0 and n_leaked(0.4, 0.2, 0.5) == 0.0
    assert n_leaked(1.0, 0.2, 0.5) == float("inf")
    assert np.isfinite(n_leaked(0.99, 0.0, 0.5))  # rho = (1 - 0.5) / 1
    # It inverts the paper's accuracy bound for n rows, 1/2 + 1/2 sqrt(1 - rho^n).
    for w in (0.55, 0.7, 0.9, 0.99):
        assert accuracy_bound(n_leaked(w, 0.3, 0.6), 0.3, 0.6) == pytest.approx(w)
    assert n_leaked(0.95, 0.2, 0.5) > n_leaked(0.9, 0.2, 0.5) > n_leaked(0.8, 0.2, 0.5)


def test_n_count_test_matches_the_binomial_count_test() -> None:
    assert n_count_test(0.5, 0.2, 0.5) == 0.0 and n_count_test(0.4, 0.2, 0.5) == 0.0
    n = n_count_test(0.9, 0.2, 0.5)
    # Exact check of its definition: with round(n) rows, the best threshold on the count of
    # women distinguishes 0.2 from 0.5 with about 90 % accuracy.
    k = round(n)
    acc = max((binom.cdf(t, k, 0.2) + binom.sf(t, k, 0.5)) / 2 for t in range(k + 1))
    assert 0.87 < acc < 0.93, (n, acc)
    # The paper's n_leaked comes from an upper bound on any test's accuracy: never larger.
    assert n_leaked(0.9, 0.2, 0.5) < n


def test_pin_is_invariant_to_hidden_neuron_permutations() -> None:
    torch.manual_seed(0)
    mlp = build_mlp(10, 3, (8, 6))
    meta = PINMetaClassifier(10, [8, 6], 3)

    def flat(m: torch.nn.Module) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in m.parameters()])[None]

    before = meta(flat(mlp))
    perm1, perm2 = torch.randperm(8), torch.randperm(6)
    with torch.no_grad():
        l1, l2, l3 = mlp[0], mlp[2], mlp[4]
        l1.weight.copy_(l1.weight[perm1]), l1.bias.copy_(l1.bias[perm1])
        l2.weight.copy_(l2.weight[perm2][:, perm1]), l2.bias.copy_(l2.bias[perm2])
        l3.weight.copy_(l3.weight[:, perm2])
    x = torch.randn(4, 10)
    assert not torch.equal(flat(mlp), flat(build_mlp(10, 3, (8, 6))))
    torch.testing.assert_close(meta(flat(mlp)), before, rtol=1e-5, atol=1e-5)
    assert mlp(x).shape == (4, 3)


def test_distribution_audit_on_adult(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import secure_infer.audit.distribution as dist

    trained = {}  # the real training, observed: parameters per (split, ratio) group

    def observe(spec: ShadowSpec, **kw: object) -> ShadowRun:
        run = train_shadows(spec, **kw)
        trained[spec.provenance["split"], spec.provenance["ratio"]] = run.params
        return run

    monkeypatch.setattr(dist, "train_shadows", observe)
    out = tmp_path / "dist"
    rc = main([
        "audit", "distribution", "--data", "adult", "--workers", "2", "--no-progress",
        "--out", str(out), "--set", "distribution.ratios=[0.0]",
        "--set", "distribution.adv_models=8", "--set", "distribution.victim_models=4",
        "--set", "distribution.train_size=300", "--set", "distribution.probe_size=200",
        "--set", "distribution.bootstrap=200", "--set", "model.epochs=10",
    ])  # fmt: skip
    stdout = capsys.readouterr().out
    assert rc == 0 and "n_leaked" in stdout
    report = json.loads((out / "report.json").read_text())
    validate_report(report)
    res = report["distribution"]["results"]
    assert {r["attack"] for r in res} == {"loss_test", "threshold_test", "kl", "pin"}
    for r in res:
        lo, hi = r["accuracy_ci"]
        assert lo <= r["accuracy"] <= hi and r["n_victims"] == 8
        assert r["n_leaked_ci"][0] <= r["n_leaked"] <= r["n_leaked_ci"][1]
        assert r["n_leaked"] == n_leaked(min(r["accuracy"], 1 - 1 / 16), 0.5, 0.0)
        assert r["n_leaked"] <= r["n_count_test"]

    # Victim model k and the adversary's model k of the same distribution do not share their
    # initialization (they did: every group's model k had seed*100003+k, parameter corr. 0.96).
    def corr(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a, b)[0, 1])

    for ratio in (0.5, 0.0):
        vic, adv = trained["victim", ratio], trained["adversary", ratio]
        same_k = np.mean([corr(vic[k], adv[k]) for k in range(len(vic))])
        assert abs(same_k) < 0.3, (ratio, same_k)
    a0, a1 = trained["adversary", 0.5], trained["adversary", 0.0]  # across ratios, too
    assert abs(np.mean([corr(a0[k], a1[k]) for k in range(len(a0))])) < 0.3
    # 50 % vs 0 % women: the black-box attacks with adversary models tell them apart.
    best = max(r["accuracy"] for r in res if r["attack"] in ("threshold_test", "kl"))
    assert best >= 0.75
    assert (out / "report.html").read_text().count("<svg") >= 1


def test_distribution_attribute_must_exist(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["audit", "distribution", "--data", "mnist1d", "--no-progress"])
    assert rc == 1 and "not a boolean attribute of mnist1d" in capsys.readouterr().err
    rc = main(["audit", "distribution", "--set", "distribution.ratios=[0.5]"])
    assert rc == 1 and "must not contain base_ratio" in capsys.readouterr().err
    rc = main(["audit", "distribution", "--set", "distribution.base_ratio=1.0",
               "--set", "distribution.ratios=[0.0]"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("AuditConfigError") and "n_leaked is not defined" in err


def test_bootstrap_interval_covers_the_attacks_own_variance() -> None:
    """An attack whose predictions depend on which adversary models it was fitted on gets a
    wider interval than one that does not, on the same victims."""
    import numpy as np

    from secure_infer.audit.distribution import _bootstrap

    truth = np.r_[np.zeros(16, int), np.ones(16, int)]
    fixed = truth.copy()
    fixed[:3] = 1  # 29 of 32 right whatever the adversary trained

    def stable(sample: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        return fixed

    def unstable(sample: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        wrong = int(sample[0].mean() > 3.5) * 6  # a "bad draw" of adversary models
        out = fixed.copy()
        out[16 : 16 + wrong] = 0
        return out

    widths = []
    for refit in (stable, unstable):
        boot = _bootstrap(refit, (8, 8), truth, 400, 40, np.random.default_rng(0))
        assert boot.shape == (400,)
        lo, hi = np.percentile(boot, [2.5, 97.5])
        widths.append(hi - lo)
    assert widths[1] > widths[0] + 0.05
