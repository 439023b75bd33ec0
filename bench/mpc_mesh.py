"""MPC embeddings through real node daemons: the dealer online vs preprocessed from a plan.

    .venv/bin/python bench/mpc_mesh.py --json [--tokens 32] [--sessions 3]
        [--threat-models input_private weights_private]

Starts 3 node daemons on 127.0.0.1 (mTLS, MPC relay over gRPC), each able to be party 0,
party 1 or the dealer for all-MiniLM-L6-v2, and runs `client.embed(..., privacy="mpc")` on the
same real sentences `--sessions` times per threat model with pinned parties (party 0 = node
m0). The first session of a shape makes one blocking dealer round trip per correlated value
(CrypTen's TTP protocol: the reference); party 0 records the plan and its node keeps it, so
every later session of the same shapes fetches the planned values in 64 MiB chunks ahead of use
(`mpc.backends.crypten_dealer`, `decentralized/mpc_worker.py`). Reported per session: client
wall time, party 0's seconds, rounds and dealer figures, the bytes all ranks sent, and the
minimum cosine to sentence-transformers; then the ratios online / preprocessed (first session
vs the median of the later ones). One JSON object on stdout; progress on stderr.

Loopback hides network latency: each saved round trip is worth far more between machines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from secure_infer import MPCOptions  # noqa: E402
from secure_infer.client import Client  # noqa: E402
from secure_infer.localmesh import LocalMesh, NodeSpec  # noqa: E402

MINILM = "all-MiniLM-L6-v2"
NODES = ("m0", "m1", "m2")
SENTENCES = (
    "The new phone's battery lasts two full days, but the camera struggles badly in low light "
    "and the software updates arrive months after other brands ship them.",
    "After the river flooded the lower town for the third spring in a row, the council finally "
    "voted to fund a levee, a pumping station and a warning system along the valley.",
)


def _reference(texts: list[str], tokens: int) -> Any:
    from sentence_transformers import SentenceTransformer

    from decentralized.models._files import minilm_dir

    model = SentenceTransformer(str(minilm_dir()), device="cpu")
    model.max_seq_length = tokens
    return model.encode(texts, normalize_embeddings=True)


def _session(client: Client, texts: list[str], tokens: int, threat: str, ref: Any) -> dict:
    start = time.perf_counter()
    res = client.embed(
        MINILM,
        texts,
        max_tokens=tokens,
        privacy="mpc",
        mpc=MPCOptions(threat_model=threat, parties=NODES),
    )
    wall = time.perf_counter() - start
    assert res.mpc is not None
    party0 = res.mpc.parties[0]
    return {
        "client_seconds": wall,
        "party0_seconds": party0.seconds,
        "party0_rounds": party0.rounds,
        "dealer_preprocessed": party0.dealer_preprocessed,
        "dealer_online_requests": party0.dealer_online_requests,
        "dealer_round_trips": party0.dealer_round_trips,
        "bytes_total": res.mpc.bytes_total,
        "cosine_min": float((res.embeddings * ref).sum(1).min()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tokens", type=int, default=32, help="tokens per sentence (truncated)")
    parser.add_argument("--sessions", type=int, default=3, help="sessions per threat model")
    parser.add_argument(
        "--threat-models", nargs="+", default=["input_private", "weights_private"], metavar="TM"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.sessions < 2:
        parser.error("--sessions must be >= 2 (the first one records the dealer plan)")
    texts = list(SENTENCES)
    ref = _reference(texts, args.tokens)
    out: dict[str, Any] = {
        "model": MINILM,
        "sentences": len(texts),
        "tokens": args.tokens,
        "nodes": 3,
        "channel": "mTLS gRPC relay on 127.0.0.1",
        "dealer": "CrypTen TTP on node m2 (trusted dealer: an assumption, not a property)",
        "threat_models": {},
    }
    specs = [NodeSpec(name=name, mpc_models=(MINILM,)) for name in NODES]
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalMesh(Path(tmp), specs) as mesh,
        Client(mesh.seeds, tls=mesh.client_tls()) as client,
    ):
        for threat in args.threat_models:
            runs = []
            for i in range(args.sessions):
                print(f"{threat}: session {i + 1}/{args.sessions}", file=sys.stderr)
                runs.append(_session(client, texts, args.tokens, threat, ref))
            first, later = runs[0], runs[1:]
            median = {k: statistics.median(r[k] for r in later) for k in first}
            out["threat_models"][threat] = {
                "sessions": runs,
                "first_uses_plan": first["dealer_preprocessed"],
                "later_use_plan": all(r["dealer_preprocessed"] for r in later),
                "client_seconds_ratio_online_vs_preprocessed": first["client_seconds"]
                / median["client_seconds"],
                "party0_rounds_ratio_online_vs_preprocessed": first["party0_rounds"]
                / median["party0_rounds"],
                "cosine_min": min(r["cosine_min"] for r in runs),
            }
    if args.json:
        print(json.dumps(out))
        return
    for threat, row in out["threat_models"].items():
        print(
            f"{threat}: latency online/preprocessed "
            f"{row['client_seconds_ratio_online_vs_preprocessed']:.2f}x, rounds "
            f"{row['party0_rounds_ratio_online_vs_preprocessed']:.2f}x, "
            f"cosine min {row['cosine_min']:.5f}"
        )


if __name__ == "__main__":
    main()
