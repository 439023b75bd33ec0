"""`secure-infer demo`: three real node daemons, two real models, end to end, on loopback.

1. Creates a mesh CA and certificates, starts three node processes with mTLS on 127.0.0.1.
2. Places both models' spans across them; the second half of each model is on two nodes.
3. Embeds sentences with all-MiniLM-L6-v2 through the mesh and compares with local
   sentence-transformers; generates greedily with SmolLM2 and compares with local transformers.
4. With `--mpc`: every node also runs MiniLM and SmolLM2 as an MPC party or dealer; the client
   embeds two sentences with `privacy="mpc"` (its input secret-shared between two nodes, a
   third dealing the correlated randomness) and compares with local sentence-transformers,
   repeats it on the same nodes (party 0's node now has the dealer plan: no online dealer
   round trips), then generates two tokens with SmolLM2 under MPC (the prompt and the tokens
   stay in shares on the parties) and compares with local transformers' greedy tokens.
5. Kills the node serving a replicated span in the middle of a generation and checks that the
   client fails over (rebuilding that span's KV cache) and still produces the local tokens.
6. Fides (`verify="fides"`): node-a hosts an MNIST classifier, node-b its Fides verifier in an
   enclave (SIMULATED here, and labelled so); the client classifies held-out images, checks
   the quote and runs the attack detector (`secure_infer.fides_demo`); node-c hosts the same
   verifier under protocol "verdicts" (its enclave judges and never reveals the verifier's
   distribution), provisioned by the client SEALED to node-c's attested enclave (node-c never
   reads the verifier's weights), and the client checks that it gives the same verdicts.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from decentralized.mpc_client import MPCOptions
from secure_infer.fides_demo import LATENCY_PAIRS, build_artefacts, node_args, run_fides_demo
from secure_infer.localmesh import LocalMesh, NodeSpec
from secure_infer.services import service_lines

MINILM = "all-MiniLM-L6-v2"
SMOL = "SmolLM2-135M-Instruct"
SENTENCES = [
    "A man is eating food.",
    "A man is riding a white horse on an enclosed ground.",
    "The new movie is awesome and the actors were brilliant.",
    "Secure inference keeps a user's input private from the servers.",
    "Paris is the capital and most populous city of France.",
    "The stock market fell sharply after the announcement.",
    "Photosynthesis converts light energy into chemical energy.",
    "Two dogs are playing in the snow.",
]
MPC_MIN_COSINE = 0.999
VIT_FAMILY = ("vit", "mpcvit_plus")  # the softmax ViT and the searched MPCViT+
VIT_IMAGES = 16  # digits classified under MPC by each (one session each)
VIT_MIN_AGREEMENT = 15 / 16  # MPC vs plaintext argmax; a near-tie may flip one
PROMPT = "What is the capital of France?"
MPC_PROMPT = "The capital of France is"  # raw text (no chat template): a short MPC prefill
MPC_NEW_TOKENS = 2
FAILOVER_PROMPT = "Write one sentence about the sea."
NODES = [
    NodeSpec(name="node-a", spans=((MINILM, 0, 3), (SMOL, 0, 15))),
    NodeSpec(name="node-b", spans=((MINILM, 0, 3), (MINILM, 3, 6), (SMOL, 15, 30))),
    NodeSpec(name="node-c", spans=((MINILM, 3, 6), (SMOL, 15, 30))),
]


class _Progress:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        stream = sys.stderr if self.quiet else sys.stdout
        stream.write(f"[{time.perf_counter() - self.t0:6.1f}s] {msg}\n")
        stream.flush()


def _local_embed(texts: list[str]) -> tuple[np.ndarray, float]:
    from sentence_transformers import SentenceTransformer

    from decentralized.models._files import minilm_dir

    model = SentenceTransformer(str(minilm_dir()), device="cpu")
    model.encode(texts[:2])  # warm-up, as the mesh run is warmed up
    t0 = time.perf_counter()
    emb = model.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
    return np.asarray(emb, dtype=np.float32), time.perf_counter() - t0


class _LocalLM:
    """SmolLM2 run whole by transformers on this machine: the reference for the mesh."""

    def __init__(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from decentralized.models._files import smollm2_dir

        path = smollm2_dir()
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(str(path)).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))

    def generate(
        self, prompt: str, max_new_tokens: int, *, chat: bool = True
    ) -> tuple[list[int], float]:
        if chat:
            messages = [{"role": "user", "content": prompt}]
            ids = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )["input_ids"]
        else:
            ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"]
        t0 = time.perf_counter()
        with self.torch.inference_mode():
            out = self.model.generate(
                ids,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                top_p=None,
                top_k=None,
                temperature=None,
            )
        dt = time.perf_counter() - t0
        return out[0, ids.shape[1] :].tolist(), dt


def _nodes(
    mpc: bool, fides_args: dict[str, tuple[str, ...]], classifiers: tuple[str, ...] = ()
) -> list[NodeSpec]:
    extra = (MINILM, SMOL) if mpc else ()
    roles = {
        "node-a": fides_args["service"],
        "node-b": fides_args["verifier"],
        "node-c": fides_args["judge"],
    }
    return [
        NodeSpec(
            name=n.name,
            spans=n.spans,
            mpc_models=extra,
            extra_args=roles.get(n.name, ()) + classifiers,
        )
        for n in NODES
    ]


def _vit_family(directory: Path) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The MPCViT family at demo scale (sklearn digits, 8x8 images, T = 5, 2 blocks): trained
    once (about a minute on 2 cores) and cached like the benchmark's; saved for the nodes.
    Returns the nodes' `--mpc-classifier` arguments and, per model, (model, metadata)."""
    from mpc.vit import checkpoint
    from mpc.vit.costs import measure_costs
    from mpc.vit.data import load_split
    from mpc.vit.model import ViTConfig
    from mpc.vit.train import TrainSettings
    from mpc.vit.zoo import Recipe, build_family

    config = ViTConfig(image_size=8, patch_size=4, dim=32, depth=2, heads=4, mlp_ratio=2)
    recipe = Recipe(
        teacher=TrainSettings(epochs=20, batch_size=32, lr=3e-3, shift=0, warmup_epochs=1),
        search=TrainSettings(epochs=4, batch_size=32, lr=1e-3, shift=0, warmup_epochs=0),
        finetune=TrainSettings(epochs=8, batch_size=32, lr=1e-3, shift=0, warmup_epochs=1),
    )
    split = load_split("digits")
    family = build_family(split, config, measure_costs(config, units=(4, 16)), recipe)
    args: list[str] = []
    for name in VIT_FAMILY:
        model, metadata = family[name]
        (directory / name).mkdir(parents=True, exist_ok=True)
        checkpoint.save(model, directory / name / "model", metadata)
        args += ["--mpc-classifier", f"{name}={directory / name}"]
    return tuple(args), {"split": split, **{n: family[n] for n in VIT_FAMILY}}


