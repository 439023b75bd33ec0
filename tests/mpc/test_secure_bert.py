"""Secure all-MiniLM-L6-v2 encoder (`mpc.models.bert`) vs the plaintext sentence embedding.

The reference is HF `BertModel`'s last_hidden_state, mean-pooled under the attention mask and
L2-normalized (what sentence-transformers computes for this model). The secure output is
decoded exactly (ring integer / 2^16) and pooled the same way in plaintext. Most tests run
CrypTen in this process (world size 1: no truncation error, same approximations); the
`multiparty` test runs 2 parties + CrypTen's TTP over gloo on loopback, where two-party local
truncation can fail (with a huge error; see `mpc.models.bert`, "Failure": about 8 % of forwards
with softmax's exp at n = 6, 0 of 60 simulated at the encoder's n = 4), so a failure there
is reported with the size of the error, not retried.
The party function is module-level so that the spawn start method can pickle it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from mpc.backends.crypten import load
from mpc.launch import run_parties
from mpc.models import (
    LAYER_KEYS,
    SecureBertEncoder,
    ThreatModel,
    additive_mask,
    check_output,
    layer_norm_bound,
    secure_embed,
    share_one_hot,
)
from tests.mpc.test_approx_common import crypten_session, decode

transformers = pytest.importorskip("transformers")

MIN_COSINE = 0.999
SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Secure multi-party computation lets servers compute on secret inputs.",
    "A cat sat on the mat.",
)
TOKENS = 24  # padded to this length, so the public mask has padding in every sentence
PARTY_TOKENS = 16
PARTY_TIMEOUT_S = 300.0


@pytest.fixture(scope="module", autouse=True)
def _crypten() -> Iterator[Any]:
    yield from crypten_session()


def _minilm_path() -> Any:
    from decentralized.models._files import ModelFilesMissing, minilm_dir

    try:
        return minilm_dir()
    except ModelFilesMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def minilm() -> Any:
    model = transformers.BertModel.from_pretrained(str(_minilm_path())).eval()
    return model


def _tokenize(texts: tuple[str, ...], tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(_minilm_path()))
    enc = tokenizer(
        list(texts), padding="max_length", max_length=tokens, truncation=True, return_tensors="pt"
    )
    return enc["input_ids"], enc["attention_mask"]  # (B, T) each


def _pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, C) -> (B, C): masked mean, L2-normalized (sentence-transformers' head)."""
    mask = attention_mask[:, :, None].to(hidden.dtype)  # (B, T, 1)
    pooled = (hidden * mask).sum(1) / mask.sum(1)  # (B, C)
    return torch.nn.functional.normalize(pooled, dim=1)  # (B, C)


