"""The SDK refuses bad arguments with its own InvalidRequest before contacting any node (they
were TypeError, OverflowError or a jinja2 error, and a zero timeout got every node banned)."""

from __future__ import annotations

import pytest

from secure_infer import Client, InvalidRequest

MINILM = "all-MiniLM-L6-v2"
SMOL = "SmolLM2-135M-Instruct"
NOWHERE = ["127.0.0.1:1"]  # never contacted: every call below fails before the network


@pytest.mark.parametrize(
    "kwargs",
    [{"hop_timeout_s": 0}, {"hop_timeout_s": -1.0}, {"hop_timeout_s": float("nan")},
     {"hop_timeout_s": "30"}, {"max_failovers": -1}, {"max_failovers": 1.5}],
)  # fmt: skip
def test_client_options(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidRequest):
        Client(NOWHERE, insecure_dev=True, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("max_tokens", [0, -5, 513, 2.5, True])
def test_embed_max_tokens(max_tokens: object) -> None:
    with Client(NOWHERE, insecure_dev=True) as client:
        with pytest.raises(InvalidRequest, match="max_tokens"):
            client.embed(MINILM, ["a text"], max_tokens=max_tokens)  # type: ignore[arg-type]
        with pytest.raises(InvalidRequest, match="strings"):
            client.embed(MINILM, ["a text", 5])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("prompt", "max_new_tokens", "match"),
    [
        ("hi", 2.5, "max_new_tokens"),
        ("hi", True, "max_new_tokens"),
        (123, 4, "prompt must be"),
        ([{"role": "user"}], 4, "prompt must be"),
        ([{"role": "user", "content": 5}], 4, "prompt must be"),
    ],
)
def test_generate_arguments(prompt: object, max_new_tokens: object, match: str) -> None:
    with Client(NOWHERE, insecure_dev=True) as client:
        with pytest.raises(InvalidRequest, match=match):
            list(client.generate_stream(SMOL, prompt, max_new_tokens=max_new_tokens))  # type: ignore[arg-type]
