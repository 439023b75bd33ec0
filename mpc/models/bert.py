"""A BERT encoder (all-MiniLM-L6-v2 shape) forward on CrypTen secret shares, the PUMA way.

Ref:     Y. Dong et al., "PUMA: Secure Inference of LLaMA-7B in Five Minutes", arXiv 2307.12533:
         section 4 (GeLU, softmax, LayerNorm approximations: `mpc.approx`; embedding as a
         secret one-hot times the embedding table), section 5 (BERT experiments). The layer is
         HF transformers' `BertLayer` (post-LayerNorm): attention.self.{query,key,value},
         attention.output.{dense,LayerNorm}, intermediate.dense (GeLU), output.{dense,LayerNorm}.
Method:  per layer, on secret x (B, T, C): q, k, v = x W + b; scores = q k^T per head (1/sqrt(d)
         is folded into W_q, b_q by the weights' holder, saving one truncation); + a public
         additive mask; `mpc.approx.softmax`; probs v; output dense; residual;
         `mpc.approx.layer_norm`; FFN dense, `mpc.approx.gelu`, dense; residual; layer_norm.
         `secure_embed`: one_hot (B, T, V) shared at scale 1 (integers) times the table is
         exact, needs no truncation, and hides the token ids; + position rows 0..T-1 (public
         positions) + token-type rows (public segment ids) then LayerNorm.
Threat:  semi-honest parties (CrypTen's 2-party additive sharing over Z_2^64, 16 fractional
         bits); a corrupted party follows the protocol. CrypTen's TTP (or, without it, party 0
         as TFP) deals the Beaver triples and comparison randomness: a TRUSTED DEALER, which is an
         assumption, not a property. `ThreatModel` says who may see the weights.
Leaks:   shapes (batch B, sequence length T, hidden size, number of layers and heads), the
         attention mask (which positions are padding: public metadata, and so is each sentence's
         length), segment ids given to `secure_embed`, and, in INPUT_PRIVATE, the weights
         themselves to every compute party. Not leaked: the hidden states and token ids.
Failure: two-party CrypTen truncated each share locally (SecureML), which is off by ~2^48
         whenever the shares wrap (probability |v| / 2^63 per element): 2 of 13 forwards at 16
         tokens were garbage. `mpc.backends.crypten_trunc` replaces it with an exact
         dealer-assisted truncation (within 2 ulp for every |v| < 2^62), so no forward fails
         that way any more; `check_output` still checks every revealed output against the
         bound the last LayerNorm imposes (`SecureBertEncoder.output_bound`) and raises
         `GarbageOutput` beyond it (a ring overflow of the computation itself).
Cost:    per layer (B sequences of T tokens, C = 384, H = 12 heads, F = 1536): the scores
         (B H, T, d) x (d, T) and probs x v products need Beaver triples in both threat models.
         The 4 weight matmuls (QKV fused, output, FFN in and out) are local in INPUT_PRIVATE
         (plus one truncation); in WEIGHTS_PRIVATE each opens only the activation's mask
         (`mpc.backends.crypten_weights`: the weight's mask is opened once, when the encoder
         is built). Comparisons: softmax B H T (T - 1) in its max tree + B H T^2 for the exp
         threshold; GeLU 3 B T F in one batched comparison (`mpc.backends.crypten_compare`);
         LayerNorm 24 B T per norm (rsqrt buckets), two norms. Measured (bench/mpc_bert.py, 1
         sentence of 32 tokens, 2 parties + TTP, party 0's counters, sent + received, dealer
         included): INPUT_PRIVATE 273 MB, WEIGHTS_PRIVATE 291 MB; docs/benchmarks.md has the
         rest. GeLU's comparisons and polynomial, then softmax's exp, carry most of the bytes.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mpc.approx import gelu, layer_norm, softmax
from mpc.approx._mpc import CrypTensor
from mpc.backends.crypten import load
from mpc.backends.crypten_weights import matmul, share_weights
from mpc.errors import GarbageOutput

__all__ = [
    "PUMA",
    "Approximations",
    "DEFAULT_EXP_ITERATIONS",
    "LAYER_KEYS",
    "MASK_VALUE",
    "SecureBertEncoder",
    "ThreatModel",
    "additive_mask",
    "check_output",
    "crypten_default",
    "layer_norm_bound",
    "mean_pool",
    "secure_embed",
    "share_one_hot",
]

# softmax's exp: (1 + x / 2^6)^(2^6), `mpc.approx.exp`'s default. n = 4 saved two rounds per
# layer and was as accurate at 16 tokens, but on 200 real reviews filling 128 tokens it left 3
# forwards at cosine 0.99890-0.99893 (below 0.999); n = 6 gave 0.99928-0.99952 on the same
# inputs (bench/mpc_garbage.py, 2026-12-06).
DEFAULT_EXP_ITERATIONS = 6

# Added to the scores of padding keys (as the original BERT did). exp then sees x - max <= -14
# there (an exact 0); the ring holds (1e4)^2 at 32 fractional bits with room to spare.
MASK_VALUE = -1e4

# The tensors each layer needs, as named in HF's `BertLayer.state_dict()`.
LAYER_KEYS = (
    "attention.self.query.weight",
    "attention.self.query.bias",
    "attention.self.key.weight",
    "attention.self.key.bias",
    "attention.self.value.weight",
    "attention.self.value.bias",
    "attention.output.dense.weight",
    "attention.output.dense.bias",
    "attention.output.LayerNorm.weight",
    "attention.output.LayerNorm.bias",
    "intermediate.dense.weight",
    "intermediate.dense.bias",
    "output.dense.weight",
    "output.dense.bias",
    "output.LayerNorm.weight",
    "output.LayerNorm.bias",
)

Weight = Any  # a public torch.Tensor (INPUT_PRIVATE) or a secret MPCTensor (WEIGHTS_PRIVATE)


class ThreatModel(enum.Enum):
    """Who may see the model weights. The hidden states are secret in both."""

    # The client's activations are secret; the weights are public to the compute parties (e.g.
    # an open model): weight matmuls are local (plaintext weight x secret activation).
    INPUT_PRIVATE = "input_private"
    # PUMA: the weights are secret-shared too, input by their owner (`owner` rank); every
    # linear layer is a secret x secret matmul with a Beaver triple.
    WEIGHTS_PRIVATE = "weights_private"


def additive_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) public 0/1 mask -> (B, 1, 1, T) float: 0 where attended, `MASK_VALUE` at padding."""
    keep = attention_mask[:, None, None, :].to(torch.float32)  # (B, 1, 1, T)
    return (1.0 - keep) * MASK_VALUE  # (B, 1, 1, T)


