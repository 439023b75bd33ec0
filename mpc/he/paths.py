"""Where the HE mode caches trained heads and feature embeddings."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$SECURE_INFER_CACHE/he, else ~/.cache/secure-infer/he."""
    env = os.environ.get("SECURE_INFER_CACHE")
    return (Path(env) if env else Path.home() / ".cache" / "secure-infer") / "he"


def heads_dir() -> Path:
    """Trained heads (safetensors + JSON) that a node serves and a client may inspect."""
    return cache_dir() / "heads"
