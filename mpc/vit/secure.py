"""Secure inference of an MPCViT on CrypTen secret shares (input-private threat model).

Ref:     MPCViT (Zeng et al., ICCV 2023) for the per-head variants; PUMA (Dong et al., arXiv
         2307.12533, section 4) for the non-linear pieces, taken from `mpc.approx`: softmax,
         GeLU, LayerNorm and the Newton reciprocal of the ReLU-softmax denominator.
Method:  The weight holder prepares the weights once, in plaintext (`_prepare_block`):
         heads are reordered so that heads of one kind are contiguous (softmax, relu_softmax,
         scaling), which lets each kind run as ONE batched call on a `narrow`ed slice; the
         attention scale is folded into W_q per head (1/sqrt(d), and 1/(sqrt(d) T) for scaling
         heads, whose weights then ARE the scores: no work at all); a linearized MLP
         (MPCViT+) is fused into one (C, C) matrix W1 W2; every LayerNorm's affine (gamma,
         beta) is folded into the matmul that follows it (`_fold_norm`). The client turns its
         images into patches and prepends one zero patch for the CLS token (`client_input`);
         the CLS vector is then the patch bias plus a public correction folded into the
         position table.
         Per block on secret x (B, T, C): LayerNorm, qkv = x W + b (public W: local), scores
         q k^T (Beaver matmul), weights per kind (softmax: `mpc.approx.softmax`; relu_softmax:
         relu(s) times `reciprocal`(sum + 1) on the public range [1, `relu_bound`], from the
         octave guess (one comparison, then 4 Newton steps instead of ~13); scaling:
         s), weights v (Beaver matmul), projection, residual; LayerNorm, MLP (PUMA GeLU, ReLU:
         one secure comparison an element, or fused linear), residual. Head: LayerNorm of the
         CLS token, linear.
Threat:  INPUT_PRIVATE as in `mpc.models.ThreatModel`: the weights (and the architecture) are
         known to the compute parties; the images and every activation are secret-shared
         between 2 semi-honest parties (CrypTen, Z_2^64, 16 fractional bits). CrypTen's TTP is a
         TRUSTED dealer of Beaver triples and comparison randomness (an assumption, not a
         property). Logits are revealed to `dst` only.
Leaks:   shapes (batch size, image size), the model and its architecture, the public
         `relu_bound`. Not leaked: pixels, activations, logits (except to `dst`).
Failure: truncations are exact (`mpc.backends.crypten_trunc`, loaded by `load()`: a dealer-made
         truncation pair, one opening per truncation), so no wrap-around garbage. A
         ReLU-softmax row sum above `relu_bound` leaves Newton's convergence region and gives a
         wrong row: the bound is calibrated on training data with a x2 margin
         (`calibrate_relu_bound`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mpc.approx import gelu, layer_norm, reciprocal, softmax
from mpc.approx._mpc import CrypTensor
from mpc.backends import crypten_dealer
from mpc.backends.crypten import load
from mpc.launch import run_parties
from mpc.vit.model import (
    ATTENTION_KINDS,
    RELU_EPS,
    AttentionKind,
    MLPKind,
    MPCViT,
    ViTConfig,
    patchify,
)

__all__ = [
    "DEFAULT_EXP_ITERATIONS",
    "THREAT_MODEL",
    "SecureClassification",
    "SecureViT",
    "attention_weights_secure",
    "calibrate_relu_bound",
    "client_input",
    "secure_classify",
    "secure_classify_interleaved",
]

# softmax's exp at n = 4 (the BERT encoder uses 6: n = 4 dropped its 128-token cosines below
# 0.999); the ViT's tests bound its error at n = 4 (tests/vit/test_secure.py).
DEFAULT_EXP_ITERATIONS = 4
THREAT_MODEL = (
    "input_private: 2 semi-honest CrypTen parties hold the images and activations as additive "
    "shares; the weights and architecture are public to them; CrypTen's TTP is a trusted "
    "dealer (assumed, not proven); logits are revealed to one rank only"
)
_RELU_MARGIN = 2.0  # calibrated max denominator times this is the public reciprocal range


def attention_weights_secure(
    scores: CrypTensor,
    kind: AttentionKind,
    *,
    relu_bound: float,
    exp_iterations: int = DEFAULT_EXP_ITERATIONS,
) -> CrypTensor:
    """One variant's weights on secret scores (..., T, T), scaling already folded in.

    softmax: `mpc.approx.softmax`; relu_softmax: relu(s) (sum relu(s) + 1)^-1 with the
    reciprocal on [1, relu_bound]; scaling: the scores themselves (the 1/T is in W_q).
    """
    if kind is AttentionKind.SOFTMAX:
        return softmax(scores, dim=-1, exp_iterations=exp_iterations)
    if kind is AttentionKind.RELU_SOFTMAX:
        positive = scores.relu()
        total = positive.sum(dim=-1, keepdim=True) + RELU_EPS
        return positive * reciprocal(total, lo=RELU_EPS, hi=relu_bound, octaves=True)
    return scores


@torch.no_grad()
def calibrate_relu_bound(model: MPCViT, images: torch.Tensor, *, batch_size: int = 256) -> float:
    """Public range of relu_softmax denominators: x2 the largest seen on `images`, >= 2.

    Run by the weight holder on training data; the result ships with the model.
    """
    seen = [RELU_EPS]
    config = model.config

    def hook(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        batch, tokens, _ = output.shape
        qkv = output.view(batch, tokens, 3, config.heads, config.head_dim).permute(2, 0, 3, 1, 4)
        scores = qkv[0] @ qkv[1].transpose(-2, -1) / math.sqrt(config.head_dim)  # (B, H, T, T)
        seen.append(float(scores.relu().sum(-1).max()) + RELU_EPS)

    handles = [
        block.get_submodule("attention.qkv").register_forward_hook(hook) for block in model.blocks
    ]
    try:
        model.eval()
        for start in range(0, len(images), batch_size):
            model(images[start : start + batch_size])
    finally:
        for handle in handles:
            handle.remove()
    return max(2.0, _RELU_MARGIN * max(seen))


def client_input(images: torch.Tensor, config: ViTConfig) -> torch.Tensor:
    """Client side, plaintext: (B, ch, S, S) -> (B, T, ch p p) patches after one zero patch."""
    patches = patchify(images.to(torch.float32), config.patch_size)  # (B, N, P)
    zero = torch.zeros(patches.shape[0], 1, patches.shape[2])  # (B, 1, P): the CLS slot
    return torch.cat([zero, patches], dim=1)  # (B, T, P)


def _head_order(
    kinds: Sequence[AttentionKind],
) -> tuple[list[int], list[tuple[AttentionKind, int]]]:
    """Head permutation grouping kinds (softmax, relu, scaling) and the (kind, count) runs."""
    order: list[int] = []
    runs: list[tuple[AttentionKind, int]] = []
    for kind in ATTENTION_KINDS:
        members = [h for h, k in enumerate(kinds) if k is kind]
        order.extend(members)
        if members:
            runs.append((kind, len(members)))
    return order, runs


def _prepare_block(
    state: Mapping[str, torch.Tensor],
    config: ViTConfig,
    kinds: Sequence[AttentionKind],
    mlp: MLPKind,
) -> dict[str, Any]:
    """Weight holder, plaintext: reorder heads, fold score scales into W_q, fuse linear MLPs."""
    d, c = config.head_dim, config.dim
    order, runs = _head_order(kinds)
    rows = torch.cat([torch.arange(h * d, (h + 1) * d) for h in order])  # (C,) new -> old
    scale = torch.cat(
        [
            torch.full(
                (d,), 1 / math.sqrt(d) / (config.tokens if kinds[h] is AttentionKind.SCALING else 1)
            )
            for h in order
        ]
    )  # (C,)
    w_qkv, b_qkv = state["attention.qkv.weight"], state["attention.qkv.bias"]  # (3C, C), (3C,)
    w = torch.cat([w_qkv[:c][rows] * scale[:, None], w_qkv[c : 2 * c][rows], w_qkv[2 * c :][rows]])
    b = torch.cat([b_qkv[:c][rows] * scale, b_qkv[c : 2 * c][rows], b_qkv[2 * c :][rows]])
    ln1 = (state["norm1.weight"], state["norm1.bias"])
    prepared: dict[str, Any] = {
        "runs": runs,
        "qkv": _fold_norm(ln1, w.T, b),  # (C, 3C), (3C,)
        "proj": (
            state["attention.proj.weight"][:, rows].T.contiguous(),
            state["attention.proj.bias"],
        ),  # (C, C), (C,)
        "mlp": mlp,
    }
    ln2 = (state["norm2.weight"], state["norm2.bias"])
    w1, b1 = state["fc1.weight"].T, state["fc1.bias"]  # (C, F), (F,)
    w2, b2 = state["fc2.weight"].T, state["fc2.bias"]  # (F, C), (C,)
    if mlp is MLPKind.LINEAR:
        prepared["fused"] = _fold_norm(
            ln2,
            (w1.double() @ w2.double()).float(),
            (b1.double() @ w2.double() + b2.double()).float(),
        )  # (C, C), (C,)
    else:
        prepared["fc1"], prepared["fc2"] = _fold_norm(ln2, w1, b1), (w2.contiguous(), b2)
    return prepared


def _fold_norm(
    norm: tuple[torch.Tensor, torch.Tensor], weight: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A LayerNorm's affine (gamma, beta) folded into the linear layer after it (plaintext):
    (n gamma + beta) W + b = n (diag(gamma) W) + (beta W + b), so the secret normalized n goes
    straight into the matmul (one truncation fewer per norm, and no rounding of n gamma)."""
    gamma, beta = (t.double() for t in norm)
    folded = (gamma[:, None] * weight.double()).float().contiguous()  # (C, out)
    return folded, (beta @ weight.double() + bias.double()).float()  # (out,)


