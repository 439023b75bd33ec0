"""A LLaMA decoder (SmolLM2-135M-Instruct shape) on CrypTen secret shares: prefill, KV cache,
greedy decoding, the PUMA way.

Ref:     Y. Dong et al., "PUMA: Secure Inference of LLaMA-7B in Five Minutes", arXiv 2307.12533
         (section 4: softmax, RMSNorm via a secure reciprocal square root, SiLU as a piecewise
         approximation, embedding as a secret one-hot times the table). The layer is HF
         transformers' `LlamaDecoderLayer`: input_layernorm (RMSNorm), self_attn.{q,k,v,o}_proj
         with rotary position embeddings and grouped-query attention, post_attention_layernorm,
         mlp.{gate,up,down}_proj with down(silu(gate(x)) * up(x)); no biases.
Method:  per layer, on secret x (B, T, C): h = `wide_rms_norm(x)`; [q k v] = h W_qkv (the
         RMSNorm weight and the 1/sqrt(d) of attention are folded into W_qkv by the weights'
         holder); rotary: q, k times PUBLIC per-position (d, d) rotation matrices
         (`rotary_matrices`: x cos + rotate_half(x) sin as one linear map, one truncation);
         k, v appended to the secret KV cache; GQA without copying k, v: the query heads that
         share a KV head are stacked along the token axis, (B, KV, rep T, d), so scores are
         (B, KV, rep T, S) = q k^T per KV head; + a PUBLIC causal mask (`causal_mask`, large
         negative constants); `mpc.approx.softmax`; probs v; o_proj; residual; RMSNorm;
         [g u] = h W_gu (fused, RMSNorm weight folded); `mpc.approx.silu`(g) * u (one secret
         multiplication); down_proj; residual. The final RMSNorm runs on the last position only
         and its weight is folded into the LM head (tied to the embedding table).
         `wide_rms_norm`: SmolLM2's residual stream has mean squares from 0.007 (layer 0) to
         1.1e6 (the first token from layer 12 on: an attention sink with |x| up to 2.5e4),
         beyond `mpc.approx.rms_norm`'s range [1.5e-5, 2048). RMSNorm is scale-invariant, so
         each row is first scaled by a secret power of four sigma = 4^-k chosen by one batched
         comparison of a coarse mean square against public thresholds (exact bucket lookup,
         `mpc.approx._mpc`), then normalized: mean squares up to 2^27 are handled. eps is added
         to the scaled mean square (for a scaled row, whose mean square is >= 2^7, eps = 1e-5
         changes nothing at 16 fractional bits).
         Greedy token: `secure_argmax`, a pairwise tree over the secret logits carrying secret
         indices; only the index and its logit are revealed, to the client only.
         Embedding: INPUT_PRIVATE: the client looks its token up in the public table and
         secret-shares the row (no MPC cost). WEIGHTS_PRIVATE: the client shares a one-hot
         (`bert.share_one_hot`, scale 1, exact) and it is multiplied by the secret table.
Threat:  semi-honest parties (CrypTen's 2-party additive sharing over Z_2^64, 16 fractional
         bits); CrypTen's TTP deals the Beaver triples, comparison randomness and truncation
         pairs: a TRUSTED DEALER, an assumption, not a property. `ThreatModel` says who may see
         the weights (INPUT_PRIVATE: every party; WEIGHTS_PRIVATE: only `owner`, who
         secret-shares them).
Leaks:   to the parties: shapes (B, prompt length T, number of generated tokens, the model's
         dimensions), the causal mask (public by construction), and in INPUT_PRIVATE the
         weights. Not leaked to them: token ids, hidden states, KV cache, logits, the generated
         tokens. To the client (the `client` rank): each generated token id and its logit (the
         top logit is revealed for the garbage check; in WEIGHTS_PRIVATE that is one number
         about the weights per token, besides the token itself, and the owner's
         `logits_bound`, which goes to the client only, never to the other party).
         Generation runs a fixed number of steps: stopping at an end-of-turn token would tell
         the parties when it came.
Failure: every revealed top logit is checked against the bound the final RMSNorm and the LM
         head impose (`logits_bound`); beyond it `check_output` raises `GarbageOutput` (a ring
         overflow). Inputs whose normalized rows fall outside `wide_rms_norm`'s range (mean
         square >= 2^27) are not detected in the middle layers.
Cost:    per layer, T new tokens, S = cached + T keys, C = 576, F = 1536, H = 9, KV = 3:
         comparisons: 2 T (8 + 24) (norm scale buckets + rsqrt buckets), softmax H T (S - 1)
         (max tree) + H T S (exp threshold), SiLU 3 T F (the bulk); Beaver multiplications:
         scores and probs v (secret x secret), x sigma and the RMSNorm products, SiLU's
         polynomial, silu(g) u; INPUT_PRIVATE: the weight matmuls are local (one truncation
         each); WEIGHTS_PRIVATE: Beaver matmuls whose weight masks were opened once, when the
         model was built (`mpc.backends.crypten_weights`), so a step opens only activations.
         Head: a (1, C) x (C, V) matmul and the argmax tree: V - 1 comparisons in 16 levels.
         Measured figures: docs/mpc-llama.md.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mpc.approx import rms_norm, silu, softmax
from mpc.approx._mpc import CrypTensor, below_bits, bucket_lookup
from mpc.approx.silu import SiLUMethod
from mpc.backends.crypten import load
from mpc.backends.crypten_weights import matmul, share_matrix, share_weights
from mpc.models.bert import MASK_VALUE, ThreatModel, Weight, check_output, share_one_hot

__all__ = [
    "LAYER_KEYS",
    "GenerationTrace",
    "KVCache",
    "LlamaConfig",
    "SecureLlama",
    "causal_mask",
    "logits_bound",
    "rotary_matrices",
    "secure_argmax",
    "wide_rms_norm",
]

# The tensors each layer needs, as named in HF's `LlamaDecoderLayer.state_dict()`.
LAYER_KEYS = (
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)

# wide_rms_norm: rows are scaled by 4^-k so that the mean square lands below 2^_TARGET_EXP
# (2^11 after a bucket chosen one off by the coarse estimate: rms_norm's range ends at 2048).
_TARGET_EXP = 9
_SCALE_STEPS = 9  # k = 0..8: mean squares below 2^(9 + 2 * 9) = 2^27
_COARSE_SHIFT = 4  # the coarse mean square is taken on x / 16: sum x^2 stays far from the ring


@dataclass(frozen=True)
class LlamaConfig:
    """The shape of a LLaMA model, read from its HF config.json."""

    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    num_layers: int
    vocab_size: int
    rope_theta: float
    rms_norm_eps: float

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> LlamaConfig:
        """From a config.json dict; refuses what this module does not implement.

        Raises:
            ValueError: biases, an activation other than SiLU, scaled rotary embeddings, or
                heads that do not divide evenly.
        """
        if config.get("attention_bias") or config.get("mlp_bias"):
            raise ValueError("biased LLaMA projections are not supported")
        if config.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act must be silu, got {config['hidden_act']!r}")
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"only default rotary embeddings, got {rope.get('rope_type')!r}")
        theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
        heads, kv_heads = int(config["num_attention_heads"]), int(config["num_key_value_heads"])
        if heads % kv_heads:
            raise ValueError(f"{heads} heads are not a multiple of {kv_heads} KV heads")
        hidden = int(config["hidden_size"])
        return cls(
            hidden_size=hidden,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=int(config.get("head_dim") or hidden // heads),
            intermediate_size=int(config["intermediate_size"]),
            num_layers=int(config["num_hidden_layers"]),
            vocab_size=int(config["vocab_size"]),
            rope_theta=float(theta),
            rms_norm_eps=float(config["rms_norm_eps"]),
        )

    @classmethod
    def from_file(cls, path: Path) -> LlamaConfig:
        """From a model directory's config.json."""
        return cls.from_dict(json.loads((Path(path) / "config.json").read_text()))


