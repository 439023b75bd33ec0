"""The attacks do what they claim."""

from __future__ import annotations

import torch
from torch import nn

from verification.fides import attacks


def _probs(n: int = 64, c: int = 10, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(n, c, generator=g)).softmax(1)


def test_swap_top2_exchanges_top_two_only() -> None:
    p = _probs()
    out = attacks.swap_top2(p)
    top = p.topk(2, 1).indices
    rows = torch.arange(len(p))
    assert torch.equal(out[rows, top[:, 0]], p[rows, top[:, 1]])
    assert torch.equal(out[rows, top[:, 1]], p[rows, top[:, 0]])
    assert torch.equal(out.argmax(1), top[:, 1])
    keep = torch.ones_like(p, dtype=torch.bool)
    keep[rows, top[:, 0]] = keep[rows, top[:, 1]] = False
    assert torch.equal(out[keep], p[keep])


def test_average_top2_sets_both_to_mean_and_keeps_mass() -> None:
    p = _probs()
    out = attacks.average_top2(p)
    vals, idx = p.topk(2, 1)
    got = out.gather(1, idx)
    assert torch.allclose(got[:, 0], vals.mean(1)) and torch.allclose(got[:, 1], vals.mean(1))
    assert torch.allclose(out.sum(1), p.sum(1))
    assert (out.max(1).values < p.max(1).values).all()


def test_random_label_switch_moves_top1_to_every_other_class() -> None:
    p = _probs(n=2000)
    out = attacks.random_label_switch(p, torch.Generator().manual_seed(1))
    assert (out.argmax(1) != p.argmax(1)).all()
    assert torch.allclose(out.sort(1).values, p.sort(1).values)  # a permutation of each row
    for c in range(10):  # every other class is reachable
        assert ((out.argmax(1) == c) & (p.argmax(1) != c)).any()


def test_fgsm_stays_in_eps_ball_and_bounds_and_raises_loss() -> None:
    torch.manual_seed(0)
    net = torch.nn.Linear(20, 3)
    x = torch.rand(128, 20)
    adv = attacks.fgsm(net, x, eps=0.1, bounds=(0.0, 1.0))
    assert (adv - x).abs().max() <= 0.1 + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        y = net(x).argmax(1)
        assert nn.functional.cross_entropy(net(adv), y) > nn.functional.cross_entropy(net(x), y)
        flipped = (net(attacks.fgsm(net, x, eps=1.0)).argmax(1) != y).float().mean()
    assert flipped > 0.5
