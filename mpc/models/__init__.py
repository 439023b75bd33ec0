"""Whole-model secure forwards built from `mpc.approx` on CrypTen shares (hazmat layer):
the MiniLM (BERT) encoder and the SmolLM2 (LLaMA) decoder with a KV cache in shares."""

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
from mpc.models.llama import LAYER_KEYS as LLAMA_LAYER_KEYS
from mpc.models.llama import (
    GenerationTrace,
    KVCache,
    LlamaConfig,
    SecureLlama,
    causal_mask,
    logits_bound,
    rotary_matrices,
    secure_argmax,
    wide_rms_norm,
)

__all__ = [
    "Approximations",
    "DEFAULT_EXP_ITERATIONS",
    "GenerationTrace",
    "KVCache",
    "LAYER_KEYS",
    "LLAMA_LAYER_KEYS",
    "LlamaConfig",
    "MASK_VALUE",
    "PUMA",
    "SecureBertEncoder",
    "SecureLlama",
    "ThreatModel",
    "additive_mask",
    "causal_mask",
    "check_output",
    "crypten_default",
    "layer_norm_bound",
    "logits_bound",
    "mean_pool",
    "rotary_matrices",
    "secure_argmax",
    "secure_embed",
    "share_one_hot",
    "wide_rms_norm",
]
