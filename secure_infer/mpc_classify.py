"""`client.classify(model, images, privacy="mpc")`: an MPC classifier (MPCViT) on the mesh.

The client asks a hosting node how to prepare its input (`describe_classifier`: image shape,
patch size, architecture, checkpoint digest), turns its images into patches locally (a public
reshape plus a zero CLS slot, `mpc.vit.secure.client_input`), secret-shares them between two
party nodes (a third deals the correlated randomness) and reconstructs the logits from the two
parties' shares; softmax and argmax run on the client. Threat model: `input_private` (the
parties know the model's weights); see docs/threat-model.md.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from decentralized.client import MeshClient
from decentralized.errors import InvalidRequest
from decentralized.mpc_client import (
    MPCOptions,
    describe_classifier,
    run_secure_classifier,
)
from mpc.models import check_output
from secure_infer.results import MPCClassificationResult, MPCReport, Privacy

MAX_IMAGES = 16  # per call: a node's MPC batch limit


def classify_mpc(
    mesh: MeshClient,
    model: str,
    images: np.ndarray | torch.Tensor,
    options: MPCOptions,
    *,
    channel_label: str,
) -> MPCClassificationResult:
    """Classify (N, ch, H, W) or (N, H*W) float images in [0, 1] under MPC; see the module."""
    from mpc.vit.model import patchify

    if options.threat_model != "input_private":
        raise InvalidRequest("MPC classifiers run with threat_model='input_private' only")
    t0 = time.perf_counter()
    info = describe_classifier(mesh, model)
    x = _images(images, tuple(info.image_shape))
    patches = patchify(x, info.patch_size)  # (N, patches, ch p p)
    zero = torch.zeros(patches.shape[0], 1, patches.shape[2])  # the CLS slot
    inputs = torch.cat([zero, patches], dim=1)  # (N, T, P)
    if list(inputs.shape[1:]) != list(info.input_shape):
        raise InvalidRequest(f"{model}: patches {list(inputs.shape[1:])} != {info.input_shape}")
    t_client = time.perf_counter() - t0
    outcome = run_secure_classifier(mesh, model, inputs, options)
    logits = check_output(outcome.output, outcome.output_bound)  # GarbageOutput if not
    probs = torch.softmax(logits, dim=1).to(torch.float32)
    parties = outcome.ranks
    report = MPCReport.of(
        outcome,
        options.threat_model,
        f"|logit| <= {outcome.output_bound:.1f} (final LayerNorm and head)",
    )
    p0, p1, dealer = parties
    return MPCClassificationResult(
        model=model,
        logits=logits.numpy(),
        probs=probs.numpy(),
        predictions=probs.argmax(1).numpy().astype(np.int64),
        architecture=tuple(info.architecture),
        model_digest=info.digest,
        timings={
            "total_s": time.perf_counter() - t0,
            "client_s": t_client,
            "mesh_s": outcome.seconds,
        },
        privacy=Privacy(
            mode="mpc",
            channel=channel_label,
            client_keeps="the images, their patches and the logits (reconstructed locally "
            "from the two parties' shares)",
            node_views=(
                f"party {p0.name} ({p0.node_id[:8]}) saw a uniformly random share of the "
                "patches and of the logits",
                f"party {p1.name} ({p1.node_id[:8]}) saw a uniformly random share of the "
                "patches and of the logits",
                f"dealer {dealer.name} ({dealer.node_id[:8]}) saw only its own correlated "
                "randomness and the sequence of request shapes",
                f"every node saw: the number of images, the model {model} (its weights are "
                "public to the parties) and the threat model",
            ),
            caveats=(
                "semi-honest security: a party that deviates from the protocol can corrupt the "
                "logits undetected (the client checks only that they are in the model's range)",
                "the dealer is TRUSTED, not verified: a dealer colluding with either party "
                "learns the images",
                "the two parties must not collude: together they reconstruct the images",
                "MPC-friendly attention (ReLU-softmax, scaling) and PUMA's approximations make "
                "the logits differ slightly from plaintext",
            ),
        ),
        mpc=report,
    )


def _images(images: np.ndarray | torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """(N, ch, H, W) float32 in [0, 1], from (N, ch, H, W), (N, H, W) or (N, ch*H*W)."""
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    if x.dim() < 2 or not 1 <= x.shape[0] <= MAX_IMAGES:
        raise InvalidRequest(f"images must be a batch of 1..{MAX_IMAGES}, got {tuple(x.shape)}")
    if int(np.prod(x.shape[1:])) != int(np.prod(shape)):
        raise InvalidRequest(f"each image must have shape {list(shape)}, got {list(x.shape[1:])}")
    if not bool(torch.isfinite(x).all()) or float(x.min()) < 0.0 or float(x.max()) > 1.0:
        raise InvalidRequest("pixels must be finite floats in [0, 1]")
    return x.reshape(x.shape[0], *shape)