def _prepare_layer(state: Mapping[str, torch.Tensor], num_heads: int) -> dict[str, torch.Tensor]:
    """Holder-side plaintext preprocessing: weights as (in, out), 1/sqrt(d) folded into query.

    Returns float32 tensors keyed qkv_w (C, 3C), qkv_b (3C,), out_w (C, C), out_b, ln1_w, ln1_b,
    ffn_in_w (C, F), ffn_in_b (F,), ffn_out_w (F, C), ffn_out_b, ln2_w, ln2_b.
    """
    missing = [key for key in LAYER_KEYS if key not in state]
    if missing:
        raise KeyError(f"layer state is missing {missing}")
    t = {key: state[key].detach().to(torch.float32) for key in LAYER_KEYS}
    hidden = t["attention.self.query.weight"].shape[0]
    if hidden % num_heads:
        raise ValueError(f"hidden size {hidden} is not divisible by {num_heads} heads")
    scale = 1.0 / math.sqrt(hidden // num_heads)
    qkv_w = torch.cat(
        [
            t["attention.self.query.weight"] * scale,
            t["attention.self.key.weight"],
            t["attention.self.value.weight"],
        ]
    )  # (3C, C)
    qkv_b = torch.cat(
        [
            t["attention.self.query.bias"] * scale,
            t["attention.self.key.bias"],
            t["attention.self.value.bias"],
        ]
    )  # (3C,)
    return {
        "qkv_w": qkv_w.T.contiguous(),  # (C, 3C)
        "qkv_b": qkv_b,  # (3C,)
        "out_w": t["attention.output.dense.weight"].T.contiguous(),  # (C, C)
        "out_b": t["attention.output.dense.bias"],  # (C,)
        "ln1_w": t["attention.output.LayerNorm.weight"],  # (C,)
        "ln1_b": t["attention.output.LayerNorm.bias"],  # (C,)
        "ffn_in_w": t["intermediate.dense.weight"].T.contiguous(),  # (C, F)
        "ffn_in_b": t["intermediate.dense.bias"],  # (F,)
        "ffn_out_w": t["output.dense.weight"].T.contiguous(),  # (F, C)
        "ffn_out_b": t["output.dense.bias"],  # (C,)
        "ln2_w": t["output.LayerNorm.weight"],  # (C,)
        "ln2_b": t["output.LayerNorm.bias"],  # (C,)
    }


def _linear(x: CrypTensor, weight: Weight, bias: Weight) -> CrypTensor:
    """x W + b for secret x (..., in) and W (in, out): local if W is public; if W is secret,
    one opening of x's mask (W's was opened once, when the encoder was built)."""
    return matmul(x, weight) + bias  # (..., out)


@dataclass(frozen=True, slots=True)
class Approximations:
    """The non-linear functions an encoder runs on shares (one suite per encoder).

    `PUMA` (the default) is `mpc.approx`: accurate over the ranges MiniLM produces.
    `crypten_default()` is CrypTen's own (softmax with 8-iteration exp, erf Taylor GeLU,
    3-iteration inverse square root): kept as the benchmarks' reference, not for use; it is
    inaccurate on real transformers (see the issue's measurements and docs/benchmarks.md).
    """

    name: str
    softmax: Callable[[CrypTensor, int], CrypTensor]  # (scores, exp_iterations) -> probs
    gelu: Callable[[CrypTensor], CrypTensor]
    layer_norm: Callable[[CrypTensor, Weight, Weight, float], CrypTensor]  # x, w, b, eps


PUMA = Approximations(
    name="puma",
    softmax=lambda x, n: softmax(x, dim=-1, exp_iterations=n),
    gelu=gelu,
    layer_norm=lambda x, w, b, eps: layer_norm(x, w, b, eps=eps),
)


def _crypten_layer_norm(x: CrypTensor, weight: Weight, bias: Weight, eps: float) -> CrypTensor:
    d = x - x.mean(dim=-1, keepdim=True)
    variance = (d * d).mean(dim=-1, keepdim=True)
    return d * (variance + eps).inv_sqrt() * weight + bias


def _crypten_gelu(x: CrypTensor) -> CrypTensor:
    return x * ((x * (1.0 / math.sqrt(2.0))).erf() + 1.0) * 0.5


def crypten_default() -> Approximations:
    """CrypTen 0.4.1's built-in approximations, as `crypten.nn.from_pytorch` would use them."""
    return Approximations(
        name="crypten-default",
        softmax=lambda x, _n: x.softmax(-1),
        gelu=_crypten_gelu,
        layer_norm=_crypten_layer_norm,
    )


# Weight matrices: in WEIGHTS_PRIVATE their Beaver masks are opened once (crypten_weights).
_MATRICES = ("qkv_w", "out_w", "ffn_in_w", "ffn_out_w")


class SecureBertEncoder:
    """The encoder layers of a BERT on secret hidden states (post-embedding, pre-pooling).

    Every party builds it with the same shapes. In WEIGHTS_PRIVATE only the `owner` rank's
    tensor values are used (they are secret-shared from it); the other ranks may pass tensors
    of the right shapes with any values (e.g. `torch.zeros_like`).
    """

    def __init__(
        self,
        layers: Sequence[Mapping[str, torch.Tensor]],
        *,
        num_heads: int = 12,
        threat_model: ThreatModel = ThreatModel.INPUT_PRIVATE,
        eps: float = 1e-12,
        owner: int = 0,
        exp_iterations: int = DEFAULT_EXP_ITERATIONS,
        approximations: Approximations = PUMA,
    ) -> None:
        """Prepare (and in WEIGHTS_PRIVATE, secret-share) the weights of each layer.

        Args:
            layers: one state dict per layer, keyed as `BertLayer.state_dict()` (`LAYER_KEYS`).
            num_heads: attention heads (12 for MiniLM-L6 and BERT-base).
            threat_model: whether the weights are public to the parties or secret-shared.
            eps: LayerNorm epsilon (BERT's 1e-12 rounds to 0 in 16-bit fixed point).
            owner: rank that inputs the weights in WEIGHTS_PRIVATE.
            approximations: the non-linear functions (`PUMA` unless benchmarking).
            exp_iterations: n of softmax's exp, see `mpc.approx.exp` (accuracy vs the
                two-party truncation failure rate: see the module docstring).

        Raises:
            KeyError: a layer lacks one of `LAYER_KEYS`.
            ValueError: no layers, or a hidden size not divisible by `num_heads`.
        """
        if not layers:
            raise ValueError("need at least one layer")
        self.num_heads = num_heads
        self.threat_model = threat_model
        self.eps = eps
        self.exp_iterations = exp_iterations
        self.approximations = approximations
        prepared = [_prepare_layer(state, num_heads) for state in layers]
        last = layers[-1]
        self.output_bound = layer_norm_bound(
            last["output.LayerNorm.weight"], last["output.LayerNorm.bias"]
        )
        if threat_model is ThreatModel.WEIGHTS_PRIVATE:
            self.layers: list[dict[str, Weight]] = [
                share_weights(p, _MATRICES, owner) for p in prepared
            ]
        else:
            self.layers = list(prepared)

    @classmethod
    def from_modules(cls, modules: Iterable[torch.nn.Module], **kwargs: Any) -> SecureBertEncoder:
        """From HF `BertLayer` modules (e.g. `BertModel.encoder.layer`); kwargs go to __init__."""
        return cls([module.state_dict() for module in modules], **kwargs)

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, torch.Tensor], *, prefix: str = "encoder.layer.", **kwargs: Any
    ) -> SecureBertEncoder:
        """From a whole-model state dict (`BertModel.state_dict()` or its safetensors file)."""
        indices = sorted(
            {int(key[len(prefix) :].split(".", 1)[0]) for key in state if key.startswith(prefix)}
        )
        if indices != list(range(len(indices))):
            raise KeyError(f"layers under {prefix!r} are not numbered 0..n-1: {indices}")
        layers = []
        for i in indices:
            head = f"{prefix}{i}."
            layers.append({k[len(head) :]: v for k, v in state.items() if k.startswith(head)})
        return cls(layers, **kwargs)

    def _attention(self, x: CrypTensor, mask: torch.Tensor, w: dict[str, Weight]) -> CrypTensor:
        """Multi-head self-attention, output projection included. x (B, T, C) -> (B, T, C)."""
        batch, tokens, channels = x.size()
        heads = self.num_heads
        head_dim = channels // heads
        qkv = _linear(x, w["qkv_w"], w["qkv_b"])  # (B, T, 3C), q pre-scaled by 1/sqrt(d)
        qkv = qkv.view(batch, tokens, 3, heads, head_dim)  # (B, T, 3, H, d)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, H, T, d)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, T, d) each
        scores = q.matmul(k.transpose(-2, -1))  # (B, H, T, T) secret x secret
        scores = scores + mask  # (B, H, T, T), public (B, 1, 1, T) broadcast
        probs = self.approximations.softmax(scores, self.exp_iterations)  # (B, H, T, T)
        context = probs.matmul(v)  # (B, H, T, d) secret x secret
        context = context.transpose(1, 2).reshape(batch, tokens, channels)  # (B, T, C)
        return _linear(context, w["out_w"], w["out_b"])  # (B, T, C)

    def _layer(self, x: CrypTensor, mask: torch.Tensor, w: dict[str, Weight]) -> CrypTensor:
        """One post-LayerNorm BERT layer. x (B, T, C) -> (B, T, C)."""
        attended = self._attention(x, mask, w)  # (B, T, C)
        fn = self.approximations
        x = fn.layer_norm(x + attended, w["ln1_w"], w["ln1_b"], self.eps)  # (B, T, C)
        hidden = fn.gelu(_linear(x, w["ffn_in_w"], w["ffn_in_b"]))  # (B, T, F)
        out = _linear(hidden, w["ffn_out_w"], w["ffn_out_b"])  # (B, T, C)
        return fn.layer_norm(x + out, w["ln2_w"], w["ln2_b"], self.eps)  # (B, T, C)

    def forward(self, hidden: CrypTensor, attention_mask: torch.Tensor) -> CrypTensor:
        """Run every layer on secret hidden states.

        Args:
            hidden: secret `MPCTensor` (B, T, C), the embedding layer's output.
            attention_mask: PUBLIC (B, T) 0/1 tensor, 1 for real tokens. Which positions are
                padding (each sequence's length) is revealed to every party by design.

        Returns:
            Secret `MPCTensor` (B, T, C), the last layer's hidden states (padding rows
            included; pool them away with the same public mask).
        """
        if tuple(attention_mask.shape) != tuple(hidden.size()[:2]):
            raise ValueError(
                f"attention_mask {tuple(attention_mask.shape)} does not match hidden states "
                f"{tuple(hidden.size())}"
            )
        mask = additive_mask(attention_mask)  # (B, 1, 1, T) public
        x = hidden  # (B, T, C)
        for w in self.layers:
            x = self._layer(x, mask, w)  # (B, T, C)
        return x

    __call__ = forward


