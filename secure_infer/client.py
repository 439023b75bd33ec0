"""The client SDK: run models hosted on the mesh, keeping token ids and outputs local.

Example::

    from secure_infer import Client, TLSMaterial

    tls = TLSMaterial(ca_cert=Path("certs/ca.crt"), cert=Path("certs/me.crt"),
                      key=Path("certs/me.key"))
    with Client(["127.0.0.1:7001"], tls=tls) as client:
        emb = client.embed("all-MiniLM-L6-v2", ["hello world"])
        print(emb.embeddings.shape, emb.privacy)
        for event in client.generate_stream("SmolLM2-135M-Instruct", "Hi!"):
            print(event.text, end="")

The split mode runs the embedding layer and the head on the client (U-shaped split) and the
transformer layers on mesh nodes; each node sees the plaintext activations of its layers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from decentralized.client import Chain, MeshClient
from decentralized.consensus import ConsensusChain, ConsensusOptions
from decentralized.errors import InvalidRequest, SessionAborted
from decentralized.models import get_spec, load_client_parts
from decentralized.mpc_client import (
    MPCOptions,
    MPCOutcome,
    encode_fixed_point,
    run_secure_decoder,
    run_secure_encoder,
)
from decentralized.transport import Credentials
from mpc.models import check_output
from secure_infer.certs import TLSMaterial
from secure_infer.classify_client import Catalog, classify_plain
from secure_infer.fides_client import FidesChecker, FidesOptions, classify_fides
from secure_infer.he_client import HEClassifyResult as ClassifyResult
from secure_infer.he_client import HESession, classify_he, pick_he_node
from secure_infer.mpc_classify import classify_mpc
from secure_infer.results import (
    ClassificationResult,
    ConsensusReport,
    ConsensusSpan,
    EmbedResult,
    Failover,
    GenerateResult,
    HopRecord,
    MPCClassificationResult,
    MPCReport,
    Privacy,
    TokenEvent,
)
from secure_infer.services import mesh_services
from verification.consensus import InvalidManifest, Manifest, Reputation, Verdict

_MAX_TEXTS = 1024  # texts per embed call
_MPC_MAX_TEXTS = 16  # per privacy="mpc" call (a node's MPC batch limit)
_MAX_EMBED_TOKENS = 512  # BERT's position table (longer texts are truncated to it)
_MAX_NEW_TOKENS = 1024  # tokens per generate call
_MPC_MAX_NEW_TOKENS = 64  # per privacy="mpc" call (a node's limit for one session)
_MICROBATCH_BYTES = 16 * 1024 * 1024  # activation bytes per forward call; larger batches split


def credentials(tls: TLSMaterial | None, insecure_dev: bool) -> Credentials:
    """mTLS credentials from PEM files, or plaintext for loopback development."""
    if tls is None:
        if not insecure_dev:
            raise ValueError("pass tls=TLSMaterial(...) or insecure_dev=True (loopback only)")
        return Credentials(insecure_dev=True)
    ca, key, cert = tls.read()
    return Credentials(root_ca=ca, private_key=key, certificate=cert)


class Client:
    """A connection to the mesh through one or more seed nodes."""

    def __init__(
        self,
        seeds: Sequence[str],
        *,
        tls: TLSMaterial | None = None,
        insecure_dev: bool = False,
        hop_timeout_s: float = 30.0,
        max_failovers: int = 6,
        verdict_key: Ed25519PrivateKey | None = None,
        reputation: Reputation | None = None,
    ) -> None:
        """A client of the mesh reached through `seeds`.

        Args:
            verdict_key: signs the client's consensus verdicts (default: a fresh key per
                Client; pass a stable one so others can pin it).
            reputation: node standings for verify="consensus", shared by every request of
                this client (default: 10-minute epochs, exclusion for the epoch of a
                conviction).
        """
        if not _is_number(hop_timeout_s) or not 0 < hop_timeout_s <= 3600:
            raise InvalidRequest(
                f"hop_timeout_s must be in (0, 3600] seconds, got {hop_timeout_s!r}"
            )
        if not _is_int(max_failovers) or max_failovers < 0:
            raise InvalidRequest(f"max_failovers must be an int >= 0, got {max_failovers!r}")
        self._creds = credentials(tls, insecure_dev)
        self._verdict_key = verdict_key or Ed25519PrivateKey.generate()
        self.reputation = reputation or Reputation()
        self._manifests: dict[tuple[str, Path | None], Manifest] = {}
        self._mesh = MeshClient(
            list(seeds), self._creds, hop_timeout_s=hop_timeout_s, max_failovers=max_failovers
        )
        self._parts: dict[str, Any] = {}
        self._he_sessions: dict[tuple[str, str], HESession] = {}  # (address, name) -> session
        self._catalog = Catalog(self._mesh)  # nodes' plaintext classifiers and Fides verifiers
        self._fides: dict[Path, FidesChecker] = {}  # per published Fides directory

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for session in self._he_sessions.values():
            session.close()
        self._he_sessions.clear()
        self._mesh.close()

    # -- discovery -------------------------------------------------------------------------
    def nodes(self) -> list[dict[str, Any]]:
        """Live nodes: id, name, address, device, load, throughput and spans."""
        return [
            {
                "node_id": r.node_id,
                "name": r.name,
                "address": r.address,
                "device": r.device,
                "load": r.load,
                "layers_per_s": r.layers_per_s,
                "spans": [(s.model, s.start, s.end) for s in r.spans],
                "insecure_dev": r.insecure_dev,
            }
            for r in self._mesh.refresh(force=True)
        ]

    def services(self) -> dict[str, Any]:
        """What the live mesh offers, grouped by what a client can ask for: split models
        (layer coverage and replicas per layer), MPC models, classifiers, Fides verifiers (with
        protocol, platform and whether SIMULATED), sealed verifier slots and HE heads, with the
        nodes serving each (`secure_infer.services.mesh_services`). What the nodes SAY they
        serve: weights and enclaves are checked by the verify modes, not here."""
        return mesh_services(
            self._mesh.refresh(force=True), lambda r: self._mesh.channel(r.address, r.name)
        )

    def parts(self, model: str) -> Any:
        """The client-side parts of a model (tokenizer, embedding, head), loaded once."""
        if model not in self._parts:
            get_spec(model)
            self._parts[model] = load_client_parts(model)
        return self._parts[model]

    # -- embeddings ------------------------------------------------------------------------
    def embed(
        self,
        model: str,
        texts: Sequence[str],
        *,
        max_tokens: int = 256,
        privacy: str = "split",
        mpc: MPCOptions | None = None,
        verify: str | None = None,
        consensus: ConsensusOptions | None = None,
    ) -> EmbedResult:
        """Sentence embeddings (B, hidden), unit-norm, computed through the mesh.

        Args:
            privacy: "split" (layer spans on nodes that see plaintext activations) or "mpc"
                (the input stays secret-shared between two nodes plus a dealer node; see
                `docs/threat-model.md`).
            mpc: under MPC, the threat model ("input_private": the parties know the public
                weights; "weights_private": PUMA's setting, party 0 owns and shares them),
                retries, pinned parties and timeouts; defaults to `MPCOptions()`.
            verify: "consensus" (split mode): every span runs on k randomly chosen nodes whose
                weight commitments match the model's manifest, and a majority within the
                calibrated tolerance decides (docs/consensus.md); deviating nodes are convicted
                with a signed verdict and excluded for the epoch. Options in `consensus`.
        """
        spec = get_spec(model)
        if spec.task != "embed":
            raise InvalidRequest(f"{model} is a {spec.task} model; use generate()")
        if isinstance(texts, str) or not texts or len(texts) > _MAX_TEXTS:
            raise InvalidRequest(f"texts must be a list of 1..{_MAX_TEXTS} strings")
        if any(not isinstance(t, str) for t in texts):
            raise InvalidRequest("texts must be strings")
        if not _is_int(max_tokens) or not 1 <= max_tokens <= _MAX_EMBED_TOKENS:
            raise InvalidRequest(
                f"max_tokens must be an int in [1, {_MAX_EMBED_TOKENS}], got {max_tokens!r}"
            )
        if privacy not in ("split", "mpc"):
            raise InvalidRequest(f"privacy must be 'split' or 'mpc', got {privacy!r}")
        _check_verify(verify, consensus, privacy)
        if privacy == "mpc":
            return self._embed_mpc(model, list(texts), max_tokens, mpc or MPCOptions())
        parts = self.parts(model)
        t0 = time.perf_counter()
        ids, mask = parts.tokenize(list(texts), max_tokens=max_tokens)
        hidden = parts.embed(ids)
        t_client = time.perf_counter() - t0
        chain = self._chain(
            model, stateful=False, verify=verify, consensus=consensus, tokens=int(ids.shape[1])
        )
        t1 = time.perf_counter()
        per_row = hidden[0].numel() * hidden.element_size()
        rows = max(1, _MICROBATCH_BYTES // per_row)
        try:
            out = torch.cat(
                [
                    chain.step(hidden[i : i + rows], attention_mask=mask[i : i + rows])
                    for i in range(0, hidden.shape[0], rows)
                ]
            )
        finally:
            chain.close()
        t_mesh = time.perf_counter() - t1
        t2 = time.perf_counter()
        emb = parts.head(out, mask)
        t_client += time.perf_counter() - t2
        route = _route(chain)
        compute = sum(h.compute_s for h in route)
        return EmbedResult(
            model=model,
            embeddings=emb.numpy().astype(np.float32),
            route=route,
            timings={
                "total_s": time.perf_counter() - t0,
                "client_s": t_client,
                "mesh_s": t_mesh,
                "compute_s": compute,
                "network_s": t_mesh - compute,
            },
            privacy=self._privacy(
                model,
                route,
                "token ids, attention mask and embeddings",
                output="the last node's output is what the client mean-pools: that node can "
                "compute the embeddings",
            ),
            failovers=_failovers(chain),
            consensus=self._consensus_report(chain),
        )

    def _embed_mpc(
        self, model: str, texts: list[str], max_tokens: int, options: MPCOptions
    ) -> EmbedResult:
        if len(texts) > _MPC_MAX_TEXTS:
            raise InvalidRequest(f"privacy='mpc' takes at most {_MPC_MAX_TEXTS} texts per call")
        parts = self.parts(model)
        t0 = time.perf_counter()
        ids, mask = parts.tokenize(texts, max_tokens=max_tokens)
        hidden = parts.embed(ids)  # (B, T, C): the client's own data, in the clear locally
        outcome = run_secure_encoder(self._mesh, model, hidden, mask, options)
        pooled = check_output(outcome.output, outcome.output_bound)  # GarbageOutput if not
        emb = torch.nn.functional.normalize(pooled, p=2, dim=1)
        parties = outcome.ranks
        report = MPCReport.of(
            outcome,
            options.threat_model,
            f"|output| <= {outcome.output_bound:.3f} (last LayerNorm's bound)",
        )
        total = time.perf_counter() - t0
        return EmbedResult(
            model=model,
            embeddings=emb.numpy().astype(np.float32),
            route=(),
            timings={
                "total_s": total,
                "client_s": total - outcome.seconds,
                "mesh_s": outcome.seconds,
                "compute_s": max(p.seconds for p in parties),
                "network_s": outcome.seconds - max(p.seconds for p in parties),
            },
            privacy=self._mpc_privacy(
                model,
                report,
                "token ids, embedding output and the final embeddings (reconstructed locally "
                "from the two parties' output shares)",
            ),
            mpc=report,
        )

    def _mpc_privacy(self, model: str, report: MPCReport, client_keeps: str) -> Privacy:
        p0, p1, dealer = report.parties
        weights = (
            f"the weights of {model} are public to the parties"
            if report.threat_model == "input_private"
            else f"the weights are secret-shared by {p0.name} (their owner)"
        )
        decoder = get_spec(model).task == "generate"
        shapes = (
            "the prompt length and the number of generation steps"
            if decoder
            else "batch size, sequence lengths (the attention mask)"
        )
        approximations = (
            "approximations (PUMA's SiLU, softmax, RMSNorm) can change a greedy token where "
            "the top two logits are nearly tied"
            if decoder
            else "approximations (PUMA's GeLU, softmax, rsqrt) make the output differ from "
            "plaintext by cosine ~1e-4"
        )
        return Privacy(
            mode="mpc",
            channel=self._channel_name(),
            client_keeps=client_keeps,
            node_views=(
                f"party {p0.name} ({p0.node_id[:8]}) saw a uniformly random share of the input "
                "and of the output",
                f"party {p1.name} ({p1.node_id[:8]}) saw a uniformly random share of the input "
                "and of the output",
                f"dealer {dealer.name} ({dealer.node_id[:8]}) saw only its own correlated "
                "randomness and the sequence of request shapes",
                f"every node saw: {shapes}, the model and threat model; {weights}",
            ),
            caveats=(
                "semi-honest security: a party that deviates from the protocol can corrupt the "
                "output undetected (the client checks only that it is in the model's range)",
                "the dealer is TRUSTED, not verified: a dealer colluding with either party "
                "learns the input",
                "the two parties must not collude: together they reconstruct the input",
                approximations,
            ),
        )

    def _channel_name(self) -> str:
        return (
            "INSECURE plaintext gRPC (--insecure-dev, loopback only)"
            if self._creds.insecure_dev
            else "mTLS (mesh CA)"
        )

    # -- classification ---------------------------------------------------------------------
    def classify(
        self,
        model: str,
        inputs: Sequence[str] | np.ndarray,
        *,
        privacy: str | None = None,
        verify: str | None = None,
        fides: FidesOptions | None = None,
        mpc: MPCOptions | None = None,
    ) -> ClassifyResult | ClassificationResult | MPCClassificationResult:
        """Classify texts or images with a classifier or HE head served on the mesh.

        Args:
            model: an HE head (e.g. "sentiment-minilm", "mnist-mlp"; listed by the HE
                service's ListHeads) or a plaintext classifier (listed by Classify.ListModels).
            inputs: texts for text models; images: (B, 784) pixels in [0, 255] for HE heads,
                (B, 784) or (B, 1, 28, 28) in [0, 1] for plaintext classifiers.
            privacy: "he": the client runs the local layers, encrypts the features with CKKS
                under its own keys and decrypts the logits; the node sees only ciphertexts and
                public keys (docs/he.md); keys and the uploaded context are kept per node.
                "none": plaintext classification (the node sees inputs and outputs) returning
                the output distribution. Default: "none" with `verify`, else "he".
                "mpc": an MPCViT checkpoint that nodes host with `--mpc-classifier`; the image
                patches are secret-shared between two party nodes plus a dealer node, and the
                logits reconstructed locally (`secure_infer.mpc_classify`; `mpc` options).
            verify: "fides": check the answer with an attested Fides verifier (docs/fides.md;
                needs `fides=FidesOptions(bundle=...)`); raises a `tee.AttestationError`
                subclass if the quote is not accepted.
        """
        if verify not in (None, "fides"):
            raise InvalidRequest(f"verify must be None or 'fides', got {verify!r}")
        if fides is not None and verify != "fides":
            raise InvalidRequest("fides=FidesOptions(...) is given but verify is not 'fides'")
        mode = privacy or ("none" if verify else "he")
        if mode == "mpc":
            if verify is not None:
                raise InvalidRequest("privacy='mpc' classification takes no verify mode")
            return classify_mpc(
                self._mesh,
                model,
                inputs,  # type: ignore[arg-type] - images
                mpc or MPCOptions(),
                channel_label=self._channel_name(),
            )
        if mode == "none":
            if verify is None:
                return classify_plain(
                    self._catalog, self._mesh, model, inputs, channel_label=self._channel_name()
                )
            if fides is None:
                raise InvalidRequest("verify='fides' needs fides=FidesOptions(bundle=DIR)")
            key = Path(fides.bundle).resolve()
            if key not in self._fides:
                self._fides[key] = FidesChecker(key)
            return classify_fides(
                self._catalog,
                self._mesh,
                model,
                inputs,
                fides,
                self._fides[key],
                self._channel_name(),
            )
        if mode != "he" or verify is not None:
            raise InvalidRequest(
                "classify supports privacy='he', 'none' or 'mpc' (verify needs 'none'), "
                f"got {mode!r}"
            )
        live = [(r.address, r.name) for r in self._mesh.refresh(force=True)]
        known = [key for key in self._he_sessions if key in live]
        address, name = known[0] if known else pick_he_node(live, self._creds, model)
        session = self._he_sessions.get((address, name))
        if session is None:
            channel = self._mesh.channel(address, name)
            session = self._he_sessions[(address, name)] = HESession(channel)
        return classify_he(
            self._mesh.channel(address, name),
            model,
            inputs,
            session=session,
            channel_label=self._channel_name(),
        )

    # -- generation ------------------------------------------------------------------------
    def generate(
        self,
        model: str,
        prompt: str | list[dict[str, str]],
        *,
        max_new_tokens: int = 64,
        chat: bool = True,
        privacy: str = "split",
        mpc: MPCOptions | None = None,
        verify: str | None = None,
        consensus: ConsensusOptions | None = None,
    ) -> GenerateResult:
        """Greedy generation through the mesh; see `generate_stream` for token streaming."""
        result = None
        for event in self.generate_stream(
            model,
            prompt,
            max_new_tokens=max_new_tokens,
            chat=chat,
            privacy=privacy,
            mpc=mpc,
            verify=verify,
            consensus=consensus,
        ):
            result = event.result
        if result is None:  # pragma: no cover - the stream always ends with a result
            raise RuntimeError("generation ended without a result")
        return result

    def generate_stream(
        self,
        model: str,
        prompt: str | list[dict[str, str]],
        *,
        max_new_tokens: int = 64,
        chat: bool = True,
        privacy: str = "split",
        mpc: MPCOptions | None = None,
        verify: str | None = None,
        consensus: ConsensusOptions | None = None,
    ) -> Iterator[TokenEvent]:
        """Yield one TokenEvent per generated token (greedy); the last carries the result.

        Split mode: the client embeds the prompt, sends it through the chain once (prefill),
        then one token at a time; each node keeps its span's KV cache for the session.

        privacy="mpc": the whole model runs on two party nodes plus a dealer node, on secret
        shares of the client's prompt (see `_generate_mpc`); `mpc` picks the threat model,
        parties and timeouts. The parties run exactly `max_new_tokens` steps (at most
        `_MPC_MAX_NEW_TOKENS`): tokens after a stop token are computed and dropped.

        verify="consensus" (split mode): every span runs on k nodes, each keeping its own KV
        cache; each step's majority output goes on (see `embed`). A convicted or failed
        replica is replaced by a fresh node rebuilt from the span's inputs.
        """
        spec = get_spec(model)
        if spec.task != "generate":
            raise InvalidRequest(f"{model} is an {spec.task} model; use embed()")
        if not _is_int(max_new_tokens) or not 1 <= max_new_tokens <= _MAX_NEW_TOKENS:
            raise InvalidRequest(
                f"max_new_tokens must be an int in [1, {_MAX_NEW_TOKENS}], got {max_new_tokens!r}"
            )
        if not prompt:
            raise InvalidRequest("prompt is empty")
        _check_prompt(prompt)
        if privacy not in ("split", "mpc"):
            raise InvalidRequest(f"privacy must be 'split' or 'mpc', got {privacy!r}")
        _check_verify(verify, consensus, privacy)
        if privacy == "mpc":
            yield from self._generate_mpc(model, prompt, max_new_tokens, chat, mpc or MPCOptions())
            return
        parts = self.parts(model)
        t0 = time.perf_counter()
        ids = parts.encode(prompt, chat=chat)
        # What each node's session will hold at the end: the prompt, then every generated
        # token but the last. Nodes whose limit is smaller are not planned on (a request no
        # node takes is InvalidRequest before anything is sent).
        tokens = int(ids.shape[1]) + max_new_tokens - 1
        chain = self._chain(model, stateful=True, verify=verify, consensus=consensus, tokens=tokens)
        generated: list[int] = []
        text = ""
        finish = "length"
        t_prefill = 0.0
        try:
            x = parts.embed(ids)
            for index in range(max_new_tokens):
                hidden = chain.step(x)
                token = int(parts.head(hidden[:, -1:])[0, -1].argmax())
                if index == 0:
                    t_prefill = time.perf_counter() - t0
                generated.append(token)
                new_text = parts.decode(generated)
                delta, text = new_text[len(text) :], new_text
                done = token in parts.stop_ids or index == max_new_tokens - 1
                if token in parts.stop_ids:
                    finish = "stop"
                if done:
                    total = time.perf_counter() - t0
                    decode_s = total - t_prefill
                    route = _route(chain)
                    result = GenerateResult(
                        model=model,
                        text=text,
                        token_ids=tuple(generated),
                        prompt_tokens=int(ids.shape[1]),
                        route=route,
                        timings={
                            "total_s": total,
                            "prefill_s": t_prefill,
                            "decode_s": decode_s,
                            "tokens_per_s": len(generated) / total if total > 0 else 0.0,
                            "decode_tokens_per_s": (len(generated) - 1) / decode_s
                            if decode_s > 0 and len(generated) > 1
                            else 0.0,
                        },
                        privacy=self._privacy(
                            model,
                            route,
                            "token ids, prompt text and logits",
                            output="the last node's output is the exact input of the client's "
                            "LM head: that node can compute the logits and the generated tokens",
                        ),
                        failovers=_failovers(chain),
                        finish_reason=finish,
                        consensus=self._consensus_report(chain),
                    )
                    yield TokenEvent(
                        token_id=token, text=delta, index=index, route=_names(chain), result=result
                    )
                    return
                yield TokenEvent(token_id=token, text=delta, index=index, route=_names(chain))
                x = parts.embed(torch.tensor([[token]]))
        finally:
            chain.close()

    def _generate_mpc(
        self,
        model: str,
        prompt: str | list[dict[str, str]],
        max_new_tokens: int,
        chat: bool,
        options: MPCOptions,
    ) -> Iterator[TokenEvent]:
        """Greedy generation under MPC (`decentralized.mpc_client.run_secure_decoder`).

        The client shares its prompt's embedding rows (input_private) or one-hot rows
        (weights_private), reconstructs each token from the parties' shares, checks its logit
        against the model's bound, and shares the next token's input. A token event is yielded
        as soon as it is known, except the last, which waits for the session's report.
        """
        if max_new_tokens > _MPC_MAX_NEW_TOKENS:
            raise InvalidRequest(
                f"privacy='mpc' generates at most {_MPC_MAX_NEW_TOKENS} tokens per call"
            )
        parts = self.parts(model)
        vocab = get_spec(model).vocab_size
        t0 = time.perf_counter()
        ids = parts.encode(prompt, chat=chat)

        def encode(token_ids: torch.Tensor) -> torch.Tensor:
            if options.threat_model == "input_private":
                return encode_fixed_point(parts.embed(token_ids))  # (1, T, C) ring
            return torch.nn.functional.one_hot(token_ids.long(), vocab)  # (1, T, V), scale 1

        events = run_secure_decoder(
            self._mesh,
            model,
            encode(ids),
            lambda token: encode(torch.tensor([[token]])),
            max_new_tokens,
            options,
        )
        generated: list[int] = []
        text = ""
        t_first = 0.0
        held: tuple[int, str] | None = None  # the last token, yielded with the result
        for event in events:
            if isinstance(event, MPCOutcome):
                outcome = event
                break
            if held is not None:  # the stop token came: later steps are computed, dropped
                continue
            if event.step == 0:
                t_first = time.perf_counter() - t0
            generated.append(event.token_id)
            new_text = parts.decode(generated)
            delta, text = new_text[len(text) :], new_text
            if event.token_id in parts.stop_ids or event.step == max_new_tokens - 1:
                held = (event.token_id, delta)
            else:
                yield TokenEvent(token_id=event.token_id, text=delta, index=event.step, route=())
        else:  # pragma: no cover - run_secure_decoder always ends with the outcome
            raise SessionAborted("the MPC session ended without a report")
        if held is None:  # pragma: no cover - the last step is always held
            raise SessionAborted("the MPC session produced no token")
        report = MPCReport.of(
            outcome, options.threat_model, f"|top logit| <= {outcome.output_bound:.1f}"
        )
        total = time.perf_counter() - t0
        decode_s = total - t_first
        names = tuple(p.name for p in outcome.ranks)
        result = GenerateResult(
            model=model,
            text=text,
            token_ids=tuple(generated),
            prompt_tokens=int(ids.shape[1]),
            route=(),
            timings={
                "total_s": total,
                "prefill_s": t_first,
                "decode_s": decode_s,
                "tokens_per_s": max_new_tokens / total if total > 0 else 0.0,
                "decode_tokens_per_s": (max_new_tokens - 1) / decode_s
                if decode_s > 0 and max_new_tokens > 1
                else 0.0,
            },
            privacy=self._mpc_privacy(
                model,
                report,
                "token ids, prompt text, the embedding output and the generated tokens "
                "(reconstructed locally from the two parties' shares of each token)",
            ),
            finish_reason="stop" if held[0] in parts.stop_ids else "length",
            mpc=report,
        )
        yield TokenEvent(
            token_id=held[0], text=held[1], index=len(generated) - 1, route=names, result=result
        )

    # -- consensus -------------------------------------------------------------------------
    def _chain(
        self,
        model: str,
        *,
        stateful: bool,
        verify: str | None,
        consensus: ConsensusOptions | None,
        tokens: int = 0,
    ) -> Chain | ConsensusChain:
        if verify is None:
            return self._mesh.chain(model, stateful=stateful, tokens=tokens)
        options = consensus or ConsensusOptions()
        return ConsensusChain(
            self._mesh,
            model,
            stateful=stateful,
            tokens=tokens,
            manifest=self.manifest(model, options),
            reputation=self.reputation,
            options=options,
            signing_key=self._verdict_key,
            on_verdict=(
                (lambda v: _append_verdict(options.verdict_log, v))  # type: ignore[arg-type]
                if options.verdict_log is not None
                else None
            ),
        )

    def manifest(self, model: str, options: ConsensusOptions | None = None) -> Manifest:
        """The manifest consensus checks nodes against: the published one given in `options`
        (signature checked against the pinned publisher key), or one built from this
        machine's copy of the weights (calibrated once, cached)."""
        options = options or ConsensusOptions()
        num_layers = get_spec(model).num_layers
        if options.manifest is not None:
            key = (model, options.manifest)
            if key not in self._manifests:
                manifest = Manifest.load(options.manifest, publisher_key=options.publisher_key)
                if manifest.model != model:
                    raise InvalidManifest(f"manifest {options.manifest} is for {manifest.model}")
                self._manifests[key] = manifest
            return self._manifests[key]
        from decentralized.models.calibrate import local_manifest

        # Only spans inside the model are calibrated: a record announcing one outside it is
        # refused at planning (ConsensusChain), and must not trigger a calibration per request.
        served = {
            (s.start, s.end)
            for r in self._mesh.refresh()
            for s in r.spans
            if s.model == model and 0 <= s.start < s.end <= num_layers
        }
        manifest = self._manifests.get((model, None))
        if manifest is None or not served <= set(manifest.tolerances):
            manifest = self._manifests[(model, None)] = local_manifest(model, served)
        return manifest

    def _consensus_report(self, chain: Chain | ConsensusChain) -> ConsensusReport | None:
        if not isinstance(chain, ConsensusChain):
            return None
        m = chain.manifest
        return ConsensusReport(
            checked=chain.checked,
            k=chain.k,
            spans=tuple(
                ConsensusSpan(
                    start=r.start,
                    end=r.end,
                    tolerance=r.tolerance,
                    replicas=tuple(r.replicas),
                    decisions=r.decisions,
                    escalations=r.escalations,
                    max_agreeing_distance=r.max_agreeing_distance,
                    convicted=tuple(r.convicted),
                    faults=tuple(r.faults),
                )
                for r in chain.reports()
            ),
            verdicts=tuple(chain.verdicts),
            refused=dict(chain.refused),
            manifest=(
                f"published, signed by {m.publisher_key.hex()[:16]}..."
                if m.signed
                else "built by this client from its own copy of the weights (unsigned)"
            ),
        )

    # -- privacy statement -----------------------------------------------------------------
    def _privacy(
        self, model: str, route: tuple[HopRecord, ...], keeps: str, output: str = ""
    ) -> Privacy:
        channel = self._channel_name()
        views = tuple(
            f"node {h.name} ({h.node_id[:8]}) saw plaintext activations of {model} "
            f"layers {h.start}..{h.end - 1}"
            + (" (failed mid-request; it may have seen them)" if h.calls == 0 else "")
            for h in route
        )
        return Privacy(
            mode="split",
            channel=channel,
            client_keeps=f"{keeps} (embedding layer and head run locally)",
            node_views=views,
            caveats=(
                "activations are not encrypted: a node that knows the weights can largely "
                "invert the activations it sees back to the input tokens",
                "nodes are not verified: a node can return wrong activations (see verify modes)",
                *((output,) if output else ()),
            ),
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _check_prompt(prompt: object) -> None:
    """A prompt is a string, or chat messages: dicts with string "role" and "content"."""
    if isinstance(prompt, str):
        return
    if isinstance(prompt, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in prompt
    ):
        return
    raise InvalidRequest(
        'prompt must be a string or a list of chat messages ({"role": str, "content": str} each)'
    )


def _check_verify(verify: str | None, consensus: ConsensusOptions | None, privacy: str) -> None:
    if verify not in (None, "consensus"):
        raise InvalidRequest(f"verify must be None or 'consensus', got {verify!r}")
    if consensus is not None and verify != "consensus":
        raise InvalidRequest("consensus=ConsensusOptions(...) needs verify='consensus'")
    if verify is not None and privacy != "split":
        raise InvalidRequest("verify='consensus' checks split inference; privacy must be 'split'")


def _append_verdict(path: Path, verdict: Verdict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(verdict.to_json() + "\n")


def _names(chain: Chain | ConsensusChain) -> tuple[str, ...]:
    return tuple(st.hop.name for st in chain.states)


def _route(chain: Chain | ConsensusChain) -> tuple[HopRecord, ...]:
    return tuple(
        HopRecord(
            node_id=st.hop.node_id,
            name=st.hop.name,
            address=st.hop.address,
            start=st.hop.start,
            end=st.hop.end,
            weight_digest=st.hop.weight_digest,
            compute_s=st.compute_s,
            calls=st.calls,
        )
        for st in chain.hop_states()
    )


def _failovers(chain: Chain | ConsensusChain) -> tuple[Failover, ...]:
    return tuple(
        Failover(
            node_id=f.hop.node_id,
            name=f.hop.name,
            start=f.hop.start,
            end=f.hop.end,
            reason=f.reason,
            rebuilt_tokens=f.rebuilt_tokens,
        )
        for f in chain.failovers
    )
