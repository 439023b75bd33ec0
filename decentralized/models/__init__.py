"""Models that the mesh can split, loaded offline from the packages that ship their weights.

Each model is cut into contiguous layer spans served by nodes (`SpanRuntime`), while the client
keeps the input embedding and the output head (`ClientParts`): the U-shaped split.
"""

from __future__ import annotations

from decentralized.models._registry import (
    MODELS,
    ClientParts,
    ModelSpec,
    SpanRuntime,
    get_spec,
    load_client_parts,
    load_span,
)

__all__ = [
    "ClientParts",
    "MODELS",
    "ModelSpec",
    "SpanRuntime",
    "get_spec",
    "load_client_parts",
    "load_span",
]
