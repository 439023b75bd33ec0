"""Single-server homomorphic encryption (CKKS via TenSEAL) for private classification heads.

The client encrypts its feature vector; a server evaluates a head of linear layers and x^2 on
the ciphertext with its plaintext weights; only the client can decrypt the logits. Threat model,
parameters and measurements: docs/he.md. No gRPC here: the service is decentralized/he_service.py.

Two layouts (docs/he.md): one ciphertext per example (`evaluate`, `encrypt`, `decrypt`), and
feature-major packing of up to 4,096 examples, one ciphertext per input feature, no rotations
(`evaluate_packed`, `encrypt_packed`, `decrypt_packed`), chosen per batch by the head's cost
model (`Head.packed_min_batch`).

Modules: `params` (frozen 128-bit CKKS parameters, keys, context checks), `head` (heads as
safetensors + JSON, depth, per-layer plan), `engine` (both layouts), `data`
(real data sets and the client's local layers), `train` (the two heads), `paths` (cache).
"""

from __future__ import annotations

from mpc.he.errors import DepthExceeded, HEError, InvalidCiphertext, InvalidContext, InvalidHead
from mpc.he.head import Head, Linear, Square, load_head, plan
from mpc.he.params import DEFAULT_PARAMS, CKKSParams

__all__ = [
    "CKKSParams",
    "DEFAULT_PARAMS",
    "DepthExceeded",
    "HEError",
    "Head",
    "InvalidCiphertext",
    "InvalidContext",
    "InvalidHead",
    "Linear",
    "Square",
    "load_head",
    "plan",
]
