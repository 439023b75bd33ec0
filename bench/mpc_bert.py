"""Secure all-MiniLM-L6-v2 encoder: ours vs CrypTen's default approximations vs SPU-PUMA.

What runs (one invocation, every variant on the same 8 real sentences, each padded or cut to
exactly T tokens, for each T in `--tokens`):
    ours/input_private     `mpc.models.SecureBertEncoder` (PUMA approximations, exact
                           truncation); the parties know the weights
    ours/weights_private   the same, the weights secret-shared by party 0 (PUMA's setting)
    crypten/weights_private  the same encoder with CrypTen 0.4.1's own approximations
                           (`mpc.models.crypten_default`): the "CrypTen as published" reference
    spu-puma/weights_private  SecretFlow SPU 0.9.5 with PUMA enabled, 3 parties (ABY3, FM64),
                           run by `bench/spu/puma_minilm.py` in its own venv
                           (`bench/spu/setup.sh`), one sentence per forward, the client's
                           embedding lookup outside (as ours); skipped when the venv is absent
Our variants run as 2 CrypTen parties + the TTP (`mpc.launch`: gloo on loopback, one torch
thread per process); each sentence is one forward (B = 1).

What is measured, once per session: the setup bytes (the weights shared by party 0 and, in
weights_private, each weight matrix's Beaver mask opened once: `mpc.backends.crypten_weights`).
Per forward: party 0's wall time of the encoder (no sharing, no reveal);
bytes (sent + received, 8 bytes a ring element) and rounds from CrypTen's counters of party 0,
which include its traffic with the dealer (the TTP serves party 0 only), and of party 1 (the
online traffic between the two parties); since every byte on the wire has party 0 at one end,
party 0's count is the session's total; cosine of the mean-pooled, normalized output to HF
`BertModel` on the same tokens and the largest absolute error of a hidden value. Output: one
JSON object with every variant's medians and the ratios ours / reference.

Run: `.venv/bin/python bench/mpc_bert.py --tokens 32 128 --json`
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from decentralized.models._files import minilm_dir  # noqa: E402
from mpc.backends.crypten import load  # noqa: E402
from mpc.launch import run_parties  # noqa: E402
from mpc.models import PUMA, SecureBertEncoder, ThreatModel, crypten_default  # noqa: E402

SENTENCES = (
    "Secure multi-party computation lets servers compute on secret inputs without seeing them.",
    "The quick brown fox jumps over the lazy dog near the river bank at dawn.",
    "A man is riding a white horse on an enclosed ground while a crowd watches.",
    "Transformers replaced recurrent networks for most language tasks within a few years.",
    "Paris is the capital and most populous city of France, on the river Seine.",
    "The stock market fell sharply after the central bank announced higher interest rates.",
    "Photosynthesis converts light energy into chemical energy stored in glucose molecules.",
    "Two dogs are playing in the fresh snow in the garden behind the old farmhouse.",
)
SPU_PYTHON = ROOT / "bench" / "spu" / ".venv" / "bin" / "python"
SPU_RUNNER = ROOT / "bench" / "spu" / "puma_minilm.py"
VARIANTS = {
    "ours/input_private": (ThreatModel.INPUT_PRIVATE, "puma"),
    "ours/weights_private": (ThreatModel.WEIGHTS_PRIVATE, "puma"),
    "crypten/weights_private": (ThreatModel.WEIGHTS_PRIVATE, "crypten-default"),
}


def _party(
    rank: int,
    layers: list[dict[str, torch.Tensor]],
    embedded: torch.Tensor,
    attention_mask: torch.Tensor,
    threat_model: ThreatModel,
    approximations: str,
) -> list[dict[str, Any]]:
    crypten = load()
    crypten.cfg.communicator.verbose = True
    comm = crypten.comm.get()
    if rank != 0:
        embedded = torch.zeros_like(embedded)
        if threat_model is ThreatModel.WEIGHTS_PRIVATE:
            layers = [{k: torch.zeros_like(v) for k, v in s.items()} for s in layers]
    suite = PUMA if approximations == "puma" else crypten_default()
    comm.reset_communication_stats()
    encoder = SecureBertEncoder(layers, threat_model=threat_model, approximations=suite)
    setup = comm.get_communication_stats()  # sharing the weights (and opening their masks)
    out = []
    for i in range(embedded.shape[0]):
        hidden = crypten.cryptensor(embedded[i : i + 1], src=0)  # (1, T, C)
        comm.reset_communication_stats()
        start = time.perf_counter()
        result = encoder(hidden, attention_mask[i : i + 1])  # (1, T, C)
        seconds = time.perf_counter() - start
        stats = comm.get_communication_stats()
        out.append(
            {
                "seconds": seconds,
                "rounds": stats["rounds"],
                "bytes": stats["bytes"],
                "hidden": result.get_plain_text().double(),
                "setup_bytes": setup["bytes"],
            }
        )
    return out


def _pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask[:, :, None].to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=1)


def _ours(
    name: str,
    layers: list[dict[str, torch.Tensor]],
    embedded: torch.Tensor,
    mask: torch.Tensor,
    plain: torch.Tensor,
) -> dict[str, Any]:
    threat_model, approximations = VARIANTS[name]
    results = run_parties(
        _party,
        world_size=2,
        ttp=True,
        timeout_s=3600.0,
        args=(layers, embedded, mask, threat_model, approximations),
    )
    forwards = []
    for i, (p0, p1) in enumerate(zip(results[0], results[1], strict=True)):
        error = ((p0["hidden"] - plain[i : i + 1]) * mask[i : i + 1, :, None]).abs()
        cosine = (
            _pooled(p0["hidden"], mask[i : i + 1]) * _pooled(plain[i : i + 1], mask[i : i + 1])
        ).sum()
        forwards.append(
            {
                "seconds": p0["seconds"],
                "bytes_party0_incl_dealer": p0["bytes"],
                "bytes_party1": p1["bytes"],
                "rounds_party0_incl_dealer": p0["rounds"],
                "rounds_party1": p1["rounds"],
                "setup_bytes_party0_incl_dealer": p0["setup_bytes"],
                "cosine": float(cosine),
                "max_abs_error": float(error.max()),
            }
        )
    return _summary(forwards)


def _summary(forwards: list[dict[str, Any]]) -> dict[str, Any]:
    def med(key: str) -> float:
        return statistics.median(f[key] for f in forwards)

    return {
        "forwards": len(forwards),
        "median_seconds": med("seconds"),
        "median_bytes_total": med("bytes_party0_incl_dealer"),
        "median_bytes_party1": med("bytes_party1"),
        "median_rounds_party1": med("rounds_party1"),
        # Once per session, before the first forward: sharing the weights and, in
        # weights_private, opening each weight matrix's fixed Beaver mask (crypten_weights).
        "setup_bytes_total": forwards[0]["setup_bytes_party0_incl_dealer"],
        "min_cosine": min(f["cosine"] for f in forwards),
        "max_abs_error": max(f["max_abs_error"] for f in forwards),
        "per_forward": forwards,
    }


def _spu(tokens: int, reference: torch.Tensor) -> dict[str, Any]:
    """SPU-PUMA on the same sentences, one sentence per forward like ours; `reference` is the
    (N, C) normalized plaintext torch embedding the SPU outputs are compared with."""
    if not SPU_PYTHON.exists() or not SPU_RUNNER.exists():
        return {"skipped": f"no SPU venv: run bench/spu/setup.sh ({SPU_PYTHON} missing)"}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"sentences": list(SENTENCES), "tokens": tokens}, f)
    command = [str(SPU_PYTHON), str(SPU_RUNNER), "--input", f.name, "--tokens", str(tokens)]
    command += ["--model-dir", str(minilm_dir()), "--batch", "1", "--embedding", "client"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=7200, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    raw = json.loads(proc.stdout.strip().splitlines()[-1])
    got = torch.nn.functional.normalize(torch.tensor(raw["embeddings"], dtype=torch.float64), dim=1)
    cosines = (got * reference).sum(1)
    per_forward = raw["communication"]["per_forward"]
    return {
        "forwards": raw["n_forwards"],
        "median_seconds": statistics.median(raw["latency"]["forward_s"]),
        "median_cpu_seconds_per_party": statistics.median(
            max(cpu) for cpu in raw["latency"]["forward_cpu_s_per_party"]
        ),
        "median_bytes_total": statistics.median(p["total_bytes"] for p in per_forward),
        "rounds": None,  # SPU's link does not count them
        "min_cosine": float(cosines.min()),
        "min_cosine_vs_own_jax_reference": raw["accuracy"]["min_cosine"],
        "max_abs_error_vs_own_jax_reference": raw["accuracy"]["max_abs_error"],
        "spu_config": raw.get("spu_config"),
        "peak_rss_bytes_per_party": raw["memory"]["peak_rss_bytes_per_party"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--variants", nargs="+", default=[*VARIANTS, "spu-puma/weights_private"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from transformers import AutoTokenizer, BertModel

    torch.set_num_threads(1)
    path = str(minilm_dir())
    model = BertModel.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    layers = [layer.state_dict() for layer in model.encoder.layer]
    report: dict[str, Any] = {"sentences": len(SENTENCES), "by_tokens": {}}
    for tokens in args.tokens:
        enc = tokenizer(
            list(SENTENCES),
            padding="max_length",
            max_length=tokens,
            truncation=True,
            return_tensors="pt",
        )
        ids, mask = enc["input_ids"], enc["attention_mask"]
        with torch.no_grad():
            embedded = model.embeddings(input_ids=ids)  # (N, T, C)
            plain = model(input_ids=ids, attention_mask=mask).last_hidden_state.double()
        row: dict[str, Any] = {}
        for name in args.variants:
            print(f"T={tokens}: {name}", file=sys.stderr)
            if name.startswith("spu"):
                row[name] = _spu(tokens, _pooled(plain, mask))
            else:
                row[name] = _ours(name, layers, embedded, mask, plain)
        row["ratios"] = _ratios(row)
        report["by_tokens"][str(tokens)] = row
    if args.json:
        print(json.dumps(report))
    else:
        for tokens, row in report["by_tokens"].items():
            for name, result in row.items():
                if name != "ratios":
                    brief = {k: v for k, v in result.items() if k != "per_forward"}
                    print(f"T={tokens} {name}: {brief}")
            print(f"T={tokens} ratios: {row['ratios']}")


def _ratios(row: dict[str, Any]) -> dict[str, float]:
    """ours / reference, like for like (weights private), where both ran."""
    ours = row.get("ours/weights_private", {})
    out: dict[str, float] = {}
    for ref_name in ("spu-puma/weights_private", "crypten/weights_private"):
        ref = row.get(ref_name, {})
        tag = ref_name.split("/")[0]
        for key, label in (("median_seconds", "latency"), ("median_bytes_total", "bytes")):
            if ours.get(key) and ref.get(key):
                out[f"{label}_ours_over_{tag}"] = ours[key] / ref[key]
    return out


if __name__ == "__main__":
    main()
