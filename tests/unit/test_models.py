"""Split spans of the real models compute what the whole model computes."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from decentralized.errors import UnknownModel
from decentralized.models import get_spec, load_client_parts, load_span
from decentralized.models._digest import weight_digest
from decentralized.models._files import minilm_dir, smollm2_dir
from verification.consensus import span_digest

CPU = torch.device("cpu")
TEXTS = [
    "A short one.",
    "A considerably longer sentence, so that the batch needs padding on the other rows.",
    "Paris is the capital of France.",
]


def test_minilm_split_matches_sentence_transformers() -> None:
    from sentence_transformers import SentenceTransformer

    parts = load_client_parts("all-MiniLM-L6-v2")
    spans = [load_span("all-MiniLM-L6-v2", a, b, CPU) for a, b in [(0, 2), (2, 4), (4, 6)]]
    ids, mask = parts.tokenize(TEXTS)
    assert int(mask.sum()) < mask.numel()  # the batch really is padded
    hidden = parts.embed(ids)
    for span in spans:
        hidden = span.forward(hidden, mask)
    ours = parts.head(hidden, mask)
    ref = torch.tensor(SentenceTransformer(str(minilm_dir()), device="cpu").encode(TEXTS))
    cos = torch.nn.functional.cosine_similarity(ours, ref)
    assert float(cos.min()) > 0.99999
    assert torch.allclose(ours, ref, atol=1e-5)


def test_span_digest_commits_to_the_published_weights() -> None:
    span = load_span("all-MiniLM-L6-v2", 2, 4, CPU)
    with safe_open(str(minilm_dir() / "model.safetensors"), framework="pt") as f:
        tensors = {
            k: f.get_tensor(k)
            for k in f.keys()  # noqa: SIM118
            if k.startswith(("encoder.layer.2.", "encoder.layer.3."))
        }

    def layer(i: int) -> dict[str, torch.Tensor]:
        return {k: v for k, v in tensors.items() if k.startswith(f"encoder.layer.{i}.")}

    expected = span_digest(2, 4, [weight_digest(layer(2)), weight_digest(layer(3))])
    assert span.weight_digest == expected
    assert span.layer_digests == [weight_digest(layer(2)), weight_digest(layer(3))]
    assert span.weight_digest != load_span("all-MiniLM-L6-v2", 0, 2, CPU).weight_digest
    tensors["encoder.layer.2.output.dense.bias"] = (
        tensors["encoder.layer.2.output.dense.bias"] + 1e-6
    )
    assert span_digest(2, 4, [weight_digest(layer(2)), weight_digest(layer(3))]) != expected


def test_unknown_models_and_spans() -> None:
    with pytest.raises(UnknownModel, match="known models: SmolLM2-135M-Instruct, all-MiniLM-L6-v2"):
        get_spec("gpt-5")
    with pytest.raises(UnknownModel, match=r"outside all-MiniLM-L6-v2's layers \[0, 6\)"):
        load_span("all-MiniLM-L6-v2", 4, 7, CPU)


def test_smollm2_split_with_kv_cache_matches_whole_model() -> None:
    from transformers import AutoModelForCausalLM

    parts = load_client_parts("SmolLM2-135M-Instruct")
    spans = [load_span("SmolLM2-135M-Instruct", a, b, CPU) for a, b in [(0, 7), (7, 30)]]
    ids = parts.encode("Name three colours.")
    whole = AutoModelForCausalLM.from_pretrained(str(smollm2_dir())).eval()
    with torch.inference_mode():
        ref_logits = whole(ids).logits  # (1, T, vocab)
    caches = [s.new_cache() for s in spans]
    # Prefill all but the last token, then one cached decode step for the last token.
    h = parts.embed(ids[:, :-1])
    for s, c in zip(spans, caches, strict=True):
        h = s.forward(h, None, c)
    prefill_logits = parts.head(h)
    h = parts.embed(ids[:, -1:])
    for s, c in zip(spans, caches, strict=True):
        h = s.forward(h, None, c, lambda: True)  # a cached step never stops half way
    step_logits = parts.head(h)
    assert torch.allclose(prefill_logits, ref_logits[:, :-1], atol=1e-4, rtol=1e-4)
    assert torch.allclose(step_logits, ref_logits[:, -1:], atol=1e-4, rtol=1e-4)
    assert spans[1].cache_length(caches[1]) == ids.shape[1]


@pytest.mark.parametrize(
    ("name", "files"), [("all-MiniLM-L6-v2", minilm_dir), ("SmolLM2-135M-Instruct", smollm2_dir)]
)
def test_spec_dimensions_match_the_published_config(name: str, files: object) -> None:
    import json

    config = json.loads((files() / "config.json").read_text())  # type: ignore[operator]
    spec = get_spec(name)
    assert spec.vocab_size == config["vocab_size"]
    assert spec.hidden_size == config["hidden_size"]
    assert spec.num_layers == config["num_hidden_layers"]