@torch.no_grad()
def _plaintext(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(embedding output (B, T, C) float32, reference sentence embeddings (B, C) float64)."""
    embedded = model.embeddings(input_ids=input_ids)  # (B, T, C)
    hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return embedded, _pool(hidden.double(), attention_mask)


def _cosines(secret: Any, attention_mask: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return (_pool(decode(secret), attention_mask) * reference).sum(1)  # (B,)


@pytest.mark.parametrize("threat_model", list(ThreatModel))
def test_encoder_matches_plaintext_sentence_embeddings(
    minilm: Any, threat_model: ThreatModel
) -> None:
    """All 6 layers, 3 sentences padded to 24 tokens: cosine >= 0.999 (~0.9995 measured)."""
    crypten = load()
    input_ids, attention_mask = _tokenize(SENTENCES, TOKENS)
    embedded, reference = _plaintext(minilm, input_ids, attention_mask)
    assert not bool(attention_mask.all())  # the mask really hides padding
    encoder = SecureBertEncoder.from_modules(minilm.encoder.layer, threat_model=threat_model)
    out = encoder(crypten.cryptensor(embedded), attention_mask)  # (B, T, C)
    cosines = _cosines(out, attention_mask, reference)
    assert cosines.min().item() >= MIN_COSINE, cosines.tolist()


def test_from_state_dict_equals_from_modules(minilm: Any) -> None:
    a = SecureBertEncoder.from_state_dict(minilm.state_dict())
    b = SecureBertEncoder.from_modules(minilm.encoder.layer)
    assert len(a.layers) == len(b.layers) == 6
    for la, lb in zip(a.layers, b.layers, strict=True):
        assert la.keys() == lb.keys()
        assert all(torch.equal(la[k], lb[k]) for k in la)


def test_secure_embedding_then_encoder_weights_private(minilm: Any) -> None:
    """PUMA end to end: secret one-hot ids, secret tables and layer weights."""
    crypten = load()
    input_ids, attention_mask = _tokenize(SENTENCES[:2], TOKENS)
    embedded, reference = _plaintext(minilm, input_ids, attention_mask)
    tables = minilm.embeddings
    one_hot = share_one_hot(input_ids, tables.word_embeddings.num_embeddings)  # (B, T, V)
    secret_tables = [
        crypten.cryptensor(t.detach())
        for t in (
            tables.word_embeddings.weight,
            tables.position_embeddings.weight,
            tables.token_type_embeddings.weight,
            tables.LayerNorm.weight,
            tables.LayerNorm.bias,
        )
    ]
    hidden = secure_embed(one_hot, *secret_tables, eps=tables.LayerNorm.eps)  # (B, T, C)
    assert (decode(hidden) - embedded.double()).abs().max().item() < 5e-3
    encoder = SecureBertEncoder.from_modules(
        minilm.encoder.layer, threat_model=ThreatModel.WEIGHTS_PRIVATE
    )
    cosines = _cosines(encoder(hidden, attention_mask), attention_mask, reference)
    assert cosines.min().item() >= MIN_COSINE, cosines.tolist()


def test_secure_embedding_public_tables(minilm: Any) -> None:
    """one_hot (scale 1) @ public table (exact), then a LayerNorm with eps = 1."""
    input_ids, _ = _tokenize(SENTENCES[2:], 12)
    tables = minilm.embeddings
    one_hot = share_one_hot(input_ids, tables.word_embeddings.num_embeddings)
    channels = tables.word_embeddings.embedding_dim
    out = secure_embed(
        one_hot,
        tables.word_embeddings.weight.detach(),
        torch.zeros(512, channels),
        torch.zeros(2, channels),
        None,
        None,
        eps=1.0,  # LayerNorm of rows with variance << 1: output ~ (x - mean) / 1
    )
    words = tables.word_embeddings.weight.detach()[input_ids].double()  # (B, T, C)
    expected = (words - words.mean(-1, keepdim=True)) / (
        words.var(-1, unbiased=False, keepdim=True) + 1
    ).sqrt()
    assert (decode(out) - expected).abs().max().item() < 5e-3


def test_input_validation() -> None:
    state = {key: torch.zeros(1) for key in LAYER_KEYS[1:]}
    with pytest.raises(KeyError):
        SecureBertEncoder([state])
    with pytest.raises(ValueError, match="at least one layer"):
        SecureBertEncoder([])
    crypten = load()
    with pytest.raises(ValueError, match="scale 1"):
        secure_embed(
            crypten.cryptensor(torch.zeros(1, 2, 5)),
            torch.zeros(5, 4),
            torch.zeros(8, 4),
            torch.zeros(2, 4),
            None,
            None,
        )
    mask = additive_mask(torch.tensor([[1, 1, 0]]))
    assert mask.shape == (1, 1, 1, 3)
    assert mask[0, 0, 0].tolist() == [0.0, 0.0, -1e4]


def _party_forward(
    rank: int,
    layers: list[dict[str, torch.Tensor]],
    embedded: torch.Tensor,
    attention_mask: torch.Tensor,
    threat_model: ThreatModel,
) -> dict[str, Any]:
    """Party 0 inputs the hidden states (and, if private, the weights); both reveal the output."""
    crypten = load()
    crypten.cfg.communicator.verbose = True  # count rounds and bytes
    comm = crypten.comm.get()
    if rank != 0:  # only shapes are used off the owner
        embedded = torch.zeros_like(embedded)
        if threat_model is ThreatModel.WEIGHTS_PRIVATE:
            layers = [{k: torch.zeros_like(v) for k, v in state.items()} for state in layers]
    encoder = SecureBertEncoder(layers, threat_model=threat_model)
    hidden = crypten.cryptensor(embedded, src=0)  # (B, T, C)
    comm.reset_communication_stats()
    start = time.perf_counter()
    out = encoder(hidden, attention_mask)  # (B, T, C)
    seconds = time.perf_counter() - start
    stats = comm.get_communication_stats()
    return {"hidden": decode(out), "seconds": seconds, **stats}


@pytest.mark.multiparty
@pytest.mark.parametrize("threat_model", list(ThreatModel))
def test_two_parties_and_ttp(minilm: Any, threat_model: ThreatModel) -> None:
    """2 parties + TTP, 1 sentence of 16 tokens, all 6 layers: cosine >= 0.999, one run.

    The truncation is exact (`mpc.backends.crypten_trunc`), so there is no retry: the output
    must pass the garbage check and the cosine bound the first time.
    """
    input_ids, attention_mask = _tokenize(SENTENCES[1:2], PARTY_TOKENS)
    embedded, reference = _plaintext(minilm, input_ids, attention_mask)
    layers = [layer.state_dict() for layer in minilm.encoder.layer]
    results = run_parties(
        _party_forward,
        world_size=2,
        ttp=True,
        timeout_s=PARTY_TIMEOUT_S,
        args=(layers, embedded, attention_mask, threat_model),
    )
    hidden = results[0]["hidden"]  # (B, T, C) float64
    assert torch.equal(hidden, results[1]["hidden"])
    check_output(hidden, SecureBertEncoder(layers[-1:]).output_bound)
    cosines = (_pool(hidden, attention_mask) * reference).sum(1)
    assert cosines.min().item() >= MIN_COSINE, cosines.tolist()
    for result in results:
        assert result["rounds"] > 0
        assert result["bytes"] > 0


def test_output_check_refuses_garbage_and_passes_real_outputs(minilm: Any) -> None:
    from mpc.errors import GarbageOutput

    last = minilm.encoder.layer[-1].output.LayerNorm
    bound = layer_norm_bound(last.weight.detach(), last.bias.detach())
    input_ids, attention_mask = _tokenize(SENTENCES, PARTY_TOKENS)
    with torch.no_grad():
        hidden = minilm(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    assert float(hidden.abs().max()) <= bound  # the bound holds for the real model
    check_output(hidden, bound)
    wrapped = hidden.clone()
    wrapped[0, 3, 7] += 2.0**31  # what one wrapped truncation does to a hidden state
    with pytest.raises(GarbageOutput, match="beyond the model's bound"):
        check_output(wrapped, bound)
    with pytest.raises(GarbageOutput, match="non-finite"):
        check_output(torch.full((2, 3), float("nan")), bound)
    for unusable in (float("nan"), float("inf"), 0.0, -1.0):  # `x > nan` is False
        with pytest.raises(GarbageOutput, match="no usable output bound"):
            check_output(wrapped, unusable)