def run_demo(*, json_output: bool = False, workdir: Path | None = None, mpc: bool = False) -> int:
    from decentralized.models._files import smollm2_dir
    from secure_infer import logs
    from secure_infer.client import Client

    logs.configure("demo", "text", level=logging.WARNING)
    say = _Progress(quiet=json_output)
    say("preparing model files (SmolLM2 GGUF -> float32 safetensors, one time)")
    smollm2_dir()
    say("preparing the Fides MNIST service model and a test-scale verifier (seconds, cached)")
    artefacts = build_artefacts()
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="secure-infer-demo-")
        workdir = Path(tmp.name)
    classifiers: tuple[str, ...] = ()
    vit: dict[str, Any] = {}
    if mpc:
        say("preparing the MPCViT family on sklearn digits (about a minute, cached)")
        classifiers, vit = _vit_family(workdir / "mpcvit")
    mesh = LocalMesh(workdir, _nodes(mpc, node_args(artefacts), classifiers))
    say(f"starting 3 node daemons with mTLS on 127.0.0.1 (certs, logs in {workdir})")
    report: dict[str, Any] = {"nodes": len(NODES)}
    try:
        mesh.start()
        for node in mesh.nodes.values():
            spans = ", ".join(f"{m}[{a},{b})" for m, a, b in node.spec.spans)
            if node.spec.mpc_models:
                spans += "; MPC: " + ", ".join(node.spec.mpc_models)
            say(f"  {node.spec.name} {node.address} id {node.node_id[:8]}: {spans}")
        with Client(mesh.seeds, tls=mesh.client_tls(), hop_timeout_s=20.0) as client:
            report["services"] = client.services()
            say("what the mesh offers (`secure-infer models`, `Client.services()`):")
            for line in service_lines(report["services"], nodes=False):
                say("  " + line)
            report["embed"] = _embed(client, say)
            if mpc:
                report["mpc"] = _embed_mpc(client, say)
            local = _LocalLM()
            report["generate"] = _generate(client, local, say)
            if mpc:
                report["mpc_generate"] = _generate_mpc(client, local, say)
                report["mpc_classify"] = _classify_mpc(client, vit, say)
            report["consensus"] = _consensus(client, say)
            report["fides"] = _fides(client, mesh, artefacts, say)
            report["failover"] = _failover(client, local, mesh, say)  # kills a node: last
    finally:
        say("stopping nodes (SIGTERM, graceful drain)")
        mesh.stop()
        if tmp is not None:
            tmp.cleanup()
    ok = (
        report["embed"]["cosine_min"] >= 0.9999
        and report["generate"]["matches_local"]
        and report["failover"]["completed"]
        and report["fides"]["verdict_ok"]
        and report["consensus"]["ok"]
        and (
            not mpc
            or (
                report["mpc"]["cosine_min"] >= MPC_MIN_COSINE
                and report["mpc"]["repeat_dealer_preprocessed"]
                and report["mpc_generate"]["matches_local"]
                and all(
                    r["agreement"] >= VIT_MIN_AGREEMENT
                    for r in report["mpc_classify"]["models"].values()
                )
            )
        )
    )
    if json_output:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        _table(report)
        sys.stdout.write(
            ("PASS" if ok else "FAIL")
            + ": mesh results "
            + ("match" if ok else "do not match")
            + " local plaintext\n"
        )
    return 0 if ok else 1


