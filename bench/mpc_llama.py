"""Secure SmolLM2-135M-Instruct generation: seconds, bytes and rounds per generated token.

What runs: all 30 layers of `mpc.models.SecureLlama` on the real float32 weights, 2 CrypTen
parties + the TTP (`mpc.launch`: gloo on loopback, one torch thread per process), greedy
generation of `--new-tokens` tokens for a chat prompt, in each threat model of
`--threat-models` (input_private: the parties know the weights; weights_private: PUMA's,
the owner secret-shares them and each weight matrix's Beaver mask is opened once at setup).
Party 0 is the client (its prompt) and the weights' owner. The reference is plaintext HF
`LlamaForCausalLM.generate(do_sample=False)` on the same weights and prompt.

Measured per threat model: setup (building the model: sharing the weights and opening the
weight masks) seconds and bytes; per step (step 0 = prefill of the prompt + the first token,
then one step per further token) party 0's seconds, bytes (sent + received, dealer traffic
included) and rounds; whether the tokens equal the plaintext greedy tokens. Output: one JSON
object.

Run: `.venv/bin/python bench/mpc_llama.py --json` (about 10 minutes on 2 cores)
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from decentralized.models._files import smollm2_dir  # noqa: E402
from decentralized.models.llama import LlamaClientParts  # noqa: E402
from mpc.backends.crypten import load  # noqa: E402
from mpc.launch import run_parties  # noqa: E402
from mpc.models.bert import ThreatModel  # noqa: E402
from mpc.models.llama import SecureLlama  # noqa: E402

PROMPT = "What is the capital of France?"


def _party(rank: int, ids: torch.Tensor, new_tokens: int, threat_model: str) -> dict[str, Any]:
    crypten = load()
    crypten.cfg.communicator.verbose = True
    comm = crypten.comm.get()
    tm = ThreatModel(threat_model)
    zero = rank != 0 and tm is ThreatModel.WEIGHTS_PRIVATE  # only the owner's values are used
    comm.reset_communication_stats()
    start = time.perf_counter()
    model = SecureLlama.from_pretrained(smollm2_dir(), zero=zero, threat_model=tm)
    setup_s = time.perf_counter() - start
    setup = comm.get_communication_stats()
    prompt = ids if rank == 0 else torch.zeros_like(ids)
    trace = model.generate(prompt, new_tokens, client=0)
    return {"setup_seconds": setup_s, "setup_bytes": setup["bytes"], **vars(trace)}


def _plain_greedy(ids: torch.Tensor, new_tokens: int) -> list[int]:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(smollm2_dir())).eval()
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False)
    return out[0, ids.shape[1] :].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=3)
    parser.add_argument(
        "--threat-models", nargs="+", default=[t.value for t in ThreatModel], metavar="TM"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ids = LlamaClientParts().encode(PROMPT)  # (1, T), the chat template as the SDK applies it
    expected = _plain_greedy(ids, args.new_tokens)
    report: dict[str, Any] = {
        "prompt": PROMPT,
        "prompt_tokens": int(ids.shape[1]),
        "new_tokens": args.new_tokens,
        "plaintext_tokens": expected,
        "threat_models": {},
    }
    for name in args.threat_models:
        print(f"{name} ...", file=sys.stderr)
        client = run_parties(
            _party, world_size=2, ttp=True, timeout_s=3600.0, args=(ids, args.new_tokens, name)
        )[0]
        further = client["seconds"][1:]
        report["threat_models"][name] = {
            "tokens": client["tokens"],
            "same_as_plaintext": client["tokens"] == expected,
            "setup_seconds": client["setup_seconds"],
            "setup_bytes_party0": client["setup_bytes"],
            "first_token_seconds": client["seconds"][0],
            "median_next_token_seconds": statistics.median(further) if further else None,
            "step_seconds": client["seconds"],
            "step_bytes_party0_incl_dealer": client["bytes"],
            "step_rounds_party0_incl_dealer": client["rounds"],
            "dealer": client["dealer"],
        }
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
