"""Network definitions, their cost in multiply-accumulates, and safetensors + JSON persistence.

Every network is rebuilt from a JSON-serialisable config dict (`build_net`) and its weights are
stored with safetensors: nothing is ever unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import ModelFormatError
from .text import PAD_ID


class MLP(nn.Module):
    """Flatten, then Linear-ReLU layers of the given widths, then a Linear to `d_out`."""

    def __init__(self, d_in: int, hidden: list[int], d_out: int) -> None:
        super().__init__()
        self.dims = [d_in, *hidden, d_out]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(self.dims[:-2], self.dims[1:-1], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(self.dims[-2], d_out))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def macs(self) -> int:
        return sum(a * b for a, b in zip(self.dims[:-1], self.dims[1:], strict=True))


class ConvBlock(nn.Sequential):
    """5x5 conv (padding 2), ReLU, 2x2 max-pool, computed as conv -> pool -> ReLU.

    ReLU is monotone, so it commutes with max: pooling first gives the same values with a
    quarter of the ReLU work, and on even sides the pool is two elementwise maxima over strided
    views, ~2x faster than `max_pool2d` on CPU for these small maps (a verifier's full-resolution
    first block is memory-bound). The modules stay (conv, ReLU, pool) so saved weights keep their
    names (`prefix.<i>.0.weight`).
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(nn.Conv2d(c_in, c_out, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self[0](x)
        n, c, h, w = y.shape
        if h % 2 or w % 2:
            return self[2](y).relu()
        y = y.view(n, c, h // 2, 2, w // 2, 2)
        y = torch.maximum(y[:, :, :, 0], y[:, :, :, 1])
        return torch.maximum(y[..., 0], y[..., 1]).relu()


INFERENCE_CHUNK = 32  # images per chunk when a conv net runs without autograd


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return ConvBlock(c_in, c_out)


class ConvPrefixNet(nn.Module):
    """Conv blocks (5x5 conv, ReLU, 2x2 max-pool) on 28x28 images, then an MLP head.

    With the service's full block list this is the MNIST service model; a GDTL verifier keeps the
    first `len(channels)` of the service's blocks (transferred weights) and a compact head.
    """

    def __init__(self, channels: list[int], hidden: list[int], n_classes: int) -> None:
        super().__init__()
        self.config = {
            "kind": "conv",
            "channels": channels,
            "hidden": hidden,
            "n_classes": n_classes,
        }
        c_in = 1
        blocks = []
        for c in channels:
            blocks.append(_conv_block(c_in, c))
            c_in = c
        self.prefix = nn.Sequential(*blocks)
        side = 28 // 2 ** len(channels)
        self.head = MLP(c_in * side * side, hidden, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:  # (N, 1, 28, 28) -> (N, c, s, s)
        return self.prefix(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 1, 28, 28) -> (N, C) logits
        if len(x) > INFERENCE_CHUNK and not torch.is_grad_enabled():
            # Full-resolution feature maps are ~100 KB an image: in chunks they stay in cache
            # (a 1-block verifier on 256 images: 34 -> 15 ms on one thread), and a node doing
            # this leaves more memory bandwidth to whatever shares its machine.
            return torch.cat([self.head(self.prefix(c)) for c in x.split(INFERENCE_CHUNK)])
        return self.head(self.prefix(x))

    def macs(self) -> int:
        total, c_in, side = 0, 1, 28
        for c in self.config["channels"]:
            total += side * side * c * c_in * 25
            c_in, side = c, side // 2
        return total + self.head.macs()


class TextPrefixNet(nn.Module):
    """The first `layers` layers of a BERT encoder, mean pooling over tokens, then an MLP head.

    Input: token ids (N, T) int64 with [PAD] = 0. A GDTL verifier transfers the embedding layer
    and the first `layers` transformer layers of the service's MiniLM.
    """

    def __init__(
        self, bert: dict[str, Any], layers: int, hidden: list[int], n_classes: int
    ) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        self.config = {
            "kind": "text",
            "bert": bert,
            "layers": layers,
            "hidden": hidden,
            "n_classes": n_classes,
        }
        cfg = BertConfig(**{**bert, "num_hidden_layers": layers})
        self.prefix = BertModel(cfg, add_pooling_layer=False)
        self.head = MLP(cfg.hidden_size, hidden, n_classes)

    def features(self, ids: torch.Tensor) -> torch.Tensor:  # (N, T) -> (N, H) mean-pooled
        mask = ids != PAD_ID
        hidden = self.prefix(input_ids=ids, attention_mask=mask).last_hidden_state
        w = mask[..., None].float()
        return (hidden * w).sum(1) / w.sum(1).clamp_min(1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(ids))

    def macs(self, tokens: int = 128) -> int:
        """Per input of `tokens` tokens (see `bert_macs`), plus the head."""
        return bert_macs(self.config["bert"], self.config["layers"], tokens) + self.head.macs()


def bert_macs(bert: dict[str, Any], layers: int, tokens: int) -> int:
    """Multiply-accumulates of `layers` BERT layers on `tokens` tokens: QKVO, FFN, attention.

    Embedding lookups, LayerNorm and softmax are not counted (they are O(tokens * hidden)).
    """
    h, ffn = bert["hidden_size"], bert["intermediate_size"]
    return layers * tokens * (4 * h * h + 2 * h * ffn + 2 * tokens * h)


def build_net(config: dict[str, Any]) -> nn.Module:
    """Rebuild a network from its config dict (the `config` attribute of a saved net)."""
    kind = config.get("kind")
    if kind == "conv":
        return ConvPrefixNet(config["channels"], config["hidden"], config["n_classes"])
    if kind == "text":
        return TextPrefixNet(
            config["bert"], config["layers"], config["hidden"], config["n_classes"]
        )
    if kind == "mlp":
        return MLPNet(config["d_in"], config["hidden"], config["d_out"])
    raise ModelFormatError(f"unknown network kind {kind!r}")


class MLPNet(MLP):
    """An MLP with its own config and an input standardisation (x - shift) / scale.

    Used for the sentiment head, the detector, the re-classifier and the generator. `shift` and
    `scale` are buffers, saved with the weights; `standardise_on` fits them to data.
    """

    def __init__(self, d_in: int, hidden: list[int], d_out: int) -> None:
        super().__init__(d_in, hidden, d_out)
        self.config = {"kind": "mlp", "d_in": d_in, "hidden": hidden, "d_out": d_out}
        self.register_buffer("shift", torch.zeros(d_in))
        self.register_buffer("scale", torch.ones(d_in))

    def standardise_on(self, x: torch.Tensor) -> None:
        self.shift.copy_(x.mean(0))
        self.scale.copy_(x.std(0).clamp_min(1e-4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.shift) / self.scale)


def save_net(net: nn.Module, directory: Path, name: str) -> dict[str, Any]:
    """Write `name.safetensors`; return the net's config for the caller's JSON file."""
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(directory / f"{name}.safetensors"))
    return dict(net.config)


def load_net(config: dict[str, Any], directory: Path, name: str) -> nn.Module:
    """Rebuild the net from `config` and load `name.safetensors` strictly (eval mode)."""
    path = directory / f"{name}.safetensors"
    if not path.exists():
        raise ModelFormatError(f"missing weights file {path}")
    net = build_net(config)
    try:
        net.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as exc:
        raise ModelFormatError(f"{path} does not match its config: {exc}") from exc
    return net.eval()


def write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ModelFormatError(f"missing config file {path}")
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelFormatError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ModelFormatError(f"{path} must hold a JSON object")
    return obj