def _embed(client: Any, say: _Progress) -> dict[str, Any]:
    say(f"embedding {len(SENTENCES)} sentences with {MINILM} through the mesh")
    client.embed(MINILM, SENTENCES[:2])  # warm-up: loads the client's embedding layer
    res = client.embed(MINILM, SENTENCES)
    ref, local_s = _local_embed(SENTENCES)
    cos = (res.embeddings * ref).sum(axis=1) / (
        np.linalg.norm(res.embeddings, axis=1) * np.linalg.norm(ref, axis=1)
    )
    say("  route: " + " -> ".join(f"{h.name}[{h.start},{h.end})" for h in res.route))
    return {
        "cosine_min": float(cos.min()),
        "latency_s": res.timings["total_s"],
        "local_latency_s": local_s,
        "route": [h.name for h in res.route],
    }


def _consensus(client: Any, say: _Progress) -> dict[str, Any]:
    from decentralized.consensus import ConsensusOptions

    say(f"embedding {len(SENTENCES)} sentences with {MINILM} under verify='consensus' (k = 2)")
    res = client.embed(MINILM, SENTENCES, verify="consensus", consensus=ConsensusOptions(k=2))
    ref, _ = _local_embed(SENTENCES)
    cos = (res.embeddings * ref).sum(axis=1) / (
        np.linalg.norm(res.embeddings, axis=1) * np.linalg.norm(ref, axis=1)
    )
    report = res.consensus
    spans = []
    for s in report.spans:
        say(
            f"  layers [{s.start},{s.end}): {' + '.join(s.replicas)} agree within "
            f"{s.max_agreeing_distance:.1e} (calibrated tolerance {s.tolerance:.1e})"
        )
        spans.append(
            {
                "layers": [s.start, s.end],
                "replicas": list(s.replicas),
                "max_agreeing_distance": s.max_agreeing_distance,
                "tolerance": s.tolerance,
            }
        )
    say(f"  manifest: {report.manifest}; every reply carried a signed receipt")
    ok = (
        float(cos.min()) >= 0.9999
        and not report.convicted
        and all(s["max_agreeing_distance"] <= s["tolerance"] for s in spans)
    )
    return {
        "ok": ok,
        "cosine_min": float(cos.min()),
        "latency_s": res.timings["total_s"],
        "spans": spans,
        "convicted": list(report.convicted),
        "manifest": report.manifest,
    }


