"""The span hot path on CUDA gives what it gives on CPU (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from decentralized.models import load_client_parts, load_span
from decentralized.node import pick_device

pytestmark = pytest.mark.gpu


def test_auto_device_picks_cuda() -> None:
    assert pick_device("auto").type == "cuda"


def test_minilm_span_on_cuda_matches_cpu() -> None:
    parts = load_client_parts("all-MiniLM-L6-v2")
    ids, mask = parts.tokenize(["CUDA and CPU must agree.", "A second, longer sentence here."])
    hidden = parts.embed(ids)
    cpu = load_span("all-MiniLM-L6-v2", 0, 6, torch.device("cpu")).forward(hidden, mask)
    gpu = load_span("all-MiniLM-L6-v2", 0, 6, torch.device("cuda")).forward(hidden, mask)
    assert gpu.device.type == "cpu"  # spans hand results back on the CPU for the wire
    assert torch.allclose(cpu, gpu, atol=1e-3, rtol=1e-3)


def test_smollm2_span_with_cache_on_cuda_matches_cpu() -> None:
    parts = load_client_parts("SmolLM2-135M-Instruct")
    ids = parts.encode("Hello there.")
    outs = []
    for device in ("cpu", "cuda"):
        span = load_span("SmolLM2-135M-Instruct", 0, 30, torch.device(device))
        cache = span.new_cache()
        h = span.forward(parts.embed(ids), None, cache)
        outs.append(parts.head(h)[0, -1])
    assert int(outs[0].argmax()) == int(outs[1].argmax())
    assert torch.allclose(outs[0], outs[1], atol=5e-2, rtol=1e-2)
