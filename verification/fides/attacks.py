"""Attacks by a dishonest service on the outputs it returns (Fides' threat model).

The service provider controls the service model, its inputs after they arrive, and the output
distribution sent back. The client's own input reaches the verifier (in the enclave) untouched.

Output manipulations (operate on the probability vector the service would have returned):
    swap_top2            exchange the probabilities of the top-1 and top-2 classes
    average_top2         replace the top-1 and top-2 probabilities by their mean
    random_label_switch  exchange the top-1 probability with that of a uniformly random other class
Input and model attacks (need the service model):
    fgsm                 untargeted FGSM (Goodfellow et al. 2015) on the input the service model
                         sees, against the service's own prediction
    substitution         answer with a cheaper model's output instead of the service model's
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def swap_top2(probs: torch.Tensor) -> torch.Tensor:
    """Exchange the probabilities of each row's top-1 and top-2 classes."""
    top = probs.topk(2, dim=1).indices
    return _swap(probs, top[:, 0], top[:, 1])


def average_top2(probs: torch.Tensor) -> torch.Tensor:
    """Set each row's top-1 and top-2 probabilities to their mean (the sum is preserved)."""
    vals, idx = probs.topk(2, dim=1)
    return probs.scatter(1, idx, vals.mean(1, keepdim=True).expand(-1, 2))


def random_label_switch(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Exchange each row's top-1 probability with that of a random different class."""
    n, c = probs.shape
    top = probs.argmax(1)
    other = (top + torch.randint(1, c, (n,), generator=generator)) % c  # uniform over c - 1 classes
    return _swap(probs, top, other)


def fgsm(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    eps: float,
    bounds: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Untargeted FGSM: x + eps * sign(grad_x CE(forward(x), forward's own prediction)).

    `forward` maps inputs to logits; `bounds` clamps the result (e.g. pixels to [0, 1]).
    """
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():  # also when called under torch.no_grad()
        logits = forward(x)
        loss = nn.functional.cross_entropy(logits, logits.argmax(1).detach())
        (grad,) = torch.autograd.grad(loss, x)
    adv = x.detach() + eps * grad.sign()
    return adv.clamp(*bounds) if bounds is not None else adv


def _swap(probs: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    rows = torch.arange(len(probs))
    out = probs.clone()
    out[rows, a], out[rows, b] = probs[rows, b], probs[rows, a]
    return out