def _dealer_note(party: Any) -> str:
    """Party 0's dealer traffic: online round trips, or a plan its node had preprocessed."""
    if party.role != "party 0":
        return ""
    if party.dealer_preprocessed:
        return f" (dealer values preprocessed: {party.dealer_round_trips} chunked round trips)"
    return f" ({party.dealer_online_requests} dealer requests online; plan kept for next time)"


def _embed_mpc(client: Any, say: _Progress) -> dict[str, Any]:
    texts = SENTENCES[:2]
    say(f"embedding {len(texts)} sentences with {MINILM} under MPC (input secret-shared)")
    res = client.embed(MINILM, texts, privacy="mpc")
    ref, _ = _local_embed(texts)
    report = res.mpc
    for party in report.parties:
        say(
            f"  {party.role:<7} {party.name}: sent {party.bytes_sent / 1e6:.0f} MB, "
            f"{party.rounds} rounds, {party.seconds:.1f} s{_dealer_note(party)}"
        )
    for line in str(res.privacy).splitlines():
        say(f"  {line}")
    # The same shapes again on the same nodes: party 0's node has the dealer plan now.
    names = tuple(p.name for p in report.parties)
    say("the same request again on the same nodes (party 0's node kept the dealer plan)")
    again = client.embed(MINILM, texts, privacy="mpc", mpc=MPCOptions(parties=names))
    party0 = again.mpc.parties[0]
    say(f"  {party0.role:<7} {party0.name}: {party0.rounds} rounds{_dealer_note(party0)}")
    cos = np.concatenate([(r.embeddings * ref).sum(axis=1) for r in (res, again)])
    return {
        "cosine_min": float(cos.min()),
        "latency_s": res.timings["total_s"],
        "threat_model": report.threat_model,
        "parties": list(names),
        "bytes_total": report.bytes_total,
        "rounds": report.rounds,
        "trusted_dealer": report.trusted_dealer,
        "repeat_latency_s": again.timings["total_s"],
        "repeat_dealer_preprocessed": party0.dealer_preprocessed,
        "repeat_party0_rounds": party0.rounds,
    }


def _classify_mpc(client: Any, vit: dict[str, Any], say: _Progress) -> dict[str, Any]:
    import torch

    split = vit["split"]
    images, labels = split.test_x[:VIT_IMAGES], split.test_y[:VIT_IMAGES]
    say(f"classifying {VIT_IMAGES} digits under MPC: the softmax ViT, then the searched MPCViT+")
    models: dict[str, dict[str, Any]] = {}
    for name in VIT_FAMILY:
        model, metadata = vit[name]
        res = client.classify(name, images.numpy(), privacy="mpc")
        with torch.no_grad():
            plain = model(images).argmax(-1).numpy()
        party0 = res.mpc.parties[0]
        models[name] = {
            "architecture": metadata["architecture_counts"],
            "plaintext_test_accuracy": metadata["test_accuracy"],
            "agreement": float((res.predictions == plain).mean()),
            "mpc_accuracy": float((res.predictions == labels.numpy()).mean()),
            "latency_s": res.timings["total_s"],
            "bytes_total": res.mpc.bytes_total,
            "party0_rounds": party0.rounds,
            "parties": [p.name for p in res.mpc.parties],
        }
        counts = metadata["architecture_counts"]
        say(
            f"  {name:<11} heads softmax/relu_softmax/scaling {counts['softmax']}/"
            f"{counts['relu_softmax']}/{counts['scaling']}, MLPs GeLU/ReLU/linear "
            f"{counts['mlp_gelu']}/{counts.get('mlp_relu', 0)}/{counts['mlp_linear']}: "
            f"{res.timings['total_s']:.1f} s, {res.mpc.bytes_total / 1e6:.0f} MB, "
            f"{party0.rounds} rounds at party 0, agrees with plaintext on "
            f"{models[name]['agreement']:.0%}"
        )
    base, plus = models[VIT_FAMILY[0]], models[VIT_FAMILY[1]]
    return {
        "images": VIT_IMAGES,
        "models": models,
        "latency_ratio": base["latency_s"] / plus["latency_s"],
        "bytes_ratio": base["bytes_total"] / plus["bytes_total"],
    }


