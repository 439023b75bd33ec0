"""SmolLM2-135M-Instruct (LLaMA architecture) split into layer spans, and the client's parts.

Nodes run `LlamaDecoderLayer`s from transformers with rotary position embeddings and causal
masks computed on the node, and keep one KV cache per generation session for their span. The
client keeps the token embedding, the final RMSNorm and the (tied) LM head, so token ids and
logits stay on the client.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, DynamicCache, LlamaConfig
from transformers.masking_utils import create_causal_mask
from transformers.models.llama.modeling_llama import (
    LlamaDecoderLayer,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
)

from decentralized.models._digest import layered_digest
from decentralized.models._files import read_tensors, smollm2_dir
from decentralized.models._registry import check_stop


def _config(path: Path) -> LlamaConfig:
    config = LlamaConfig.from_pretrained(str(path))
    config._attn_implementation = "sdpa"
    return config


class LlamaSpan:
    """Decoder layers [start, end) of SmolLM2-135M-Instruct on one device."""

    stateful = True
    compute_dtype = torch.float32  # float64 only for tolerance calibration

    def __init__(self, start: int, end: int, device: torch.device) -> None:
        path = smollm2_dir()
        config = _config(path)
        self.start, self.end, self.device = start, end, device
        # The span's own config: layer indices 0..n-1 address the span's KV cache.
        self.span_config = copy.deepcopy(config)
        self.span_config.num_hidden_layers = end - start
        if getattr(self.span_config, "layer_types", None):
            self.span_config.layer_types = config.layer_types[start:end]
        tensors = read_tensors(path, tuple(f"model.layers.{i}." for i in range(start, end)))
        self.weight_digest, self.layer_digests = layered_digest(
            tensors, "model.layers.", start, end
        )
        layers = []
        for j, i in enumerate(range(start, end)):
            layer = LlamaDecoderLayer(self.span_config, layer_idx=j)
            prefix = f"model.layers.{i}."
            state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            layer.load_state_dict(state, strict=True)
            layers.append(layer)
        self.layers = torch.nn.ModuleList(layers).to(device).eval()
        self.rotary = LlamaRotaryEmbedding(config).to(device)

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.span_config)

    @staticmethod
    def cache_length(cache: DynamicCache) -> int:
        return int(cache.get_seq_length())

    @torch.inference_mode()
    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cache: Any = None,
        stop: Callable[[], bool] | None = None,
    ) -> torch.Tensor:
        """(B, T, 576) float -> (B, T, 576). With a cache, appends this step's keys/values.
        Without one, `Abandoned` between layers once `stop()` is True."""
        if cache is not None:
            stop = None  # a cache extended by some layers only would be corrupt
        x = hidden.to(self.device, self.compute_dtype)
        past = self.cache_length(cache) if cache is not None else 0
        position_ids = (torch.arange(x.shape[1], device=self.device) + past)[None, :]
        causal_mask = create_causal_mask(
            config=self.span_config,
            inputs_embeds=x,
            attention_mask=None,
            past_key_values=cache,
            position_ids=position_ids,
        )
        position_embeddings = self.rotary(x, position_ids=position_ids)
        for layer in self.layers:
            check_stop(stop)
            x = layer(
                x,
                attention_mask=causal_mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=cache is not None,
                position_embeddings=position_embeddings,
            )
        return x.to("cpu", hidden.dtype)


class LlamaClientParts:
    """Tokenizer, token embedding, final norm and LM head of SmolLM2-135M-Instruct."""

    def __init__(self) -> None:
        path = smollm2_dir()
        self.config = _config(path)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        tensors = read_tensors(path, ("model.embed_tokens.", "model.norm.", "lm_head."))
        self.embed_tokens = torch.nn.Embedding(self.config.vocab_size, self.config.hidden_size)
        self.embed_tokens.weight.data.copy_(tensors["model.embed_tokens.weight"])
        self.norm = LlamaRMSNorm(self.config.hidden_size, eps=self.config.rms_norm_eps)
        self.norm.weight.data.copy_(tensors["model.norm.weight"])
        head = tensors.get("lm_head.weight", tensors["model.embed_tokens.weight"])
        self.lm_head = torch.nn.Linear(self.config.hidden_size, self.config.vocab_size, bias=False)
        self.lm_head.weight.data.copy_(head)
        self.stop_ids = {
            int(t)
            for t in (
                self.tokenizer.eos_token_id,
                self.tokenizer.convert_tokens_to_ids("<|im_end|>"),
            )
            if t is not None and int(t) >= 0
        }

    def encode(self, prompt: str | list[dict[str, str]], *, chat: bool = True) -> torch.Tensor:
        """A prompt or chat messages -> (1, T) int64 token ids (chat template applied)."""
        if isinstance(prompt, str) and not chat:
            ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"]
            return ids
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        out = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        return out["input_ids"]

    @torch.inference_mode()
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) int64 -> (B, T, 576) float32."""
        return self.embed_tokens(input_ids)

    @torch.inference_mode()
    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, 576) after the last layer -> (B, T, vocab) logits."""
        return self.lm_head(self.norm(hidden))

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))