def mean_pool(hidden: CrypTensor, attention_mask: torch.Tensor) -> CrypTensor:
    """Mean of each sequence's secret token states under a PUBLIC (B, T) 0/1 mask -> (B, C).

    sentence-transformers' pooling for MiniLM; the L2 normalization that follows it is left to
    whoever reconstructs the output (the client), since it needs no secret.
    """
    weights = attention_mask.to(torch.float32)
    weights = weights / weights.sum(1, keepdim=True).clamp(min=1.0)  # (B, T) public
    return (hidden * weights[:, :, None]).sum(1)  # (B, C)


def layer_norm_bound(weight: torch.Tensor, bias: torch.Tensor) -> float:
    """The largest |value| a LayerNorm with these parameters can output (over C features).

    A normalized vector has zero mean and unit variance over C entries, so no entry exceeds
    sqrt(C - 1) in magnitude; the affine step scales by at most max|w| and shifts by max|b|.
    In WEIGHTS_PRIVATE the weights' owner computes it (it reveals one number about them).
    """
    features = weight.numel()
    return float(weight.abs().max()) * math.sqrt(max(features - 1, 1)) + float(bias.abs().max())


# The approximations (rsqrt, reciprocal) may overshoot the exact bound a little.
_BOUND_SLACK = 1.05
_BOUND_ATOL = 0.05