def _generate(client: Any, local: _LocalLM, say: _Progress) -> dict[str, Any]:
    max_new = 24
    say(f"generating with {SMOL} through the mesh: {PROMPT!r}")
    client.generate(SMOL, "Hi", max_new_tokens=2)  # warm-up
    res = client.generate(SMOL, PROMPT, max_new_tokens=max_new)
    ref_ids, local_s = local.generate(PROMPT, max_new)
    say("  route: " + " -> ".join(f"{h.name}[{h.start},{h.end})" for h in res.route))
    say(f"  mesh:  {res.text!r}")
    return {
        "text": res.text,
        "matches_local": list(res.token_ids) == ref_ids,
        "tokens_per_s": len(res.token_ids) / res.timings["total_s"],
        "local_tokens_per_s": len(ref_ids) / local_s,
        "route": [h.name for h in res.route],
    }


def _generate_mpc(client: Any, local: _LocalLM, say: _Progress) -> dict[str, Any]:
    say(f"generating {MPC_NEW_TOKENS} tokens with {SMOL} under MPC: {MPC_PROMPT!r}")
    res = client.generate(
        SMOL, MPC_PROMPT, max_new_tokens=MPC_NEW_TOKENS, chat=False, privacy="mpc"
    )
    ref_ids, _ = local.generate(MPC_PROMPT, MPC_NEW_TOKENS, chat=False)
    report = res.mpc
    for party in report.parties:
        say(
            f"  {party.role:<7} {party.name}: sent {party.bytes_sent / 1e6:.0f} MB, "
            f"{party.rounds} rounds, {party.seconds:.1f} s{_dealer_note(party)}"
        )
    say(f"  MPC:   {MPC_PROMPT}{res.text!r}")
    return {
        "text": res.text,
        "matches_local": list(res.token_ids) == ref_ids[: len(res.token_ids)],
        "latency_s": res.timings["total_s"],
        "seconds_per_token": res.timings["total_s"] / MPC_NEW_TOKENS,
        "threat_model": report.threat_model,
        "parties": [p.name for p in report.parties],
        "bytes_total": report.bytes_total,
        "rounds": report.rounds,
    }


def _failover(client: Any, local: _LocalLM, mesh: LocalMesh, say: _Progress) -> dict[str, Any]:
    max_new = 32
    say(f"fail-over: generating {FAILOVER_PROMPT!r}, killing a node mid-request")
    killed = ""
    result = None
    replicated = {"node-b", "node-c"}
    for event in client.generate_stream(SMOL, FAILOVER_PROMPT, max_new_tokens=max_new):
        if event.index == 4 and not killed:
            on_route = [h for h in event.route if h in replicated]
            killed = on_route[0] if on_route else "node-b"
            say(f"  after 5 tokens: SIGKILL {killed}")
            mesh.kill(killed)
        if event.result is not None:
            result = event.result
    ref_ids, _ = local.generate(FAILOVER_PROMPT, max_new)
    completed = result is not None and list(result.token_ids) == ref_ids
    if result is not None:
        for f in result.failovers:
            say(
                f"  failed over from {f.name}[{f.start},{f.end}) rebuilding "
                f"{f.rebuilt_tokens} cached tokens"
            )
        say(f"  mesh:  {result.text!r}")
    return {
        "killed_node": killed,
        "completed": completed,
        "failovers": len(result.failovers) if result else 0,
        "rebuilt_tokens": sum(f.rebuilt_tokens for f in result.failovers) if result else 0,
    }


