"""A DISHONEST mesh node for the tests: `python -m tests.fides_mesh.attacker [flags] node run ...`.

It is the real node daemon (`secure_infer.cli`) with two of its servicer's methods replaced in
this process only, so that product code carries no attack injection:

* Service attacks (Fides' threat model, `verification.fides.attacks`): a classifier hosted as
  `NAME@ATTACK` answers with the attacked distribution: swap_top2, average_top2,
  random_label_switch, fgsm (the model is fed FGSM-perturbed inputs, eps 0.2), substitution
  (answers with `--substitute DIR`'s cheaper model).
* Relay (`NAME@relay-VERIFIER`): the service's operator, a mesh member like any other, sends
  the client's images to the Fides verifier VERIFIER (protocol "distribution", found through
  the mesh's peers and their ListModels) under its own node certificate and answers with the
  verifier's distribution, without running its model. The relay fails (and so does the
  client's request) when the verifier node answers enrolled clients only (`--fides-client`).
* Quote attacks on a verifier hosted as `NAME@ATTACK`: replay (answers every request with the
  first reply it produced: its quote names an old nonce, its session tag an old sequence
  number), tamper (swaps the top two classes of the enclave's output and keeps the quote or
  tag), reroute (runs the enclave on another input than the client's: every image inverted,
  1 - x; the quote or tag is genuine, for the wrong question). A wrong measurement needs no
  code: host another model under the verifier's name.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import grpc
import numpy as np
import torch

from decentralized.classify_service import ClassifyServicer
from decentralized.client import error_from_rpc
from decentralized.transport import sync_channel
from decentralized.v1 import classify_pb2, classify_pb2_grpc
from secure_infer import cli
from verification.fides import attacks
from verification.fides.enclave_app import decode_output
from verification.fides.service_model import Classifier, load_classifier

FGSM_EPS = 0.2


def _attacked(attack: str, model: Classifier, x: Any, substitute: Classifier | None) -> np.ndarray:
    if attack == "fgsm":
        adv = attacks.fgsm(model.net, x, FGSM_EPS, (0.0, 1.0))
        return model.probs(adv).numpy()
    if attack == "substitution":
        if substitute is None:
            raise RuntimeError("substitution needs --substitute DIR")
        return substitute.probs(x).numpy()
    probs = model.probs(x)
    if attack == "swap_top2":
        out = attacks.swap_top2(probs)
    elif attack == "average_top2":
        out = attacks.average_top2(probs)
    elif attack == "random_label_switch":
        out = attacks.random_label_switch(probs, torch.Generator().manual_seed(len(x)))
    else:
        raise RuntimeError(f"unknown attack {attack!r}")
    return out.numpy()


def _relay(servicer: ClassifyServicer, verifier: str, x: torch.Tensor) -> np.ndarray:
    """The distribution of the mesh's verifier `verifier` on `x`, asked as a mesh client."""
    node = servicer._node  # noqa: SLF001 - this process's own node
    for peer in node.peers.live():
        with sync_channel(peer.record.address, node.creds, peer.record.name) as channel:
            stub = classify_pb2_grpc.ClassifyStub(channel)
            try:
                listed = stub.ListModels(classify_pb2.ListModelsRequest(), timeout=10)
            except grpc.RpcError:
                continue  # serves no classifiers
            if not any(
                v.name == verifier and v.protocol == "distribution" for v in listed.verifiers
            ):
                continue
            images = x.numpy().astype("<f4")
            request = classify_pb2.VerifyRequest(
                verifier=verifier,
                inputs=classify_pb2.Inputs(images=images.tobytes(), count=len(images)),
                nonce=os.urandom(32),
            )
            try:
                reply = stub.Verify(request, timeout=30)
            except grpc.RpcError as exc:
                raise error_from_rpc(exc, "Classify.Verify") from None  # NotPermitted
            return decode_output(reply.output).numpy()
    raise RuntimeError(f"no peer hosts verifier {verifier!r}")


def install(substitute: Classifier | None) -> None:
    """Replace `ClassifyServicer.predict` and `.Verify` by their dishonest versions."""
    honest_predict = ClassifyServicer.predict
    honest_verify = ClassifyServicer.Verify
    replies: dict[str, classify_pb2.VerifyReply] = {}

    def predict(self: ClassifyServicer, name: str, model: Classifier, x: Any) -> np.ndarray:
        _, _, attack = name.partition("@")
        if not attack:
            return honest_predict(self, name, model, x)
        if attack.startswith("relay-"):
            return _relay(self, attack.removeprefix("relay-"), x)
        return _attacked(attack, model, x, substitute)

    async def verify(
        self: ClassifyServicer, request: classify_pb2.VerifyRequest, context: Any
    ) -> classify_pb2.VerifyReply:
        _, _, attack = request.verifier.partition("@")
        if attack == "reroute":
            x = np.frombuffer(request.inputs.images, dtype="<f4")
            rerouted = classify_pb2.VerifyRequest()
            rerouted.CopyFrom(request)
            rerouted.inputs.images = (1 - x).astype("<f4").tobytes()
            request = rerouted
        reply = await honest_verify(self, request, context)
        if attack == "replay":
            mode = "session" if request.session_id else "quote"  # replay like for like
            return replies.setdefault(f"{request.verifier}/{mode}", reply)
        if attack == "tamper":
            from safetensors.torch import save

            probs = attacks.swap_top2(decode_output(reply.output))
            reply.output = save({"probs": probs.contiguous()})
        return reply

    ClassifyServicer.predict = predict  # type: ignore[method-assign]
    ClassifyServicer.Verify = verify  # type: ignore[method-assign]


def main() -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--substitute", help="classifier directory of the substitute model")
    own, rest = parser.parse_known_args(sys.argv[1:])
    install(load_classifier(own.substitute) if own.substitute else None)
    return cli.main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