def check_output(values: torch.Tensor, bound: float) -> torch.Tensor:
    """Return `values` if every one is finite and within `bound` (with slack), else raise.

    Raises:
        GarbageOutput: non-finite values or values beyond the bound: the secure computation
            overflowed and this output is wrong; or a bound that is not a positive finite
            number (nothing could be checked against it).
    """
    if not (math.isfinite(bound) and bound > 0):  # `x > nan` is False: no check at all
        raise GarbageOutput(f"no usable output bound ({bound!r}): the output cannot be checked")
    if not bool(torch.isfinite(values).all()):
        raise GarbageOutput("the revealed output has non-finite values")
    worst = float(values.abs().max()) if values.numel() else 0.0
    if worst > bound * _BOUND_SLACK + _BOUND_ATOL:
        raise GarbageOutput(
            f"the revealed output reaches {worst:.4g}, beyond the model's bound {bound:.4g}: "
            "the secure computation overflowed; discard it"
        )
    return values


def share_one_hot(input_ids: torch.Tensor, vocab_size: int, *, src: int = 0) -> CrypTensor:
    """The client's (B, T) token ids as a secret one-hot (B, T, V) at scale 1 (exact integers).

    Only `src`'s ids are used; other ranks pass a (B, T) tensor of the same shape.
    """
    crypten = load()
    one_hot = torch.nn.functional.one_hot(input_ids.long(), vocab_size)  # (B, T, V) int64
    return crypten.cryptensor(one_hot.to(torch.float32), src=src, precision=0)  # (B, T, V)