def _fides(client: Any, mesh: LocalMesh, artefacts: Path, say: _Progress) -> dict[str, Any]:
    say("Fides: classifying MNIST on node-a, verified by node-b's enclaved verifier")
    report = run_fides_demo(client, mesh, artefacts, judge="node-c")
    swap = report["client_side_swap_attack"]
    say(f"  TEE: {report['tee']['label']}, verifier node {report['tee']['verifier_node']}")
    say(
        f"  {report['n_images']} images: service accuracy {report['service_accuracy']:.3f}, "
        f"clean answers flagged {report['clean_flagged_fraction']:.3f}, "
        f"{report['checked_exactly']} checked exactly (the enclave recomputed the service model "
        "where the verifier was least sure)"
    )
    say(f"  simulated evidence without the opt-in: {report['without_opt_in']}")
    say(
        f"  top-2 swap (applied on the client): detected {swap['detection_rate']:.3f}, "
        f"re-classified to the honest label {swap['reclassified_to_honest_label']}"
    )
    judged = report["verdicts_protocol"]
    sealed = judged["provisioned_sealed"]
    say(
        f"  {judged['verifier_node']}'s verifier provisioned sealed by the client in "
        f"{sealed['seconds']:.2f} s ({sealed['bytes']} bytes; published measurement "
        f"{sealed['measurement_is_the_published_one']}), enrolled clients "
        f"{', '.join(sealed['enrolled_clients'])} (checked in the enclave: "
        f"{sealed['enrolment_checked_in_enclave']})"
        + (": SIMULATED enclave, its host could read them" if sealed["simulated"] else "")
    )
    say(
        f"  protocol 'verdicts' ({judged['verifier_node']}'s enclave judges): verdicts as the "
        f"client's on {judged['verdicts_agreement']:.0%} of the images, verifier's "
        "distribution revealed "
        f"{judged['distribution_revealed']}, {judged['latency_ms']:.0f} ms"
    )
    report["verdict_ok"] = (
        judged["verdicts_agreement"] >= 0.9  # random audits may differ on a row or two
        and not judged["distribution_revealed"]
        and sealed["measurement_is_the_published_one"]
        and sealed["enrolment_checked_in_enclave"]
        and report["clean_flagged_fraction"] <= 0.1
        and swap["detection_rate"] >= 0.75  # a test-scale verifier; bench: >= 0.98 at full
        and report["without_opt_in"].startswith(("refused", "accepted"))
    )
    return report


def _table(report: dict[str, Any]) -> None:
    e, g, f = report["embed"], report["generate"], report["failover"]
    rows = [
        ("nodes", str(report["nodes"]), ""),
        ("embed cosine min (mesh vs local)", f"{e['cosine_min']:.6f}", ">= 0.9999"),
        (
            "embed latency mesh / local",
            f"{e['latency_s']:.3f} s / {e['local_latency_s']:.3f} s",
            " -> ".join(e["route"]),
        ),
        ("generate matches local greedy", str(g["matches_local"]), repr(g["text"])[:48]),
        (
            "generate tokens/s mesh / local",
            f"{g['tokens_per_s']:.1f} / {g['local_tokens_per_s']:.1f}",
            " -> ".join(g["route"]),
        ),
        *_mpc_rows(report.get("mpc"), report.get("mpc_generate")),
        *_vit_rows(report.get("mpc_classify")),
        ("fail-over: killed node", f["killed_node"], f"{f['rebuilt_tokens']} tokens rebuilt"),
        ("fail-over: completed, same tokens", str(f["completed"]), ""),
        *_fides_rows(report["fides"]),
        *_consensus_rows(report["consensus"]),
    ]
    width = max(len(r[0]) for r in rows)
    sys.stdout.write("\n")
    for name, value, note in rows:
        sys.stdout.write(f"  {name:<{width}}  {value:<24} {note}\n")
    sys.stdout.write("\n")