def rotary_matrices(positions: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
    """(T,) public positions -> (T, d, d) float32 R_t with rope(x)_t = x R_t.

    HF's rotary embedding is x cos + rotate_half(x) sin with cos, sin of
    position / theta^(2i / d) repeated twice; rotate_half(x) = [-x2, x1] = x P for a signed
    permutation P, so R_t = diag(cos_t) + P diag(sin_t).
    """
    if head_dim % 2:
        raise ValueError(f"head_dim must be even, got {head_dim}")
    half = head_dim // 2
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # (T, d/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, d)
    rotate = torch.zeros(head_dim, head_dim, dtype=torch.float64)
    index = torch.arange(half)
    rotate[index + half, index] = -1.0  # output j < d/2 takes -x[j + d/2]
    rotate[index, index + half] = 1.0  # output j >= d/2 takes x[j - d/2]
    matrices = torch.diag_embed(angles.cos()) + rotate[None] * angles.sin()[:, None, :]
    return matrices.to(torch.float32)  # (T, d, d)


def causal_mask(tokens: int, past: int) -> torch.Tensor:
    """(T, past + T) public additive mask: `MASK_VALUE` where key position > query position."""
    query = torch.arange(tokens)[:, None] + past  # (T, 1)
    key = torch.arange(past + tokens)[None, :]  # (1, S)
    return (key > query).to(torch.float32) * MASK_VALUE  # (T, S)


def wide_rms_norm(x: CrypTensor, *, eps: float) -> CrypTensor:
    """RMSNorm without weight over the last dimension, for mean squares in [1.5e-5, 2^27).

    Each row is scaled by a secret 4^-k (k = 0..8) picked from a coarse mean square of x / 16
    (one comparison of 8 thresholds per row), so that `mpc.approx.rms_norm` sees a mean
    square below 2^11; RMSNorm is invariant to that scale. See the module docstring.
    """
    coarse_x = x * 2.0**-_COARSE_SHIFT
    channels = x.size(-1)
    coarse = coarse_x.unsqueeze(-2).matmul(coarse_x.unsqueeze(-1)).squeeze(-1)  # (..., 1)
    coarse = coarse.div(channels)  # mean square / 2^(2 shift)
    exponents = [_TARGET_EXP + 2 * k - 2 * _COARSE_SHIFT for k in range(_SCALE_STEPS - 1)]
    lows = below_bits(coarse, [2.0**e for e in exponents])
    sigma = bucket_lookup(lows, [4.0**-k for k in range(_SCALE_STEPS)], coarse)  # (..., 1)
    return rms_norm(x * sigma, None, eps=eps)


def logits_bound(head: torch.Tensor) -> float:
    """The largest |logit| a final RMSNorm (weight folded into `head`, (C, V)) can produce.

    The unweighted RMSNorm output u has ||u||_2 = sqrt(C) (eps aside), so by Cauchy-Schwarz
    |u . head[:, v]| <= sqrt(C) ||head[:, v]||_2. In WEIGHTS_PRIVATE the owner computes it.
    """
    return math.sqrt(head.shape[0]) * float(head.norm(dim=0).max())


def secure_argmax(logits: CrypTensor) -> tuple[CrypTensor, CrypTensor]:
    """(secret index, secret max) over the last dimension of (..., V), first index on ties.

    A pairwise tree: at each level b is taken over a exactly when b > a ([a - b < 0], one
    batched comparison), and the value and the index move together (one multiplication of
    the stacked differences by the bit, exact since the bit has scale 1). V - 1 comparisons
    in ceil(log2 V) levels. Indices are carried in fixed point (V 2^16 fits the ring).
    """
    crypten = load()
    values = logits
    size = values.size(-1)
    positions = torch.arange(size, dtype=torch.float32).expand(values.size())
    index = crypten.cryptensor(positions)  # public values as shares (no communication)
    while values.size(-1) > 1:
        half = values.size(-1) // 2
        a, b = values.narrow(-1, 0, half), values.narrow(-1, half, half)
        ia, ib = index.narrow(-1, 0, half), index.narrow(-1, half, half)
        take_b = (a - b) < 0  # integer bit, scale 1
        moved = crypten.stack([b - a, ib - ia]) * take_b  # (2, ..., half), exact
        next_values, next_index = a + moved[0], ia + moved[1]
        if values.size(-1) % 2:
            next_values = crypten.cat([next_values, values.narrow(-1, 2 * half, 1)], dim=-1)
            next_index = crypten.cat([next_index, index.narrow(-1, 2 * half, 1)], dim=-1)
        values, index = next_values, next_index
    return index.squeeze(-1), values.squeeze(-1)


@dataclass
class KVCache:
    """Secret keys (after rotary) and values of every layer, (B, KV, S, d) each."""

    keys: list[CrypTensor | None]
    values: list[CrypTensor | None]
    length: int = 0

    @classmethod
    def empty(cls, layers: int) -> KVCache:
        return cls([None] * layers, [None] * layers)

    def append(self, layer: int, k: CrypTensor, v: CrypTensor) -> tuple[CrypTensor, CrypTensor]:
        """Append this step's (B, KV, T, d) shares; return the layer's whole cache."""
        if self.keys[layer] is not None:
            crypten = load()
            k = crypten.cat([self.keys[layer], k], dim=2)
            v = crypten.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


@dataclass
class GenerationTrace:
    """What one secure greedy generation did. `tokens`/`top_logits` are filled on the client."""

    threat_model: str
    tokens: list[int] = field(default_factory=list)
    top_logits: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # [prefill + 1st token, each next]
    bytes: list[int] = field(default_factory=list)  # this party's sent + received, per step
    rounds: list[int] = field(default_factory=list)
    dealer: str = "CrypTen TTP (trusted dealer: an assumption, not a property)"


# Weight matrices: in WEIGHTS_PRIVATE their Beaver masks are opened once (crypten_weights).
_MATRICES = ("qkv_w", "o_w", "gu_w", "down_w")


def _prepare_layer(state: Mapping[str, torch.Tensor], config: LlamaConfig) -> dict[str, Any]:
    """Holder-side plaintext preprocessing: (in, out) weights, norms and 1/sqrt(d) folded.

    Returns float32 tensors keyed qkv_w (C, (H + 2 KV) d), o_w (H d, C), gu_w (C, 2F),
    down_w (F, C).
    """
    missing = [key for key in LAYER_KEYS if key not in state]
    if missing:
        raise KeyError(f"layer state is missing {missing}")
    t = {key: state[key].detach().to(torch.float32) for key in LAYER_KEYS}
    in_norm, post_norm = t["input_layernorm.weight"], t["post_attention_layernorm.weight"]
    q_w = t["self_attn.q_proj.weight"] / math.sqrt(config.head_dim)  # (H d, C)
    expected_q = (config.num_heads * config.head_dim, config.hidden_size)
    if tuple(q_w.shape) != expected_q:
        raise ValueError(f"q_proj is {tuple(q_w.shape)}, the config says {expected_q}")
    qkv = torch.cat([q_w, t["self_attn.k_proj.weight"], t["self_attn.v_proj.weight"]])
    gate_up = torch.cat([t["mlp.gate_proj.weight"], t["mlp.up_proj.weight"]])  # (2F, C)
    return {
        "qkv_w": (qkv * in_norm[None, :]).T.contiguous(),  # (C, (H + 2 KV) d)
        "o_w": t["self_attn.o_proj.weight"].T.contiguous(),  # (H d, C)
        "gu_w": (gate_up * post_norm[None, :]).T.contiguous(),  # (C, 2F)
        "down_w": t["mlp.down_proj.weight"].T.contiguous(),  # (F, C)
    }


class SecureLlama:
    """A LLaMA causal LM on secret shares: secret prefill, secret KV cache, greedy decoding.

    Every party builds it with the same shapes. In WEIGHTS_PRIVATE only the `owner` rank's
    tensor values are used (they are secret-shared from it); the others may pass zeros of the
    right shapes.
    """

    def __init__(
        self,
        state: Mapping[str, torch.Tensor],
        config: LlamaConfig,
        *,
        threat_model: ThreatModel = ThreatModel.INPUT_PRIVATE,
        owner: int = 0,
        num_layers: int | None = None,
        silu_method: SiLUMethod = SiLUMethod.CHEBYSHEV,
    ) -> None:
        """Prepare (and in WEIGHTS_PRIVATE, secret-share) the weights.

        Args:
            state: the HF `LlamaForCausalLM` state dict (`model.layers.{i}.*`,
                `model.embed_tokens.weight`, `model.norm.weight`, optional `lm_head.weight`).
            config: the model's shape (`LlamaConfig.from_file`).
            threat_model: whether the weights are public to the parties or secret-shared.
            owner: rank that inputs the weights in WEIGHTS_PRIVATE.
            num_layers: run only the first n layers (tests); None: all of them.
            silu_method: see `mpc.approx.silu`.

        Raises:
            KeyError: a tensor is missing.
            ValueError: num_layers out of range, or shapes that contradict the config.
        """
        layers = config.num_layers if num_layers is None else num_layers
        if not 1 <= layers <= config.num_layers:
            raise ValueError(f"num_layers must be in 1..{config.num_layers}, got {num_layers}")
        self.config = config
        self.threat_model = threat_model
        self.silu_method = silu_method
        prepared = []
        for i in range(layers):
            prefix = f"model.layers.{i}."
            layer = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            prepared.append(_prepare_layer(layer, config))
        for key in ("model.embed_tokens.weight", "model.norm.weight"):
            if key not in state:
                raise KeyError(f"state is missing {key}")
        table = state["model.embed_tokens.weight"].detach().to(torch.float32)  # (V, C)
        if tuple(table.shape) != (config.vocab_size, config.hidden_size):
            raise ValueError(f"embedding table is {tuple(table.shape)}, expected (V, C)")
        head = state.get("lm_head.weight", table).detach().to(torch.float32)  # (V, C)
        norm = state["model.norm.weight"].detach().to(torch.float32)  # (C,)
        folded_head = (head * norm[None, :]).T.contiguous()  # (C, V)
        self.owner = owner
        self.logits_bound = logits_bound(folded_head)
        if threat_model is ThreatModel.WEIGHTS_PRIVATE:
            crypten = load()
            if crypten.comm.get().get_rank() != owner:
                # A number about the secret weights: only the owner knows it, and it goes to
                # the client only (`next_token`; on the mesh, party 0's reply), not to the
                # other party. Its own weights here are placeholders.
                self.logits_bound = math.nan
            self.layers: list[dict[str, Weight]] = [
                share_weights(p, _MATRICES, owner) for p in prepared
            ]
            self.table: Weight = share_matrix(crypten.cryptensor(table, src=owner))
            self.head: Weight = share_matrix(crypten.cryptensor(folded_head, src=owner))
        else:
            self.layers = list(prepared)
            self.table, self.head = table, folded_head

    @classmethod
    def from_pretrained(cls, path: Path, *, zero: bool = False, **kwargs: Any) -> SecureLlama:
        """From a HF model directory (config.json + model.safetensors, e.g. `smollm2_dir()`).

        `zero=True` replaces every value by 0 (a non-owner party in WEIGHTS_PRIVATE).
        """
        from safetensors.torch import load_file

        state = load_file(str(Path(path) / "model.safetensors"))
        if zero:
            state = {k: torch.zeros_like(v) for k, v in state.items()}
        return cls(state, LlamaConfig.from_file(path), **kwargs)

    def new_cache(self) -> KVCache:
        return KVCache.empty(len(self.layers))

    def embed(self, input_ids: torch.Tensor, *, client: int = 0) -> CrypTensor:
        """Secret (B, T, C) embeddings of the `client`'s (B, T) token ids.

        INPUT_PRIVATE: the client looks the rows up in the public table and shares them.
        WEIGHTS_PRIVATE: the client shares a one-hot (scale 1) that multiplies the secret
        table (exact, one Beaver matmul). Other ranks pass any ids of the same shape.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, T), got {tuple(input_ids.shape)}")
        ids = input_ids.long()
        if bool(((ids < 0) | (ids >= self.config.vocab_size)).any()):
            raise ValueError(f"token ids must be in [0, {self.config.vocab_size})")
        if self.threat_model is ThreatModel.WEIGHTS_PRIVATE:
            return self.embed_one_hot(share_one_hot(ids, self.config.vocab_size, src=client))
        return load().cryptensor(self.table[ids], src=client)  # (B, T, C)

    def embed_one_hot(self, one_hot: CrypTensor) -> CrypTensor:
        """Secret (B, T, C) embeddings of a secret (B, T, V) one-hot at scale 1 (precision 0):
        one Beaver matmul with the secret table in WEIGHTS_PRIVATE, exact (no truncation)."""
        if one_hot.dim() != 3 or one_hot.size(-1) != self.config.vocab_size:
            raise ValueError(
                f"one_hot must be (B, T, {self.config.vocab_size}), got {tuple(one_hot.size())}"
            )
        return matmul(one_hot, self.table)  # (B, T, C) at the table's scale

    def _attention(
        self, h: CrypTensor, w: dict[str, Weight], layer: int, cache: KVCache
    ) -> CrypTensor:
        """Rotary GQA self-attention with output projection; h (B, T, C) -> (B, T, C)."""
        cfg = self.config
        batch, tokens, _ = h.size()
        heads, kv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        rep = heads // kv
        qkv = matmul(h, w["qkv_w"])  # (B, T, (H + 2 KV) d)
        qkv = qkv.view(batch, tokens, heads + 2 * kv, d)  # (B, T, H + 2 KV, d)
        positions = torch.arange(tokens) + cache.length
        rotation = rotary_matrices(positions, d, cfg.rope_theta)  # (T, d, d) public
        qk = qkv.narrow(2, 0, heads + kv).matmul(rotation)  # (B, T, H + KV, d), one truncation
        q = qk.narrow(2, 0, heads).permute(0, 2, 1, 3)  # (B, H, T, d)
        k = qk.narrow(2, heads, kv).permute(0, 2, 1, 3)  # (B, KV, T, d)
        v = qkv.narrow(2, heads + kv, kv).permute(0, 2, 1, 3)  # (B, KV, T, d)
        keys, values = cache.append(layer, k, v)  # (B, KV, S, d) each
        grouped = q.reshape(batch, kv, rep * tokens, d)  # (B, KV, rep T, d): head = g rep + r
        scores = grouped.matmul(keys.transpose(-2, -1))  # (B, KV, rep T, S), 1/sqrt(d) folded
        if tokens > 1:  # a single new token sees every cached key
            mask = causal_mask(tokens, keys.size(2) - tokens).repeat(rep, 1)  # (rep T, S)
            scores = scores + mask
        probs = softmax(scores, dim=-1)  # (B, KV, rep T, S)
        context = probs.matmul(values)  # (B, KV, rep T, d)
        context = context.reshape(batch, heads, tokens, d).permute(0, 2, 1, 3)  # (B, T, H, d)
        return matmul(context.reshape(batch, tokens, heads * d), w["o_w"])  # (B, T, C)

    def _mlp(self, h: CrypTensor, w: dict[str, Weight]) -> CrypTensor:
        """down(silu(gate(h)) * up(h)); h (B, T, C) -> (B, T, C)."""
        ffn = self.config.intermediate_size
        gate_up = matmul(h, w["gu_w"])  # (B, T, 2F)
        gate, up = gate_up.narrow(-1, 0, ffn), gate_up.narrow(-1, ffn, ffn)  # (B, T, F) each
        return matmul(silu(gate, method=self.silu_method) * up, w["down_w"])  # (B, T, C)

    def forward(self, hidden: CrypTensor, cache: KVCache) -> CrypTensor:
        """Run every layer on secret (B, T, C) hidden states of T new tokens.

        The tokens sit at positions cache.length .. cache.length + T - 1 (public); their keys
        and values are appended to `cache` (whose length then grows by T).

        Returns:
            Secret (B, T, C) hidden states after the last layer (before the final norm).
        """
        if hidden.dim() != 3 or hidden.size(-1) != self.config.hidden_size:
            raise ValueError(
                f"hidden must be (B, T, {self.config.hidden_size}), got {tuple(hidden.size())}"
            )
        if len(cache.keys) != len(self.layers):
            raise ValueError(
                f"the cache has {len(cache.keys)} layers, the model {len(self.layers)}"
            )
        eps = self.config.rms_norm_eps
        x = hidden
        for i, w in enumerate(self.layers):
            x = x + self._attention(wide_rms_norm(x, eps=eps), w, i, cache)  # (B, T, C)
            x = x + self._mlp(wide_rms_norm(x, eps=eps), w)  # (B, T, C)
        cache.length += hidden.size(1)
        return x

    __call__ = forward

    def logits(self, hidden: CrypTensor) -> CrypTensor:
        """Secret (B, V) logits of the last position: final RMSNorm (folded) and LM head."""
        last = hidden.narrow(1, hidden.size(1) - 1, 1).squeeze(1)  # (B, C)
        return matmul(wide_rms_norm(last, eps=self.config.rms_norm_eps), self.head)  # (B, V)

    def token_shares(self, hidden: CrypTensor) -> CrypTensor:
        """The greedy next token of each sequence as a secret (2, B): row 0 the token id, row 1
        its logit (16 fractional bits). Nothing is revealed: a client outside the computation
        reconstructs it from both parties' shares and checks the logit (`logits_bound`)."""
        index, top = secure_argmax(self.logits(hidden))  # (B,) secret each
        return load().stack([index, top])

    def next_token(self, hidden: CrypTensor, *, client: int = 0) -> tuple[list[int], list[float]]:
        """Greedy next token of each sequence, revealed to `client` only, garbage-checked.

        Returns:
            On the client: the token ids and their logits; on other ranks: ([], []).

        Raises:
            GarbageOutput: on the client, a top logit beyond `logits_bound`.
        """
        crypten = load()
        token = self.token_shares(hidden)  # (2, B) secret
        encoded = token.reveal(dst=client)  # ring integers, client only
        comm = crypten.comm.get()
        bound = self.logits_bound
        if self.threat_model is ThreatModel.WEIGHTS_PRIVATE and client != self.owner:
            # the owner's bound, to the client alone (never broadcast: `__init__`)
            if comm.get_rank() == self.owner:
                comm.send(torch.tensor([bound], dtype=torch.float64), dst=client)
            elif comm.get_rank() == client:
                bound = float(comm.recv(torch.zeros(1, dtype=torch.float64), src=self.owner)[0])
        if comm.get_rank() != client:
            return [], []
        decoded = encoded.double() / token.encoder.scale  # (2, B)
        top_logits = check_output(decoded[1], bound)
        ids = decoded[0].round().long()
        if bool(((ids < 0) | (ids >= self.config.vocab_size)).any()):
            raise ValueError(f"secure argmax revealed an index out of range: {ids.tolist()}")
        return ids.tolist(), top_logits.tolist()

    def generate(
        self, input_ids: torch.Tensor, max_new_tokens: int, *, client: int = 0
    ) -> GenerationTrace:
        """Greedy generation of exactly `max_new_tokens` tokens for a (1, T) prompt.

        Every party calls it; only the `client` rank's `input_ids` are used, and only it gets
        the tokens. Each step after the prefill embeds the client's last token (see `embed`)
        and runs the layers on that one position against the secret KV cache. Per-step bytes
        and rounds are recorded when CrypTen's communicator counts them
        (`cfg.communicator.verbose`).
        """
        if input_ids.dim() != 2 or input_ids.size(0) != 1:
            raise ValueError(f"input_ids must be (1, T), got {tuple(input_ids.shape)}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        comm = load().comm.get()
        trace = GenerationTrace(threat_model=self.threat_model.value)
        cache = self.new_cache()
        step_ids = input_ids
        for _ in range(max_new_tokens):
            before = comm.get_communication_stats()
            start = time.perf_counter()
            hidden = self.forward(self.embed(step_ids, client=client), cache)
            tokens, top = self.next_token(hidden, client=client)
            trace.seconds.append(time.perf_counter() - start)
            after = comm.get_communication_stats()
            trace.bytes.append(int(after["bytes"] - before["bytes"]))
            trace.rounds.append(int(after["rounds"] - before["rounds"]))
            trace.tokens += tokens
            trace.top_logits += top
            step_ids = torch.tensor([tokens[-1:] or [0]])  # (1, 1): real on the client only
        return trace
