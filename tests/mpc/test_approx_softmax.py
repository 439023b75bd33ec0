"""PUMA-style softmax (`mpc.approx.softmax`) vs torch.softmax."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from mpc.approx._mpc import tree_max
from mpc.approx.softmax import MAX_ABS_ERROR, softmax
from tests.mpc.test_approx_common import crypten_session, decode, encrypt

ROWS = 200


@pytest.fixture(scope="module", autouse=True)
def _crypten() -> Iterator[Any]:
    yield from crypten_session()


def _error(logits: torch.Tensor, dim: int = -1, **kwargs: Any) -> float:
    secret = encrypt(logits)
    expected = torch.softmax(decode(secret), dim=dim)
    out = decode(softmax(secret, dim=dim, **kwargs))
    return (out - expected).abs().max().item()


@pytest.mark.parametrize("length", [8, 17, 32, 64, 128])
def test_softmax_uniform_logits(length: int) -> None:
    g = torch.Generator().manual_seed(length)
    error = _error(torch.rand(ROWS, length, generator=g) * 60 - 30)
    assert error <= MAX_ABS_ERROR, error


@pytest.mark.parametrize("length", [8, 32, 128])
def test_softmax_gaussian_logits(length: int) -> None:
    g = torch.Generator().manual_seed(1000 + length)
    error = _error(torch.randn(ROWS, length, generator=g) * 3)
    assert error <= MAX_ABS_ERROR, error


def test_softmax_dominant_constant_and_tied_rows() -> None:
    length = 64
    rows = torch.zeros(6, length)
    rows[0, 5] = 30.0  # one dominant logit
    rows[1, :] = -30.0
    rows[1, 63] = 30.0  # dominant, every other difference is -60 (masked)
    rows[2, :] = 7.0  # all equal: 1 / 64 each
    rows[3, :2] = 12.0  # two tied maxima
    rows[4] = torch.linspace(-30, 30, length)
    rows[5, 10] = 13.9  # the others sit just above the -14 threshold
    assert _error(rows) <= MAX_ABS_ERROR
    out = decode(softmax(encrypt(rows)))
    assert out.sum(-1).sub(1).abs().max().item() <= length * MAX_ABS_ERROR


def test_softmax_other_dim_and_single_entry() -> None:
    g = torch.Generator().manual_seed(7)
    assert _error(torch.randn(16, 8, 3, generator=g) * 5, dim=1) <= MAX_ABS_ERROR
    out = decode(softmax(encrypt(torch.randn(4, 1, generator=g))))
    assert torch.equal(out, torch.ones(4, 1, dtype=torch.float64))


def test_softmax_puma_settings_are_reachable() -> None:
    """PUMA's own exp (order 1, n = 5) runs, with its larger error (0.061 measured)."""
    g = torch.Generator().manual_seed(8)
    error = _error(torch.randn(50, 128, generator=g) * 3, exp_iterations=5, exp_order=1)
    assert MAX_ABS_ERROR < error < 0.1


def test_softmax_attention_shape() -> None:
    """(batch, heads, queries, keys) = (2, 12, 32, 32), like MiniLM attention scores."""
    g = torch.Generator().manual_seed(9)
    error = _error(torch.randn(2, 12, 32, 32, generator=g) * 4)
    assert error <= MAX_ABS_ERROR, error


@pytest.mark.parametrize(("shape", "dim"), [((50, 1), -1), ((50, 17), -1), ((5, 7, 3), 1)])
def test_tree_max_is_exact(shape: tuple[int, ...], dim: int) -> None:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(len(shape))) * 10
    secret = encrypt(x)
    expected = decode(secret).max(dim, keepdim=True)[0]
    assert torch.equal(decode(tree_max(secret, dim)), expected)