class SecureViT:
    """An `MPCViT` forward on secret shares; every party builds it from the same public model.

    Args:
        model: a discrete (not searching) `MPCViT`; its weights are public to the parties.
        relu_bound: public upper bound of the relu_softmax denominators
            (`calibrate_relu_bound`); unused without relu_softmax heads.
        exp_iterations: n of softmax's exp (`mpc.approx.exp`).
    """

    def __init__(
        self, model: MPCViT, *, relu_bound: float, exp_iterations: int = DEFAULT_EXP_ITERATIONS
    ) -> None:
        if model.search:
            raise ValueError("discretize the supernet first (MPCViT.discretized())")
        if not relu_bound > RELU_EPS:
            raise ValueError(f"relu_bound must exceed {RELU_EPS}, got {relu_bound}")
        self.config = model.config
        self.relu_bound = float(relu_bound)
        self.exp_iterations = exp_iterations
        state = {k: v.detach().to(torch.float32) for k, v in model.state_dict().items()}
        arch = model.architecture
        self.blocks = [
            _prepare_block(
                {
                    k[len(f"blocks.{i}.") :]: v
                    for k, v in state.items()
                    if k.startswith(f"blocks.{i}.")
                },
                self.config,
                arch.attention[i],
                arch.mlp_kinds()[i],
            )
            for i in range(self.config.depth)
        ]
        self.patch = (state["patch_embed.weight"].T.contiguous(), state["patch_embed.bias"])
        pos = state["pos_embed"][0].clone()  # (T, C)
        pos[0] += state["cls_token"][0, 0] - state["patch_embed.bias"]  # CLS slot correction
        self.pos = pos
        norm = (state["norm.weight"], state["norm.bias"])
        self.head = _fold_norm(norm, state["head.weight"].T, state["head.bias"])  # (C, classes)

    def _attention(self, x: CrypTensor, block: dict[str, Any]) -> CrypTensor:
        crypten = load()
        batch, tokens, channels = x.size()
        heads, d = self.config.heads, self.config.head_dim
        qkv = x.matmul(block["qkv"][0]) + block["qkv"][1]  # (B, T, 3C) local
        qkv = qkv.view(batch, tokens, 3, heads, d).permute(2, 0, 3, 1, 4)  # (3, B, H, T, d)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, T, d)
        scores = q.matmul(k.transpose(-2, -1))  # (B, H, T, T) Beaver
        parts, start = [], 0
        for kind, count in block["runs"]:
            part = scores.narrow(1, start, count)  # (B, count, T, T)
            parts.append(
                attention_weights_secure(
                    part, kind, relu_bound=self.relu_bound, exp_iterations=self.exp_iterations
                )
            )
            start += count
        weights = parts[0] if len(parts) == 1 else crypten.cat(parts, dim=1)  # (B, H, T, T)
        context = weights.matmul(v)  # (B, H, T, d) Beaver
        context = context.transpose(1, 2).reshape(batch, tokens, channels)  # (B, T, C)
        return context.matmul(block["proj"][0]) + block["proj"][1]

    def _mlp(self, x: CrypTensor, block: dict[str, Any]) -> CrypTensor:
        if block["mlp"] is MLPKind.LINEAR:
            return x.matmul(block["fused"][0]) + block["fused"][1]  # (B, T, C)
        hidden = x.matmul(block["fc1"][0]) + block["fc1"][1]  # (B, T, F)
        hidden = hidden.relu() if block["mlp"] is MLPKind.RELU else gelu(hidden)
        return hidden.matmul(block["fc2"][0]) + block["fc2"][1]  # (B, T, C)

    def forward(self, patches: CrypTensor) -> CrypTensor:
        """Secret (B, T, P) from `client_input` -> secret logits (B, num_classes)."""
        size = tuple(patches.size())
        want = (self.config.tokens, self.config.channels * self.config.patch_size**2)
        if len(size) != 3 or size[1:] != want:
            raise ValueError(f"patches must be (B, {want[0]}, {want[1]}), got {size}")
        eps = self.config.ln_eps
        x = patches.matmul(self.patch[0]) + self.patch[1] + self.pos  # (B, T, C)
        for block in self.blocks:  # each norm's affine is folded into the matmul after it
            x = x + self._attention(layer_norm(x, eps=eps), block)
            x = x + self._mlp(layer_norm(x, eps=eps), block)
        cls = layer_norm(x.narrow(1, 0, 1), eps=eps)  # (B, 1, C)
        return cls.matmul(self.head[0]).squeeze(1) + self.head[1]  # (B, classes)

    __call__ = forward


