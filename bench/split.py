"""Split-inference benchmark: every request crosses three real node daemons (mTLS, loopback).

What runs
    One `LocalMesh` of three node processes on 127.0.0.1 with mTLS. Each model is cut into
    thirds, one third per node, so every request visits all three nodes in order:

        node-a: all-MiniLM-L6-v2 [0, 2)    SmolLM2-135M-Instruct [0, 10)
        node-b: all-MiniLM-L6-v2 [2, 4)    SmolLM2-135M-Instruct [10, 20)
        node-c: all-MiniLM-L6-v2 [4, 6)    SmolLM2-135M-Instruct [20, 30)

    The client (this process) keeps the tokenizer, embedding layer and head of each model
    (U-shaped split) and relays hidden states from node to node.

What is measured
    Embedding: one `Client.embed` call on a fixed batch of 32 English sentences (8-25 words
    each), against `SentenceTransformer.encode(..., normalize_embeddings=True)` on the same
    weights (`minilm_dir()`), in this same process. Both get `WARMUP_CALLS` untimed calls with
    the full batch (the first calls of a fresh process are much slower), then are timed
    `--repeats` times, alternating mesh and local; the figure is the median wall time of one
    call (tokenization to unit-norm embeddings). Also reported: the minimum cosine similarity
    between mesh and local embeddings over the 32 sentences.

    Generation: one `Client.generate` call (greedy, chat template, `--tokens` new tokens)
    against `AutoModelForCausalLM.generate(do_sample=False)` of the whole model (from
    `smollm2_dir()`) with the same prompt and `max_new_tokens`, in this same process. The prompt
    asks for a long story so neither side stops before `--tokens`. tokens/s is generated tokens
    divided by the wall time of the whole call (prompt encoding, prefill and decode; for the
    mesh also opening and closing the per-node sessions), median over `--repeats`, alternating
    mesh and local after `WARMUP_CALLS` untimed full-length calls of each. `matches_local` says
    whether the generated token ids are identical in every repeat.

    Ratios are mesh / local. Targets: embedding latency ratio <= 2.0 and generation tokens/s
    ratio >= 0.5.

Output
    With `--json`, exactly one JSON object on stdout; progress goes to stderr. Without it, a
    short table on stdout. `--threads N` sets SECURE_INFER_THREADS=N for the node processes
    (torch intra-op threads per node); by default nodes use torch's default thread count.

Run: `.venv/bin/python bench/split.py --json`
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from secure_infer.localmesh import LocalMesh, NodeSpec  # noqa: E402

MINILM = "all-MiniLM-L6-v2"
SMOL = "SmolLM2-135M-Instruct"
NODES = [
    NodeSpec(name="node-a", spans=((MINILM, 0, 2), (SMOL, 0, 10))),
    NodeSpec(name="node-b", spans=((MINILM, 2, 4), (SMOL, 10, 20))),
    NodeSpec(name="node-c", spans=((MINILM, 4, 6), (SMOL, 20, 30))),
]
EMBED_TARGET_RATIO_MAX = 2.0
GENERATE_TARGET_RATIO_MIN = 0.5

SENTENCES = [
    "The old lighthouse on the northern cliff has guided fishing boats home for nearly two "
    "centuries.",
    "She forgot her umbrella on the train and walked the last mile through heavy rain.",
    "Our quarterly revenue grew by twelve percent, mostly thanks to strong sales in Southeast "
    "Asia.",
    "Photosynthesis lets plants turn sunlight, water and carbon dioxide into sugar and oxygen.",
    "Please remember to water the tomatoes every morning while I am away on holiday.",
    "The committee postponed its vote on the new housing policy until after the election.",
    "A small black cat slept on the windowsill.",
    "Quantum computers use qubits, which can represent zero and one at the same time.",
    "The recipe calls for two cups of flour, a pinch of salt and three eggs.",
    "After the earthquake, volunteers from neighbouring towns arrived with food, blankets and "
    "medical supplies.",
    "He practised the violin for six hours a day throughout the winter, hoping to impress "
    "the judges at the national competition in Vienna.",
    "The museum's new exhibition explores how ancient Egyptians built their enormous stone "
    "pyramids.",
    "Traffic on the motorway was backed up for miles because of an overturned lorry.",
    "Regular exercise and a balanced diet can significantly reduce the risk of heart disease.",
    "On the last day of the summer holidays, the children built a huge sandcastle and "
    "decorated it with shells, seaweed and small flags.",
    "Our flight to Lisbon was delayed by three hours due to a technical problem with the engine.",
    "The central bank raised interest rates for the fourth time, arguing that "
    "inflation must be brought back under control before wages can catch up.",
    "Wolves were reintroduced to the national park, and the whole ecosystem slowly changed.",
    "Can you recommend a good book about Rome?",
    "The software update fixed several security vulnerabilities but introduced a bug in the "
    "printer driver.",
    "Every autumn the maple trees along the river turn brilliant shades of red and gold.",
    "The detective noticed a faint smell of tobacco in the locked study and grew suspicious.",
    "Students who sleep well before an exam usually remember more than those who stay up late.",
    "The orchestra received a standing ovation after its performance of Beethoven's Ninth "
    "Symphony.",
    "Heavy snowfall closed the mountain pass, leaving dozens of hikers stranded overnight in "
    "the refuge.",
    "These shoes are one size too small for me.",
    "The startup raised forty million dollars to build batteries for electric delivery vans.",
    "Honeybees communicate the location of flowers to each other through a special waggle dance.",
    "The city council approved a plan to plant ten thousand trees along its busiest streets.",
    "My grandmother still writes every letter by hand.",
    "Astronomers detected water vapour in the atmosphere of a planet orbiting a distant star.",
    "The football match ended in a draw after a dramatic late goal from the visiting team.",
]
PROMPT = (
    "Write a very long and detailed story about a young sailor who discovers a hidden island. "
    "Describe the ship, the crew, the storm and the island in many paragraphs."
)
WARMUP_CALLS = 2  # untimed full-size calls of mesh and local before any timing


_T0 = time.perf_counter()


def say(msg: str) -> None:
    """Progress on stderr, stamped with seconds since start."""
    sys.stderr.write(f"[{time.perf_counter() - _T0:7.1f}s] {msg}\n")
    sys.stderr.flush()


def median(values: list[float]) -> float:
    return float(statistics.median(values))


class LocalEmbedder:
    """all-MiniLM-L6-v2 run whole by sentence-transformers: the embedding reference."""

    def __init__(self) -> None:
        from sentence_transformers import SentenceTransformer

        from decentralized.models._files import minilm_dir

        self.model = SentenceTransformer(str(minilm_dir()), device="cpu")

    def encode(self, texts: list[str]) -> np.ndarray:
        emb = self.model.encode(
            texts, batch_size=len(texts), convert_to_numpy=True, normalize_embeddings=True
        )
        return np.asarray(emb, dtype=np.float32)


class LocalLM:
    """SmolLM2-135M-Instruct run whole by transformers: the generation reference."""

    def __init__(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from decentralized.models._files import smollm2_dir

        path = smollm2_dir()
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(str(path)).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))

    @property
    def dtype(self) -> str:
        return str(next(self.model.parameters()).dtype).removeprefix("torch.")

    def generate(self, prompt: str, max_new_tokens: int) -> list[int]:
        enc = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        ids = enc["input_ids"]
        with self.torch.inference_mode():
            out = self.model.generate(
                ids,
                attention_mask=enc["attention_mask"],
                max_new_tokens=max_new_tokens,
                do_sample=False,
                top_p=None,
                top_k=None,
                temperature=None,
            )
        return [int(t) for t in out[0, ids.shape[1] :]]


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - t0


def bench_embed(client: Any, local: LocalEmbedder, repeats: int) -> dict[str, Any]:
    texts = list(SENTENCES)
    say(f"embed: warm-up (mesh and local, batch {len(texts)})")
    for _ in range(WARMUP_CALLS):
        client.embed(MINILM, texts)
        local.encode(texts)
    mesh_s: list[float] = []
    local_s: list[float] = []
    parts: dict[str, list[float]] = {}
    cosines: list[float] = []
    route: list[dict[str, Any]] = []
    for i in range(repeats):
        res, dt = timed(client.embed, MINILM, texts)
        mesh_s.append(dt)
        for key, value in res.timings.items():
            parts.setdefault(key, []).append(value)
        ref, dt_local = timed(local.encode, texts)
        local_s.append(dt_local)
        cos = (res.embeddings * ref).sum(axis=1) / (
            np.linalg.norm(res.embeddings, axis=1) * np.linalg.norm(ref, axis=1)
        )
        cosines.append(float(cos.min()))
        route = [{"node": h.name, "start": h.start, "end": h.end} for h in res.route]
        say(
            f"  embed {i + 1}/{repeats}: mesh {dt:.3f} s, local {dt_local:.3f} s, "
            f"cos min {cos.min():.6f}"
        )
    mesh, loc = median(mesh_s), median(local_s)
    return {
        "model": MINILM,
        "batch": len(texts),
        "repeats": repeats,
        "mesh_latency_s": mesh,
        "local_latency_s": loc,
        "latency_ratio": mesh / loc,
        "target_ratio_max": EMBED_TARGET_RATIO_MAX,
        "target_met": mesh / loc <= EMBED_TARGET_RATIO_MAX,
        "cosine_min": min(cosines),
        "mesh_latency_all_s": mesh_s,
        "local_latency_all_s": local_s,
        "mesh_breakdown_median_s": {k: median(v) for k, v in parts.items()},
        "route": route,
    }


def bench_generate(client: Any, local: LocalLM, repeats: int, tokens: int) -> dict[str, Any]:
    say(f"generate: warm-up ({WARMUP_CALLS} x {tokens} tokens, mesh and local)")
    for _ in range(WARMUP_CALLS):
        client.generate(SMOL, PROMPT, max_new_tokens=tokens)
        local.generate(PROMPT, tokens)
    mesh_rate: list[float] = []
    local_rate: list[float] = []
    mesh_s: list[float] = []
    local_s: list[float] = []
    prefill: list[float] = []
    decode_rate: list[float] = []
    matches: list[bool] = []
    mesh_counts: list[int] = []
    local_counts: list[int] = []
    route: list[dict[str, Any]] = []
    text = ""
    prompt_tokens = 0
    for i in range(repeats):
        res, dt = timed(client.generate, SMOL, PROMPT, max_new_tokens=tokens)
        ref, dt_local = timed(local.generate, PROMPT, tokens)
        n_mesh, n_local = len(res.token_ids), len(ref)
        mesh_counts.append(n_mesh)
        local_counts.append(n_local)
        mesh_s.append(dt)
        local_s.append(dt_local)
        mesh_rate.append(n_mesh / dt)
        local_rate.append(n_local / dt_local)
        prefill.append(res.timings["prefill_s"])
        decode_rate.append(res.timings["decode_tokens_per_s"])
        matches.append(list(res.token_ids) == ref)
        route = [{"node": h.name, "start": h.start, "end": h.end} for h in res.route]
        text = res.text
        prompt_tokens = res.prompt_tokens
        say(
            f"  generate {i + 1}/{repeats}: mesh {n_mesh} tok in {dt:.2f} s "
            f"({n_mesh / dt:.1f} tok/s), local {n_local} tok in {dt_local:.2f} s "
            f"({n_local / dt_local:.1f} tok/s), match {matches[-1]}"
        )
    mesh, loc = median(mesh_rate), median(local_rate)
    return {
        "model": SMOL,
        "prompt_tokens": prompt_tokens,
        "max_new_tokens": tokens,
        "new_tokens": mesh_counts[-1],
        "local_new_tokens": local_counts[-1],
        "repeats": repeats,
        "mesh_tokens_per_s": mesh,
        "local_tokens_per_s": loc,
        "tokens_per_s_ratio": mesh / loc,
        "target_ratio_min": GENERATE_TARGET_RATIO_MIN,
        "target_met": mesh / loc >= GENERATE_TARGET_RATIO_MIN,
        "matches_local": all(matches),
        "mesh_tokens_per_s_all": mesh_rate,
        "local_tokens_per_s_all": local_rate,
        "mesh_wall_s_median": median(mesh_s),
        "local_wall_s_median": median(local_s),
        "mesh_prefill_s_median": median(prefill),
        "mesh_decode_tokens_per_s_median": median(decode_rate),
        "text": text,
        "route": route,
    }


def machine(node_threads: int | None) -> dict[str, Any]:
    import torch
    import transformers

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count() or 0
    env_threads = os.environ.get("SECURE_INFER_THREADS", "")
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "client_torch_threads": torch.get_num_threads(),
        "node_threads": node_threads or (int(env_threads) if env_threads else "torch default"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median)")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per generation")
    parser.add_argument("--workdir", type=Path, default=None, help="certs and node logs")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="SECURE_INFER_THREADS for the nodes (default: torch default)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or not 1 <= args.tokens <= 1024:
        parser.error("--repeats must be >= 1 and --tokens in [1, 1024]")

    import logging

    from decentralized.models._files import smollm2_dir
    from secure_infer import logs
    from secure_infer.client import Client

    logs.configure("bench", "text", level=logging.WARNING)
    smollm2_dir()  # one-time GGUF conversion, outside every timing
    tmp: tempfile.TemporaryDirectory[str] | None = None
    workdir = args.workdir
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="secure-infer-bench-")
        workdir = Path(tmp.name)
    report: dict[str, Any] = {"machine": machine(args.threads)}
    mesh = LocalMesh(workdir, NODES, threads=args.threads)
    try:
        say(f"starting 3 node daemons with mTLS on 127.0.0.1 (workdir {workdir})")
        t0 = time.perf_counter()
        mesh.start()
        report["mesh_start_s"] = time.perf_counter() - t0
        for node in mesh.nodes.values():
            spans = ", ".join(f"{m}[{a},{b})" for m, a, b in node.spec.spans)
            say(f"  {node.spec.name} {node.address}: {spans}")
        say("loading local references (sentence-transformers, transformers)")
        local_embedder = LocalEmbedder()
        local_lm = LocalLM()
        report["machine"]["local_lm_dtype"] = local_lm.dtype
        with Client(mesh.seeds, tls=mesh.client_tls(), hop_timeout_s=60.0) as client:
            report["embed"] = bench_embed(client, local_embedder, args.repeats)
            report["generate"] = bench_generate(client, local_lm, args.repeats, args.tokens)
            channel = "mTLS" if mesh.client_tls() is not None else "plaintext"
    finally:
        say("stopping nodes")
        mesh.stop()
        if tmp is not None:
            tmp.cleanup()
    report["nodes"] = len(NODES)
    report["channel"] = channel
    report["route"] = []
    for model, section in ((MINILM, report["embed"]), (SMOL, report["generate"])):
        hops = section.pop("route")
        report["route"] += [{"model": model, **hop} for hop in hops]
        if len({hop["node"] for hop in hops}) != len(NODES):
            say(f"WARNING: {model} route {hops} does not cross all {len(NODES)} nodes")
    if args.json:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        _table(report)
    return 0


def _table(report: dict[str, Any]) -> None:
    e, g = report["embed"], report["generate"]
    rows = [
        (
            "embed latency mesh / local (s)",
            f"{e['mesh_latency_s']:.3f} / {e['local_latency_s']:.3f}",
            f"ratio {e['latency_ratio']:.2f} (target <= {e['target_ratio_max']})",
        ),
        ("embed cosine min", f"{e['cosine_min']:.6f}", ""),
        (
            "generate tokens/s mesh / local",
            f"{g['mesh_tokens_per_s']:.1f} / {g['local_tokens_per_s']:.1f}",
            f"ratio {g['tokens_per_s_ratio']:.2f} (target >= {g['target_ratio_min']})",
        ),
        ("generate matches local", str(g["matches_local"]), f"{g['new_tokens']} tokens"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        sys.stdout.write(f"{name:<{width}}  {value:<20} {note}\n")


if __name__ == "__main__":
    sys.exit(main())
