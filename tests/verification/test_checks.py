"""Bad inputs to the verifier raise a clear, typed error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from verification.fides.checks import as_images, as_probs, as_texts
from verification.fides.errors import FidesError, InvalidInput


def _good(n: int = 4, c: int = 10) -> torch.Tensor:
    return torch.full((n, c), 1.0 / c)


@pytest.mark.parametrize(
    ("probs", "match"),
    [
        (torch.full((4,), 0.25), "shape"),
        (torch.full((4, 9), 1 / 9), "shape"),
        (torch.full((4, 10), 0.2), "sum to 1"),
        (torch.tensor([[float("nan")] + [0.1] * 9] * 4), "NaN"),
        (torch.tensor([[1.5, -0.5] + [0.0] * 8] * 4), r"\[0, 1\]"),
        (torch.zeros(4, 10, dtype=torch.int64), "floating"),
        ([[0.1] * 10] * 4, "tensor or ndarray"),
    ],
)
def test_bad_service_probs_raise(probs: object, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        as_probs(probs, 10)


def test_row_count_must_match_inputs() -> None:
    with pytest.raises(InvalidInput, match="rows"):
        as_probs(_good(3), 10, n_rows=4)


def test_good_probs_accepted_from_numpy_and_error_is_value_error() -> None:
    assert as_probs(np.full((2, 10), 0.1), 10).shape == (2, 10)
    assert issubclass(InvalidInput, ValueError) and issubclass(InvalidInput, FidesError)


@pytest.mark.parametrize(
    "images",
    [
        torch.rand(2, 3, 28, 28),
        torch.rand(2, 100),
        torch.rand(2, 784) * 2,
        torch.full((2, 784), float("nan")),
        torch.zeros(2, 784, dtype=torch.int64),
    ],
)
def test_bad_images_raise(images: torch.Tensor) -> None:
    with pytest.raises(InvalidInput):
        as_images(images)


@pytest.mark.parametrize("texts", ["one string", [], [b"bytes"], 3])
def test_bad_texts_raise(texts: object) -> None:
    with pytest.raises(InvalidInput):
        as_texts(texts)
