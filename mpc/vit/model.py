"""The MPCViT family in torch: a pre-LayerNorm ViT whose attention is chosen per head.

Ref:     W. Zeng et al., "MPCViT: Searching for Accurate and Efficient MPC-Friendly Vision
         Transformer with Heterogeneous Attention", ICCV 2023 (PKU-SEC-Lab/mpcvit, on CrypTen):
         each head uses softmax, ReLU-softmax or scaling attention; MPCViT+ also linearizes
         MLPs. The ViT itself is Dosovitskiy et al. (ICLR 2021), pre-LayerNorm, CLS token.
Method:  scores s = q k^T / sqrt(d) per head, (B, H, T, T). The head's attention weights are
           softmax:       softmax(s) over keys;
           relu_softmax:  relu(s) / (sum_keys relu(s) + `RELU_EPS`);
           scaling:       s / T (a linear map; no exponent, no comparison, no division).
         `RELU_EPS` = 1 is part of the definition: it keeps the denominator in [1, hi] so that
         the secure reciprocal (`mpc.approx.reciprocal`) has a public range; the network learns
         the score scale around it. The MLP of each block is fc2(gelu(fc1(x))), linearized
         (MPCViT+) fc2(fc1(x)), or fc2(relu(fc1(x))). The ReLU option is this repository's
         extension of MPCViT+'s search space (the paper chooses GeLU or linear): under MPC a
         ReLU is one comparison an element where PUMA's GeLU compares against three thresholds
         and evaluates polynomials (about 5x fewer bytes here), so it is the cheap non-linear
         middle ground between the two.
Search:  with `search=True` the model is a supernet: per-head logits `alpha_attention`
         (depth, heads, 3) and per-block logits `alpha_mlp` (depth, 3); a head's weights are the
         softmax(alpha)-weighted sum of the three variants' weights, an MLP output the weighted
         sum of its GeLU, linear and ReLU outputs (DARTS-style continuous relaxation).
         `mpc.vit.search` trains the logits with a latency term and discretizes them with
         `Architecture.argmax`.
"""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "RELU_EPS",
    "Architecture",
    "AttentionKind",
    "MLPKind",
    "MPCViT",
    "ViTConfig",
    "attention_weights",
    "patchify",
]

RELU_EPS = 1.0  # relu_softmax denominator offset; see the module docstring


class AttentionKind(enum.Enum):
    """How one head turns its scores into attention weights (module docstring)."""

    SOFTMAX = "softmax"
    RELU_SOFTMAX = "relu_softmax"
    SCALING = "scaling"


class MLPKind(enum.Enum):
    """A block's MLP activation: PUMA's GeLU under MPC, none (MPCViT+ linearization), or ReLU
    (one secure comparison an element; an extension of the paper's search space)."""

    GELU = "gelu"
    LINEAR = "linear"
    RELU = "relu"


_MLP_ACTIVATIONS = {
    MLPKind.GELU: nn.functional.gelu,
    MLPKind.LINEAR: lambda hidden: hidden,
    MLPKind.RELU: nn.functional.relu,
}


ATTENTION_KINDS = tuple(AttentionKind)  # index order of `alpha_attention`'s last axis
MLP_KINDS = tuple(MLPKind)  # index order of `alpha_mlp`'s last axis


