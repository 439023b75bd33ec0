"""Secure all-MiniLM-L6-v2 encoder benchmark: 2 CrypTen parties + TTP on loopback.

What runs
    `--runs` sessions of `mpc.launch.run_parties` (2 parties + CrypTen's TTP, gloo over
    127.0.0.1, torch limited to one thread per process). In each session party 0 secret-shares
    the embedding output of `--batch` English sentences padded to `--tokens` tokens (and, with
    `--threat-model weights_private`, the layer weights), then both parties run
    `mpc.models.SecureBertEncoder` (all 6 layers) `--repeats` times and reveal each output.

What is measured
    Per forward: wall time in party 0 (encoder only: no sharing, no reveal), CrypTen's
    communication counters (`cfg.communicator.verbose`) of each party: party 1's are the online
    traffic between the two parties; party 0's also include its requests to and corrections
    from the TTP (the dealer). CrypTen counts 8 bytes a ring element and one round per
    collective call. Accuracy: the decrypted hidden states are mean-pooled and normalized in
    plaintext and compared (cosine) with HF `BertModel` on the same tokens; a forward is
    "garbage" when some hidden value is off by more than 1 from plaintext (the normal error is
    below 0.1), which is how a failed two-party truncation shows.

Output
    One JSON object on stdout (`--json`) or a short summary; progress goes to stderr.

Run: `.venv/bin/python bench/mpc_bert.py --runs 2 --repeats 5 --json`
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from decentralized.models._files import minilm_dir  # noqa: E402
from mpc.backends.crypten import load  # noqa: E402
from mpc.launch import run_parties  # noqa: E402
from mpc.models import DEFAULT_EXP_ITERATIONS, SecureBertEncoder, ThreatModel  # noqa: E402

SENTENCES = (
    "Secure multi-party computation lets servers compute on secret inputs.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "A cat sat on the mat.",
    "Transformers replaced recurrent networks for most language tasks.",
)
GARBAGE_ABS_ERROR = 1.0  # a hidden value this far from plaintext marks a failed forward


def _decode(secret: Any) -> torch.Tensor:
    return secret.reveal().double() / secret.encoder.scale


def _party(
    rank: int,
    layers: list[dict[str, torch.Tensor]],
    embedded: torch.Tensor,
    attention_mask: torch.Tensor,
    threat_model: ThreatModel,
    repeats: int,
    exp_iterations: int,
) -> list[dict[str, Any]]:
    crypten = load()
    crypten.cfg.communicator.verbose = True
    comm = crypten.comm.get()
    if rank != 0:
        embedded = torch.zeros_like(embedded)
        if threat_model is ThreatModel.WEIGHTS_PRIVATE:
            layers = [{k: torch.zeros_like(v) for k, v in s.items()} for s in layers]
    encoder = SecureBertEncoder(layers, threat_model=threat_model, exp_iterations=exp_iterations)
    hidden = crypten.cryptensor(embedded, src=0)  # (B, T, C)
    out = []
    for _ in range(repeats):
        comm.reset_communication_stats()
        start = time.perf_counter()
        result = encoder(hidden, attention_mask)  # (B, T, C)
        seconds = time.perf_counter() - start
        stats = comm.get_communication_stats()
        out.append({"seconds": seconds, "rounds": stats["rounds"], "bytes": stats["bytes"]})
        out[-1]["hidden"] = _decode(result)
    return out


def _pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask[:, :, None].to(hidden.dtype)  # (B, T, 1)
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)  # (B, C)


def main() -> None:
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument(
        "--threat-model", default="input_private", choices=["input_private", "weights_private"]
    )
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--runs", type=int, default=1, help="party sessions")
    parser.add_argument("--repeats", type=int, default=3, help="forwards per session")
    parser.add_argument("--exp-iterations", type=int, default=DEFAULT_EXP_ITERATIONS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from transformers import AutoTokenizer, BertModel

    path = str(minilm_dir())
    model = BertModel.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(args.batch)]
    enc = tokenizer(
        texts, padding="max_length", max_length=args.tokens, truncation=True, return_tensors="pt"
    )
    ids, mask = enc["input_ids"], enc["attention_mask"]
    with torch.no_grad():
        embedded = model.embeddings(input_ids=ids)  # (B, T, C)
        plain = model(input_ids=ids, attention_mask=mask).last_hidden_state.double()
    reference = _pool(plain, mask)  # (B, C)
    layers = [layer.state_dict() for layer in model.encoder.layer]
    threat_model = ThreatModel(args.threat_model)
    forwards: list[dict[str, Any]] = []
    for run in range(args.runs):
        print(f"session {run + 1}/{args.runs}", file=sys.stderr)
        results = run_parties(
            _party,
            world_size=2,
            ttp=True,
            timeout_s=600.0,
            args=(layers, embedded, mask, threat_model, args.repeats, args.exp_iterations),
        )
        for p0, p1 in zip(results[0], results[1], strict=True):
            error = ((p0["hidden"] - plain) * mask[:, :, None]).abs()  # (B, T, C)
            forwards.append(
                {
                    "seconds": p0["seconds"],
                    "party0_rounds": p0["rounds"],
                    "party0_bytes": p0["bytes"],
                    "party1_rounds": p1["rounds"],
                    "party1_bytes": p1["bytes"],
                    "min_cosine": (_pool(p0["hidden"], mask) * reference).sum(1).min().item(),
                    "max_abs_error": error.max().item(),
                    "bad_values": int((error > GARBAGE_ABS_ERROR).sum()),
                }
            )
    summary = {
        "threat_model": threat_model.value,
        "batch": args.batch,
        "tokens": args.tokens,
        "exp_iterations": args.exp_iterations,
        "forwards": len(forwards),
        "garbage_forwards": sum(f["bad_values"] > 0 for f in forwards),
        "median_seconds": statistics.median(f["seconds"] for f in forwards),
        "min_cosine": min(f["min_cosine"] for f in forwards),
        "per_forward": forwards,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            if key != "per_forward":
                print(f"{key}: {value}")
        first = forwards[0]
        print(f"party1 (online) rounds/bytes: {first['party1_rounds']} / {first['party1_bytes']}")
        print(f"party0 (+ dealer) rounds/bytes: {first['party0_rounds']} / {first['party0_bytes']}")


if __name__ == "__main__":
    main()
