"""Whole-model secure forwards built from `mpc.approx` on CrypTen shares (hazmat layer)."""

from __future__ import annotations

from mpc.models.bert import (
    DEFAULT_EXP_ITERATIONS,
    LAYER_KEYS,
    MASK_VALUE,
    PUMA,
    Approximations,
    SecureBertEncoder,
    ThreatModel,
    additive_mask,
    check_output,
    crypten_default,
    layer_norm_bound,
    mean_pool,
    secure_embed,
    share_one_hot,
)

__all__ = [
    "DEFAULT_EXP_ITERATIONS",
    "PUMA",
    "Approximations",
    "LAYER_KEYS",
    "MASK_VALUE",
    "SecureBertEncoder",
    "ThreatModel",
    "additive_mask",
    "check_output",
    "crypten_default",
    "layer_norm_bound",
    "mean_pool",
    "secure_embed",
    "share_one_hot",
]