def _fixed_point_encoder() -> Any:
    return load().encoder.FixedPointEncoder()  # CrypTen's configured 16 fractional bits


def secure_embed(
    one_hot: CrypTensor,
    word_table: Weight,
    position_table: Weight,
    token_type_table: Weight,
    ln_weight: Weight,
    ln_bias: Weight,
    *,
    token_type_ids: torch.Tensor | None = None,
    eps: float = 1e-12,
) -> CrypTensor:
    """BERT's embedding layer on a secret one-hot: words + positions + token types, LayerNorm.

    The word lookup is one_hot @ word_table. With a scale-1 one-hot (`share_one_hot`) the
    product is exact and needs no truncation: a local matmul against a public table (encoded
    as 16-bit fixed-point integers here), or one Beaver matmul against a secret table.

    Args:
        one_hot: secret (B, T, V) one-hot at encoder scale 1.
        word_table: (V, C) public tensor or secret `MPCTensor`.
        position_table: (P, C), P >= T; rows 0..T-1 are used (positions are public).
        token_type_table: (K, C).
        ln_weight: (C,) LayerNorm weight.
        ln_bias: (C,) LayerNorm bias.
        token_type_ids: PUBLIC (B, T) segment ids; None means all 0 (one segment).
        eps: LayerNorm epsilon.

    Returns:
        Secret (B, T, C) hidden states entering layer 0.

    Raises:
        ValueError: `one_hot` is not at scale 1, or T exceeds the position table.
    """
    if one_hot.encoder.scale != 1:
        raise ValueError(
            f"one_hot must be shared at scale 1 (precision=0), not {one_hot.encoder.scale}"
        )
    batch, tokens, _ = one_hot.size()
    if tokens > position_table.size(0):
        raise ValueError(f"{tokens} tokens exceed {position_table.size(0)} positions")
    if isinstance(word_table, torch.Tensor):
        encoder = _fixed_point_encoder()
        words = one_hot.matmul(encoder.encode(word_table))  # (B, T, C) ring ints, scale 1
        words.encoder = encoder  # (B, T, C) reinterpreted as 16-bit fixed point, exact
    else:
        words = one_hot.matmul(word_table)  # (B, T, C) takes the table's scale, no truncation
    if token_type_ids is None:
        token_type_ids = torch.zeros(batch, tokens, dtype=torch.long)  # (B, T)
    positions = position_table[:tokens]  # (T, C), broadcast over B
    segments = token_type_table[token_type_ids.long()]  # (B, T, C)
    x = words + positions + segments  # (B, T, C)
    return layer_norm(x, ln_weight, ln_bias, eps=eps)  # (B, T, C)
