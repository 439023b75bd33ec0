"""MPC classifiers a node hosts: trained MPCViT checkpoints run on secret shares.

A node started with `--mpc-classifier NAME=CHECKPOINT` (or `mpc_classifiers = ["NAME=PATH"]`
in its TOML) loads the checkpoint written by `mpc.vit.checkpoint.save` (`PATH.json` +
`PATH.safetensors`, no pickle), advertises NAME in its record's `mpc_models`, describes it to
clients (`MPCSession.Describe`: image shape, patch size, input shape, architecture, digest) and
runs it as a party of `privacy="mpc"` classification sessions (`decentralized.mpc_worker`).

Threat model: `input_private` only. The parties know the model's weights (the checkpoint is the
node operator's); the client's images stay secret-shared; the logits come back as shares that
only the client adds up.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from decentralized.errors import InvalidRequest
from decentralized.v1 import mpc_pb2

KIND = "vit-classifier"
THREAT_MODELS = ("input_private",)


@dataclass(frozen=True, slots=True)
class HostedClassifier:
    """A checkpoint a node serves under MPC, with what clients need to prepare inputs."""

    name: str
    path: Path  # checkpoint path without suffix
    image_shape: tuple[int, int, int]  # channels, height, width
    patch_size: int
    input_shape: tuple[int, int]  # tokens (CLS slot + patches), features per token
    num_classes: int
    architecture: tuple[str, ...]  # one line per block
    digest: str

    @classmethod
    def load(cls, name: str, path: Path) -> HostedClassifier:
        """Read and check the checkpoint (`mpc.vit.checkpoint.CheckpointError` if invalid)."""
        from mpc.vit import checkpoint

        model, _ = checkpoint.load(path)
        config = model.config
        arch = model.architecture
        blocks = tuple(
            ", ".join(kind.value for kind in heads) + f" | {mlp.value}"
            for heads, mlp in zip(arch.attention, arch.mlp_kinds(), strict=True)
        )
        digest = hashlib.sha256()
        for suffix in (".json", ".safetensors"):
            digest.update(Path(f"{path}{suffix}").read_bytes())
        return cls(
            name=name,
            path=Path(path),
            image_shape=(config.channels, config.image_size, config.image_size),
            patch_size=config.patch_size,
            input_shape=(config.tokens, config.channels * config.patch_size**2),
            num_classes=config.num_classes,
            architecture=blocks,
            digest=digest.hexdigest(),
        )

    def describe(self) -> mpc_pb2.ModelDescription:
        return mpc_pb2.ModelDescription(
            model=self.name,
            kind=KIND,
            image_shape=list(self.image_shape),
            patch_size=self.patch_size,
            input_shape=list(self.input_shape),
            num_classes=self.num_classes,
            architecture=list(self.architecture),
            digest=self.digest,
            threat_models=list(THREAT_MODELS),
        )

    def check_input_shape(self, shape: list[int], max_batch: int) -> tuple[int, int, int]:
        """The (B, T, P) a session declares, or InvalidRequest."""
        if len(shape) != 3 or not 1 <= shape[0] <= max_batch:
            raise InvalidRequest(
                f"{self.name}: input_shape must be (batch <= {max_batch}, "
                f"{self.input_shape[0]}, {self.input_shape[1]}), got {list(shape)}"
            )
        if tuple(shape[1:]) != self.input_shape:
            raise InvalidRequest(
                f"{self.name} takes (B, {self.input_shape[0]}, {self.input_shape[1]}) patches, "
                f"got {list(shape)}"
            )
        return (shape[0], shape[1], shape[2])