@dataclass(frozen=True)
class SecureClassification:
    """What `secure_classify` returns; `threat_model` says what was assumed."""

    logits: torch.Tensor  # (N, classes) float64, decoded exactly from the ring
    predictions: torch.Tensor  # (N,) int64
    online_seconds: float  # party 0 wall time: sharing, every forward, reveal
    bytes_sent_received: int  # party 1's CrypTen counters (sent + received), all batches
    rounds: int  # party 1's communication rounds, all batches
    images: int
    batch_size: int
    threat_model: str = THREAT_MODEL
    per_batch_seconds: list[float] = field(default_factory=list)
    # batches whose dealer values were fetched in chunks from a plan recorded on an earlier
    # batch of the same shape (`preprocess`); the others made one dealer round trip per value
    preprocessed_batches: int = 0

    @property
    def seconds_per_image(self) -> float:
        return self.online_seconds / self.images

    @property
    def bytes_per_image(self) -> float:
        return self.bytes_sent_received / self.images


@contextlib.contextmanager
def _dealer_preprocessed(
    crypten: Any, rank: int, plans: dict[Any, crypten_dealer.DealerPlan], key: Any, row: dict
) -> Iterator[None]:
    """Party 0, around one forward: record the dealer plan of `key` (model, batch shape) the
    first time, and from then on fetch its dealer shares in chunks instead of one dealer round
    trip per correlated value (`mpc.backends.crypten_dealer`; what the mesh's MPC nodes do for
    every session after the first of a shape). The other party never talks to the dealer."""
    if rank != 0:
        yield
        return
    plan = plans.get(key)
    with crypten_dealer.planned(crypten, plan) as use:
        yield
    if use.recorded is not None:
        plans[key] = use.recorded
        return
    if crypten_dealer.pending(crypten) or use.online_requests:
        raise crypten_dealer.DealerPlanMismatch("the forward did not follow its dealer plan")
    row["preprocessed_batches"] += 1