@dataclass(frozen=True)
class ViTConfig:
    """Shape of a ViT; every field is public (it is revealed by running the model in MPC)."""

    image_size: int = 28  # square images, pixels a side
    patch_size: int = 7  # square non-overlapping patches; image_size must be a multiple
    channels: int = 1  # input channels
    num_classes: int = 10
    dim: int = 64  # token width C
    depth: int = 4  # transformer blocks
    heads: int = 4  # attention heads per block; dim must be a multiple
    mlp_ratio: int = 4  # MLP hidden width F = mlp_ratio * dim
    ln_eps: float = 1e-6  # LayerNorm epsilon (below the 2^-16 fixed-point ulp under MPC)

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "channels", "num_classes", "dim", "depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.heads < 1 or self.mlp_ratio < 1:
            raise ValueError("heads and mlp_ratio must be >= 1")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not a multiple of heads {self.heads}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def tokens(self) -> int:
        """T: patches plus the CLS token."""
        return self.num_patches + 1

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def hidden(self) -> int:
        """F: the MLP hidden width."""
        return self.mlp_ratio * self.dim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ViTConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown ViTConfig fields {sorted(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class Architecture:
    """A discrete choice: one `AttentionKind` per head per block, one `MLPKind` per block."""

    attention: tuple[tuple[AttentionKind, ...], ...]  # (depth, heads)
    mlp: tuple[MLPKind, ...] = field(default=())  # (depth,); () means all GeLU

    @classmethod
    def uniform(
        cls, depth: int, heads: int, kind: AttentionKind, mlp: MLPKind = MLPKind.GELU
    ) -> Architecture:
        return cls(tuple((kind,) * heads for _ in range(depth)), (mlp,) * depth)

    @classmethod
    def argmax(cls, alpha_attention: torch.Tensor, alpha_mlp: torch.Tensor) -> Architecture:
        """Discretize search logits: the most likely variant of every head and MLP."""
        attention = tuple(
            tuple(ATTENTION_KINDS[int(i)] for i in row) for row in alpha_attention.argmax(-1)
        )
        return cls(attention, tuple(MLP_KINDS[int(i)] for i in alpha_mlp.argmax(-1)))

    def mlp_kinds(self) -> tuple[MLPKind, ...]:
        return self.mlp or (MLPKind.GELU,) * len(self.attention)

    def check(self, config: ViTConfig) -> None:
        """Raise ValueError unless this architecture fits `config`'s depth and heads."""
        if len(self.attention) != config.depth or any(
            len(row) != config.heads for row in self.attention
        ):
            raise ValueError(
                f"architecture is {len(self.attention)} blocks of "
                f"{[len(r) for r in self.attention]} heads; the config has {config.depth} of "
                f"{config.heads}"
            )
        if len(self.mlp_kinds()) != config.depth:
            raise ValueError(f"architecture has {len(self.mlp)} MLP kinds for depth {config.depth}")

    def counts(self) -> dict[str, int]:
        """How many heads of each attention kind and blocks of each MLP kind."""
        out = {kind.value: 0 for kind in AttentionKind}
        for row in self.attention:
            for kind in row:
                out[kind.value] += 1
        for mlp in MLPKind:
            out[f"mlp_{mlp.value}"] = sum(k is mlp for k in self.mlp_kinds())
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "attention": [[k.value for k in row] for row in self.attention],
            "mlp": [k.value for k in self.mlp_kinds()],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Architecture:
        return cls(
            tuple(tuple(AttentionKind(k) for k in row) for row in data["attention"]),
            tuple(MLPKind(k) for k in data["mlp"]),
        )


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, ch, H, W) -> (B, N, ch p p): non-overlapping patches, row-major (a public reshape)."""
    if images.dim() != 4:
        raise ValueError(f"images must be (B, channels, H, W), got shape {tuple(images.shape)}")
    batch, channels, height, width = images.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"image {height}x{width} is not a multiple of patch {patch_size}")
    x = images.reshape(
        batch, channels, height // patch_size, patch_size, width // patch_size, patch_size
    )  # (B, ch, H/p, p, W/p, p)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, H/p, W/p, ch, p, p)
    return x.reshape(batch, -1, channels * patch_size * patch_size)  # (B, N, ch p p)


def attention_weights(scores: torch.Tensor, kind: AttentionKind) -> torch.Tensor:
    """The torch definition of each variant on scores (..., T, T) already divided by sqrt(d)."""
    if kind is AttentionKind.SOFTMAX:
        return scores.softmax(dim=-1)
    if kind is AttentionKind.RELU_SOFTMAX:
        positive = scores.relu()
        return positive / (positive.sum(dim=-1, keepdim=True) + RELU_EPS)
    return scores / scores.shape[-1]


class _Attention(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.qkv = nn.Linear(config.dim, 3 * config.dim)
        self.proj = nn.Linear(config.dim, config.dim)

    def forward(self, x: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
        """x (B, T, C), mix (H, 3) variant weights per head (one-hot when discrete)."""
        batch, tokens, channels = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.heads, channels // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, H, T, d) each
        scores = q @ k.transpose(-2, -1) / math.sqrt(channels // self.heads)  # (B, H, T, T)
        weights = torch.zeros_like(scores)
        for index, kind in enumerate(ATTENTION_KINDS):
            share = mix[:, index]  # (H,)
            if bool((share != 0).any()):
                weights = weights + share[None, :, None, None] * attention_weights(scores, kind)
        context = (weights @ v).transpose(1, 2).reshape(batch, tokens, channels)  # (B, T, C)
        return self.proj(context)


class _Block(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.dim, eps=config.ln_eps)
        self.attention = _Attention(config)
        self.norm2 = nn.LayerNorm(config.dim, eps=config.ln_eps)
        self.fc1 = nn.Linear(config.dim, config.hidden)
        self.fc2 = nn.Linear(config.hidden, config.dim)

    def forward(self, x: torch.Tensor, mix: torch.Tensor, mlp_mix: torch.Tensor) -> torch.Tensor:
        """x (B, T, C); mix (H, 3); mlp_mix (len(MLP_KINDS),) weights of the MLP kinds."""
        x = x + self.attention(self.norm1(x), mix)
        hidden = self.fc1(self.norm2(x))  # (B, T, F)
        activated = sum(
            weight * _MLP_ACTIVATIONS[kind](hidden)
            for weight, kind in zip(mlp_mix, MLP_KINDS, strict=True)
            if weight.requires_grad or float(weight) != 0.0  # a discrete model: one kind
        )
        return x + self.fc2(activated)  # (B, T, C)


class MPCViT(nn.Module):
    """A ViT with per-head attention variants; a supernet when built with `search=True`.

    Args:
        config: the shape.
        architecture: the discrete variant choice (default: all softmax, all GeLU: the plain
            ViT teacher). Ignored while `search` is on.
        search: hold learnable `alpha_attention` (depth, heads, 3) and `alpha_mlp` (depth, 3)
            and mix the variants (module docstring).
        search_mlp: with `search`, also search the MLP kinds (MPCViT+); otherwise the MLPs
            keep `architecture`'s kinds (MPCViT: attention only).
    """

    def __init__(
        self,
        config: ViTConfig,
        architecture: Architecture | None = None,
        *,
        search: bool = False,
        search_mlp: bool = True,
    ) -> None:
        super().__init__()
        self.config = config
        self.architecture = architecture or Architecture.uniform(
            config.depth, config.heads, AttentionKind.SOFTMAX
        )
        self.architecture.check(config)
        patch_dim = config.channels * config.patch_size**2
        self.patch_embed = nn.Linear(patch_dim, config.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.pos_embed = nn.Parameter(torch.randn(1, config.tokens, config.dim) * 0.02)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim, eps=config.ln_eps)
        self.head = nn.Linear(config.dim, config.num_classes)
        self.search = search
        self.search_mlp = search and search_mlp
        if search:
            shape = (config.depth, config.heads, len(ATTENTION_KINDS))
            self.alpha_attention = nn.Parameter(torch.zeros(shape))
        if self.search_mlp:
            self.alpha_mlp = nn.Parameter(torch.zeros(config.depth, len(MLP_KINDS)))

    def architecture_parameters(self) -> list[nn.Parameter]:
        if not self.search:
            return []
        return [self.alpha_attention, self.alpha_mlp] if self.search_mlp else [self.alpha_attention]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.architecture_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def mixing(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Variant weights (depth, heads, 3) and (depth, MLP kinds); one-hot unless searching."""
        attention = torch.zeros(self.config.depth, self.config.heads, len(ATTENTION_KINDS))
        for layer, row in enumerate(self.architecture.attention):
            for head, kind in enumerate(row):
                attention[layer, head, ATTENTION_KINDS.index(kind)] = 1.0
        mlp = torch.zeros(self.config.depth, len(MLP_KINDS))
        for layer, mlp_kind in enumerate(self.architecture.mlp_kinds()):
            mlp[layer, MLP_KINDS.index(mlp_kind)] = 1.0
        if self.search:
            attention = self.alpha_attention.softmax(-1)
        if self.search_mlp:
            mlp = self.alpha_mlp.softmax(-1)
        return attention, mlp

    def discretized(self) -> MPCViT:
        """A discrete copy: the argmax architecture, these weights, no search logits."""
        if not self.search:
            raise ValueError("discretized() needs a supernet (search=True)")
        attention, mlp = self.mixing()
        arch = Architecture.argmax(attention.detach(), mlp.detach())
        model = MPCViT(self.config, arch)
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("alpha_")}
        model.load_state_dict(state)
        return model

    def check_images(self, images: torch.Tensor) -> None:
        """Raise ValueError unless `images` is float (B, channels, size, size), B >= 1."""
        c = self.config
        want = (c.channels, c.image_size, c.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != want or images.shape[0] < 1:
            raise ValueError(
                f"images must be (B, {want[0]}, {want[1]}, {want[2]}), got {tuple(images.shape)}"
            )
        if not images.is_floating_point():
            raise TypeError(f"images must be a float tensor, got {images.dtype}")
        if not bool(torch.isfinite(images).all()):
            raise ValueError("images contain NaN or infinite values")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, channels, H, W) float -> logits (B, num_classes)."""
        self.check_images(images)
        x = self.patch_embed(patchify(images, self.config.patch_size))  # (B, N, C)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, C)
        x = torch.cat([cls, x], dim=1) + self.pos_embed  # (B, T, C)
        attention_mix, mlp_mix = self.mixing()
        for layer, block in enumerate(self.blocks):
            x = block(x, attention_mix[layer], mlp_mix[layer])
        return self.head(self.norm(x[:, 0]))  # (B, classes)
