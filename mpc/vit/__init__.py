"""MPCViT: vision transformers with per-head MPC-friendly attention, searched for MPC latency.

Ref: W. Zeng et al., "MPCViT: Searching for Accurate and Efficient MPC-Friendly Vision
Transformer with Heterogeneous Attention", ICCV 2023. See docs/mpcvit.md.

Modules: `model` (the torch family), `data` (offline MNIST-5000 and digits splits), `train`
(training and distillation), `costs` (variant costs measured on CrypTen), `search` (the
latency-aware search), `checkpoint` (safetensors + JSON), `zoo` (the cached trained family),
`secure` (secure inference, input-private threat model).
"""

from __future__ import annotations

from mpc.vit.checkpoint import CheckpointError
from mpc.vit.model import Architecture, AttentionKind, MLPKind, MPCViT, ViTConfig
from mpc.vit.secure import SecureClassification, SecureViT, client_input, secure_classify

__all__ = [
    "Architecture",
    "AttentionKind",
    "CheckpointError",
    "MLPKind",
    "MPCViT",
    "SecureClassification",
    "SecureViT",
    "ViTConfig",
    "client_input",
    "secure_classify",
]