def _classify_party(
    rank: int,
    models: list[tuple[MPCViT, float]],
    inputs: list[torch.Tensor],
    dst: int,
    preprocess: bool,
) -> list[dict[str, Any]]:
    """One party: build each secure model, then for each batch run every model on it in turn
    (interleaved, so that a change in the machine's speed hits every model alike)."""
    crypten = load()
    crypten.cfg.communicator.verbose = True
    comm = crypten.comm.get()
    secure = [SecureViT(model, relu_bound=bound) for model, bound in models]
    out: list[dict[str, Any]] = [
        {"logits": [], "seconds": [], "bytes": 0, "rounds": 0, "preprocessed_batches": 0}
        for _ in models
    ]
    plans: dict[Any, crypten_dealer.DealerPlan] = {}
    for batch in inputs:
        data = batch if rank == 0 else torch.zeros_like(batch)  # only rank 0's values are used
        for index, (forward, row) in enumerate(zip(secure, out, strict=True)):
            comm.reset_communication_stats()
            start = time.perf_counter()
            dealer = (
                _dealer_preprocessed(crypten, rank, plans, (index, tuple(batch.shape)), row)
                if preprocess
                else contextlib.nullcontext()
            )
            with dealer:
                result = forward(crypten.cryptensor(data, src=0))  # (B, classes)
            revealed = result.reveal(dst=dst)
            row["seconds"].append(time.perf_counter() - start)
            stats = comm.get_communication_stats()
            row["bytes"] += stats["bytes"]
            row["rounds"] += stats["rounds"]
            if rank == dst:
                row["logits"].append(revealed.double() / result.encoder.scale)
    return out


