"""Comparing replicas' outputs: distance, calibrated tolerance, majority decision.

Distance. Two outputs of a span, (B, T, H) hidden states, are compared token by token:

    d(a, b) = max over (b, t) of ||a[b, t] - b[b, t]||_2 / max(||a[b, t]||_2, ||b[b, t]||_2, eps)

a relative error per token, so tokens with very large activations (SmolLM2's first token reaches
norms in the thousands) and ordinary ones are held to the same standard.

Tolerance. Honest nodes differ by floating-point rounding: other BLAS kernels, thread counts,
batch shapes, attention implementations, prefill versus incremental decoding. `Tolerance.calibrate`
takes, for each calibration input, the outputs of several honest execution variants and the
float64 output of the same span. Every float32 variant lies within eps_max of the exact result;
two honest nodes therefore lie within 2 * eps_max of each other, and the tolerance is
margin * 2 * eps_max (margin 4 by default), floored at 1e-6. A deviation below the tolerance is
indistinguishable from rounding and is accepted: that is the price of comparing floats.

Decision. With n replica outputs, output i is supported by every j with d(i, j) <= tolerance.
The output with the largest support wins when that support is a strict majority (> n/2); ties
go to the smaller total distance. Replicas outside the winner's support deviate. Without a
strict majority the span is undecided: the caller escalates to more replicas or fails.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

_EPS = 1e-6


def distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max per-token relative L2 distance between two (..., H) tensors; inf on shape mismatch
    or non-finite values."""
    if a.shape != b.shape:
        return math.inf
    x = a.detach().to(torch.float64).reshape(-1, a.shape[-1])
    y = b.detach().to(torch.float64).reshape(-1, b.shape[-1])
    if x.numel() == 0:
        return 0.0
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        return math.inf
    diff = torch.linalg.vector_norm(x - y, dim=-1)
    scale = torch.maximum(torch.linalg.vector_norm(x, dim=-1), torch.linalg.vector_norm(y, dim=-1))
    return float((diff / scale.clamp_min(_EPS)).max())


@dataclass(frozen=True, slots=True)
class Tolerance:
    """The largest distance between two honest replicas' outputs of one span."""

    value: float
    eps_max: float  # largest distance of an honest float32 variant from float64 in calibration
    margin: float
    samples: int  # calibration comparisons behind eps_max
    method: str

    @classmethod
    def calibrate(
        cls,
        comparisons: Iterable[tuple[torch.Tensor, Sequence[torch.Tensor]]],
        *,
        margin: float = 4.0,
        method: str = "",
        floor: float = 1e-6,
    ) -> Tolerance:
        """From (float64 output, [honest variant outputs]) per calibration input."""
        eps_max, samples = 0.0, 0
        for exact, variants in comparisons:
            for v in variants:
                eps_max = max(eps_max, distance(v, exact))
                samples += 1
        if samples == 0 or not math.isfinite(eps_max):
            raise ValueError("tolerance calibration needs finite outputs of honest variants")
        return cls(max(margin * 2 * eps_max, floor), eps_max, margin, samples, method)


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of comparing n replicas of one span."""

    winner: int | None  # index of the accepted output, None when undecided
    agree: tuple[int, ...]  # indices within tolerance of the winner (winner included)
    deviate: tuple[int, ...]  # indices outside it
    distances: tuple[tuple[float, ...], ...]  # n x n pairwise distances
    tolerance: float

    @property
    def decided(self) -> bool:
        return self.winner is not None


def decide(outputs: Sequence[torch.Tensor], tolerance: float) -> Decision:
    """Majority decision over replica outputs (see the module docstring)."""
    n = len(outputs)
    if n == 0:
        raise ValueError("no outputs to decide on")
    dist = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            dist[i][j] = dist[j][i] = distance(outputs[i], outputs[j])
    return decide_distances(dist, tolerance)


def decide_distances(dist: Sequence[Sequence[float]], tolerance: float) -> Decision:
    """The majority decision for an n x n distance matrix (what `decide` does after measuring;
    a verdict's checker re-runs it on the distances it recomputed)."""
    n = len(dist)
    if n == 0 or any(len(row) != n for row in dist):
        raise ValueError("the distances must be a non-empty square matrix")
    support = [[j for j in range(n) if dist[i][j] <= tolerance] for i in range(n)]
    # Largest support wins; ties go to the smaller total distance (inf counted as 1e9).
    best = max(range(n), key=lambda i: (len(support[i]), -sum(min(d, 1e9) for d in dist[i])))
    table = tuple(tuple(float(d) for d in row) for row in dist)
    if 2 * len(support[best]) <= n:
        return Decision(None, (), tuple(range(n)), table, tolerance)
    agree = tuple(support[best])
    return Decision(best, agree, tuple(i for i in range(n) if i not in agree), table, tolerance)
