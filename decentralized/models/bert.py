"""all-MiniLM-L6-v2 (BERT) split into layer spans, and the client's parts of it.

The client tokenizes, runs the embedding layer, and after the last span mean-pools the token
states under the attention mask and L2-normalizes them, as sentence-transformers does for this
model. Nodes run `BertLayer`s from transformers on the weights of the published safetensors file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, BertConfig
from transformers.models.bert.modeling_bert import BertEmbeddings, BertLayer

from decentralized.models._digest import layered_digest
from decentralized.models._files import minilm_dir, read_tensors
from decentralized.models._registry import check_stop

MAX_TOKENS = 512  # BERT's position table; longer inputs are truncated by the tokenizer.


def _config(path: Path) -> BertConfig:
    config = BertConfig.from_pretrained(str(path))
    config._attn_implementation = "sdpa"
    return config


def extended_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) 0/1 mask -> (B, 1, 1, T) additive mask: 0 where attended, dtype min elsewhere."""
    mask = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - mask) * torch.finfo(dtype).min


class BertSpan:
    """Encoder layers [start, end) of all-MiniLM-L6-v2 on one device."""

    stateful = False
    compute_dtype = torch.float32  # float64 only for tolerance calibration

    def __init__(self, start: int, end: int, device: torch.device) -> None:
        path = minilm_dir()
        self.config = _config(path)
        self.start, self.end, self.device = start, end, device
        tensors: dict[str, torch.Tensor] = {}
        for i in range(start, end):
            tensors.update(read_tensors(path, f"encoder.layer.{i}."))
        self.weight_digest, self.layer_digests = layered_digest(
            tensors, "encoder.layer.", start, end
        )
        layers = []
        for i in range(start, end):
            layer = BertLayer(self.config)
            prefix = f"encoder.layer.{i}."
            state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            layer.load_state_dict(state, strict=True)
            layers.append(layer)
        self.layers = torch.nn.ModuleList(layers).to(device).eval()

    @torch.inference_mode()
    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cache: Any = None,
        stop: Callable[[], bool] | None = None,
    ) -> torch.Tensor:
        """(B, T, 384) float -> (B, T, 384); attention_mask (B, T) int64 0/1. `Abandoned`
        between layers once `stop()` is True."""
        x = hidden.to(self.device, self.compute_dtype)
        if attention_mask is None:
            attention_mask = torch.ones(x.shape[:2], dtype=torch.int64)
        mask = extended_mask(attention_mask.to(self.device), x.dtype)
        for layer in self.layers:
            check_stop(stop)
            x = layer(x, attention_mask=mask)
        return x.to("cpu", hidden.dtype)


class BertClientParts:
    """Tokenizer, embedding layer, and mean-pool + normalize head of all-MiniLM-L6-v2."""

    def __init__(self) -> None:
        path = minilm_dir()
        self.config = _config(path)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.embeddings = BertEmbeddings(self.config)
        prefix = "embeddings."
        state = {k[len(prefix) :]: v for k, v in read_tensors(path, prefix).items()}
        self.embeddings.load_state_dict(state, strict=False)
        self.embeddings.eval()

    def tokenize(
        self, texts: list[str], max_tokens: int = 256
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> (input_ids (B, T) int64, attention_mask (B, T) int64)."""
        enc = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=min(max_tokens, MAX_TOKENS),
            return_tensors="pt",
        )
        return enc["input_ids"], enc["attention_mask"]

    @torch.inference_mode()
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) int64 -> (B, T, 384) float32 hidden states entering layer 0."""
        return self.embeddings(input_ids=input_ids)

    @torch.inference_mode()
    def head(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, 384) after the last layer -> (B, 384) unit-norm sentence embeddings."""
        mask = attention_mask[:, :, None].to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1)
