"""PUMA-style approximations of non-linear functions on secret shares, one family per module."""

from __future__ import annotations

from mpc.approx.exp import exp_nonpositive
from mpc.approx.gelu import gelu
from mpc.approx.layernorm import layer_norm, rms_norm
from mpc.approx.reciprocal import reciprocal
from mpc.approx.rsqrt import rsqrt
from mpc.approx.silu import SiLUMethod, silu
from mpc.approx.softmax import softmax

__all__ = [
    "SiLUMethod",
    "exp_nonpositive",
    "gelu",
    "layer_norm",
    "reciprocal",
    "rms_norm",
    "rsqrt",
    "silu",
    "softmax",
]
