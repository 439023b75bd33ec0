"""A torch model loaded INSIDE an enclave process by the tests (weights as safetensors bytes)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from tee.tensors import decode_tensors, encode_tensors


def linear_classifier(model: bytes) -> Callable[[bytes], bytes]:
    """A torch linear layer + softmax whose weights arrive as safetensors bytes."""
    torch.set_num_threads(1)
    state = decode_tensors(model)
    layer = torch.nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
    layer.load_state_dict(state)
    layer.eval()

    def handle(data: bytes) -> bytes:
        x = decode_tensors(data)["x"]
        with torch.no_grad():
            return encode_tensors({"probs": torch.softmax(layer(x), dim=-1)})

    return handle