def _mpc_rows(m: dict[str, Any] | None, g: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    if m is None or g is None:
        return []
    return [
        ("MPC embed cosine min (vs local)", f"{m['cosine_min']:.6f}", f">= {MPC_MIN_COSINE}"),
        (
            "MPC embed latency / bytes / rounds",
            f"{m['latency_s']:.1f} s / {m['bytes_total'] / 1e6:.0f} MB / {m['rounds']}",
            " + ".join(m["parties"]) + " (dealer last, TRUSTED)",
        ),
        (
            "MPC embed again (dealer plan kept)",
            f"{m['repeat_latency_s']:.1f} s / {m['repeat_party0_rounds']} rounds at party 0",
            f"dealer preprocessed: {m['repeat_dealer_preprocessed']}",
        ),
        ("MPC generate matches local greedy", str(g["matches_local"]), repr(g["text"])[:48]),
        (
            "MPC generate s/token / bytes",
            f"{g['seconds_per_token']:.0f} s / {g['bytes_total'] / 1e6:.0f} MB",
            " + ".join(g["parties"]) + " (dealer last, TRUSTED)",
        ),
    ]


def _vit_rows(r: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    if r is None:
        return []
    base, plus = r["models"][VIT_FAMILY[0]], r["models"][VIT_FAMILY[1]]
    return [
        (
            "MPC classify agrees with plaintext",
            f"{base['agreement']:.0%} / {plus['agreement']:.0%}",
            f"softmax ViT / MPCViT+, {r['images']} digits (>= {VIT_MIN_AGREEMENT:.0%})",
        ),
        (
            "MPC classify latency (ViT / MPCViT+)",
            f"{base['latency_s']:.1f} s / {plus['latency_s']:.1f} s",
            f"{r['latency_ratio']:.2f}x faster, {r['bytes_ratio']:.1f}x fewer bytes (demo scale;"
            " bench/mpcvit.py: MNIST)",
        ),
    ]


def _consensus_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    worst = max(s["max_agreeing_distance"] / s["tolerance"] for s in r["spans"])
    return [
        ("consensus embed cosine min (k=2)", f"{r['cosine_min']:.6f}", ">= 0.9999"),
        (
            "consensus: replicas agree",
            f"{worst:.2f} of tolerance",
            "; ".join(
                f"[{s['layers'][0]},{s['layers'][1]}) " + "+".join(s["replicas"])
                for s in r["spans"]
            ),
        ),
    ]


def _fides_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    swap = r["client_side_swap_attack"]
    tee = "SIMULATED TEE (INSECURE)" if r["tee"]["simulated"] else r["tee"]["platform"]
    return [
        ("Fides: clean answers flagged", f"{r['clean_flagged_fraction']:.3f}", tee),
        (
            "Fides: answers checked exactly",
            f"{r['checked_exactly']} of {r['n_images']}",
            "escalated: the enclave recomputed the service model where the verifier was unsure",
        ),
        (
            "Fides: top-2 swap detected",
            f"{swap['detection_rate']:.3f}",
            "applied on the client; test-scale verifier (bench: full scale)",
        ),
        (
            "Fides verdicts protocol: same verdicts",
            f"{r['verdicts_protocol']['verdicts_agreement']:.0%} of images",
            f"judged in {r['verdicts_protocol']['verifier_node']}'s enclave, provisioned "
            f"sealed; distribution revealed: {r['verdicts_protocol']['distribution_revealed']}",
        ),
        (
            "Fides: latency plain / verified",
            f"{r['latency_ms_median']['plain']:.1f} / {r['latency_ms_median']['fides']:.1f} ms",
            f"{r['n_images']} images, medians of {LATENCY_PAIRS} (bench: full scale)",
        ),
    ]
