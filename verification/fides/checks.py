"""Validation of what crosses the trust boundary: client inputs and the service's outputs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .errors import InvalidInput

PROB_SUM_ATOL = 1e-3  # a service distribution must sum to 1 within this absolute tolerance


def probs_array(service_probs: object, n_classes: int, n_rows: int | None = None) -> np.ndarray:
    """Return `service_probs` as a float32 (N, n_classes) ndarray or raise `InvalidInput`.

    Checks: 2-D, `n_classes` columns, `n_rows` rows when given, finite, in [0, 1], and every row
    sums to 1 within `PROB_SUM_ATOL`. The checks run in numpy: on the few rows of a request,
    each numpy call costs a few microseconds where a torch call costs ~10.
    """
    if isinstance(service_probs, torch.Tensor):
        if not service_probs.is_floating_point():
            raise InvalidInput(f"service_probs must be floating point, got {service_probs.dtype}")
        service_probs = service_probs.detach().to("cpu", torch.float32).numpy()
    if not isinstance(service_probs, np.ndarray):
        raise InvalidInput(f"service_probs must be a tensor or ndarray, got {type(service_probs)}")
    if not np.issubdtype(service_probs.dtype, np.floating):
        raise InvalidInput(f"service_probs must be floating point, got {service_probs.dtype}")
    p = np.ascontiguousarray(service_probs, dtype=np.float32)
    if p.ndim != 2 or p.shape[1] != n_classes:
        raise InvalidInput(f"service_probs must have shape (N, {n_classes}), got {tuple(p.shape)}")
    if n_rows is not None and p.shape[0] != n_rows:
        raise InvalidInput(f"service_probs has {p.shape[0]} rows for {n_rows} inputs")
    if p.shape[0] == 0:
        raise InvalidInput("service_probs is empty")
    if not np.isfinite(p).all():
        raise InvalidInput("service_probs contains NaN or infinite values")
    if p.min() < 0 or p.max() > 1:
        raise InvalidInput("service_probs has values outside [0, 1]")
    worst = float(np.abs(p.sum(axis=1) - 1).max())
    if worst > PROB_SUM_ATOL:
        raise InvalidInput(f"service_probs rows must sum to 1 (worst deviation {worst:.3g})")
    return p


def as_probs(service_probs: object, n_classes: int, n_rows: int | None = None) -> torch.Tensor:
    """`probs_array`'s checks, returning a float32 tensor."""
    return torch.from_numpy(probs_array(service_probs, n_classes, n_rows))


def as_images(inputs: object, side: int = 28) -> torch.Tensor:
    """Return image inputs as a float32 (N, 1, side, side) tensor in [0, 1] or raise."""
    if isinstance(inputs, np.ndarray):
        inputs = torch.from_numpy(inputs)
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
        raise InvalidInput("image inputs must be a floating-point tensor or ndarray")
    x = inputs.detach().to(torch.float32)
    if x.dim() == 2 and x.shape[1] == side * side:
        x = x.reshape(-1, 1, side, side)
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, side, side):
        raise InvalidInput(
            f"image inputs must have shape (N, {side * side}) or (N, 1, {side}, {side}), "
            f"got {tuple(inputs.shape)}"
        )
    if x.shape[0] == 0:
        raise InvalidInput("image inputs are empty")
    if not torch.isfinite(x).all():
        raise InvalidInput("image inputs contain NaN or infinite values")
    if (x < 0).any() or (x > 1).any():
        raise InvalidInput("image inputs must be scaled to [0, 1]")
    return x


def as_texts(inputs: object) -> list[str]:
    """Return text inputs as a non-empty list of strings or raise `InvalidInput`."""
    if isinstance(inputs, str) or not isinstance(inputs, Sequence):
        raise InvalidInput("text inputs must be a sequence of strings")
    texts = list(inputs)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise InvalidInput("text inputs must be a non-empty sequence of strings")
    return texts