def secure_classify(
    model: MPCViT,
    images: torch.Tensor,
    *,
    relu_bound: float,
    batch_size: int = 50,
    preprocess: bool = True,
    transport: str = "gloo",
    timeout_s: float = 600.0,
) -> SecureClassification:
    """Classify `images` with 2 CrypTen parties + TTP on this machine (`mpc.launch`).

    Party 0 stands in for the client: it turns the images into patches (`client_input`) and
    secret-shares them; the logits are revealed to party 0 only. Transport is gloo over
    loopback, or with `transport="pipe"` this repository's communicator over OS pipes
    (development harness; see `mpc.launch` for both and their limits). The SDK can instead run
    `SecureViT` inside its own CrypTen sessions: it needs the public model, `relu_bound` and
    the client's `client_input(images, model.config)` as a secret (B, T, P) tensor.

    With `preprocess` (default), party 0 records the dealer requests of the first batch of
    each shape and fetches those of every later batch of that shape ahead, in chunks
    (`mpc.backends.crypten_dealer`), as the mesh's MPC nodes do from a node's second session
    of a shape on; the chunk fetches are inside the measured time. The dealer is the same
    trusted TTP either way.

    Raises:
        ValueError / TypeError: bad images (shape, dtype, non-finite) or batch size.
        mpc.errors.PartyFailed, PartyTimeout: a party failed or ran past `timeout_s`.
    """
    (result,) = secure_classify_interleaved(
        [(model, relu_bound)],
        images,
        batch_size=batch_size,
        preprocess=preprocess,
        transport=transport,
        timeout_s=timeout_s,
    )
    return result


def secure_classify_interleaved(
    models: Sequence[tuple[MPCViT, float]],
    images: torch.Tensor,
    *,
    batch_size: int = 50,
    preprocess: bool = True,
    transport: str = "gloo",
    timeout_s: float = 600.0,
) -> list[SecureClassification]:
    """`secure_classify` for several (model, relu_bound) pairs of one image size in one party
    session: each batch goes through every model in turn, so that the models' latencies are
    compared under the same machine conditions (for benchmarks on a shared machine).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not models:
        raise ValueError("no models to run")
    for model, _ in models:
        model.check_images(images)
        if model.search:
            raise ValueError("discretize the supernet first (MPCViT.discretized())")
    patches = client_input(images, models[0][0].config)
    inputs = [patches[i : i + batch_size] for i in range(0, len(patches), batch_size)]
    results = run_parties(
        _classify_party,
        world_size=2,
        ttp=True,
        timeout_s=timeout_s,
        args=([(m, float(b)) for m, b in models], inputs, 0, preprocess),
        transport=transport,
    )
    out = []
    for row0, row1 in zip(results[0], results[1], strict=True):
        logits = torch.cat(row0["logits"])  # (N, classes)
        out.append(
            SecureClassification(
                logits=logits,
                predictions=logits.argmax(-1),
                online_seconds=sum(row0["seconds"]),
                bytes_sent_received=int(row1["bytes"]),
                rounds=int(row1["rounds"]),
                images=len(images),
                batch_size=batch_size,
                per_batch_seconds=list(row0["seconds"]),
                preprocessed_batches=int(row0["preprocessed_batches"]),
            )
        )
    return out
