"""Detector features and threshold calibration."""

from __future__ import annotations

import torch

from verification.fides.detector import N_STATS, calibrate_threshold, divergence_features


def _probs(n: int, c: int, seed: int) -> torch.Tensor:
    return (2 * torch.randn(n, c, generator=torch.Generator().manual_seed(seed))).softmax(1)


def test_identical_distributions_have_zero_divergence() -> None:
    p = _probs(32, 10, 0)
    stats = divergence_features(p, p)[:, 20:]
    assert stats.shape[1] == N_STATS
    assert torch.allclose(stats[:, :5], torch.zeros(32, 5), atol=1e-5)  # KL x2, JS, TV, Hellinger
    assert (stats[:, 7] == 1).all()  # top-1 agreement


def test_features_do_not_depend_on_class_identity() -> None:
    ps, pv = _probs(32, 10, 1), _probs(32, 10, 2)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(
        divergence_features(ps, pv), divergence_features(ps[:, perm], pv[:, perm])
    )


def test_divergence_grows_when_the_service_disagrees() -> None:
    pv = _probs(64, 10, 4)
    near = (pv + 0.01).div(1.1)
    far = pv.flip(1)
    kl_near, kl_far = divergence_features(near, pv)[:, 20], divergence_features(far, pv)[:, 20]
    assert (kl_far > kl_near).all()


def test_threshold_keeps_false_positives_within_target() -> None:
    scores = torch.randn(1000, generator=torch.Generator().manual_seed(5))
    for fpr in (0.0, 0.02, 0.1):
        t = calibrate_threshold(scores, fpr)
        assert (scores > t).float().mean() <= fpr
        assert (scores >= t).float().mean() > fpr  # and no stricter than needed
