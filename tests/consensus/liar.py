"""A DISHONEST span node for tests: `python -m tests.consensus.liar --misbehave MODE node run ...`

It is the real node daemon (`secure_infer.cli`) with `ShardHost` patched in this process only,
so product code carries no fault injection. It advertises the honest weight digest (except
`bad_commitment`) and signs honest-looking receipts for whatever it returns. Modes:

    noise:SIGMA       adds Gaussian noise of relative size SIGMA to every output token
    zeros             returns zeros (a lazy node that skips the work)
    stale             returns its previous reply when the shape matches (a lazy decoder that
                      repeats itself); computes honestly otherwise
    replay            returns the first reply it ever made for that shape (an old answer)
    wrong_weights     runs layers whose attention output weights are scaled by 1.02, while
                      advertising the published digest (a lie about its weights)
    bad_commitment    runs the published weights but advertises another digest (what a node
                      running other weights honestly would advertise)
    drop_after:N      exits (os._exit) on receiving its (N+1)-th forward, mid-request
    refuse:CODE       answers every forward with gRPC status CODE (e.g. OUT_OF_RANGE)
    extra_span:S:E    serves honestly, and also announces span [S, E) of its first model in its
                      record (a span outside the model: a record the manifest cannot cover)

`--as-name NAME` runs the node under another node's name and certificate (the mesh's files for
NAME): one operator running several processes, with several keys, behind one certificate.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import grpc
import torch

from decentralized.errors import MeshError
from decentralized.shards import ForwardJob, ShardHost
from secure_infer import cli


def install(mode: str) -> None:
    name, _, arg = mode.partition(":")
    honest_init = ShardHost.__init__
    honest_forward = ShardHost.forward
    honest_spans = ShardHost.spans
    state: dict[str, Any] = {"calls": 0, "last": {}, "first": {}}

    def init(self: ShardHost, *args: Any, **kwargs: Any) -> None:
        honest_init(self, *args, **kwargs)
        for span in self._spans.values():
            if name == "wrong_weights":
                with torch.no_grad():
                    for layer in span.layers:  # type: ignore[attr-defined]
                        attn = getattr(layer, "self_attn", None)
                        proj = attn.o_proj if attn is not None else layer.attention.output.dense
                        proj.weight.mul_(1.02)
            if name == "bad_commitment":
                span.weight_digest = "0" * 64  # type: ignore[misc]

    def forward(
        self: ShardHost, job: ForwardJob, span: Any = None, stop: Any = None
    ) -> torch.Tensor:
        state["calls"] += 1
        if name == "drop_after" and state["calls"] > int(arg):
            os._exit(1)
        if name == "refuse":
            err = MeshError(f"refusing with {arg}")
            err.code = getattr(grpc.StatusCode, arg)
            raise err
        out = honest_forward(self, job, span, stop)
        key = tuple(out.shape)
        if name == "noise":
            scale = out.norm(dim=-1, keepdim=True) / out.shape[-1] ** 0.5
            return out + float(arg) * scale * torch.randn_like(out)
        if name == "zeros":
            return torch.zeros_like(out)
        if name == "stale":
            previous = state["last"].get(key)
            state["last"][key] = out
            return previous if previous is not None else out
        if name == "replay":
            return state["first"].setdefault(key, out)
        return out

    def spans(self: ShardHost) -> list[tuple[str, int, int, str]]:
        served = honest_spans(self)
        if name == "extra_span" and served:
            start, _, end = arg.partition(":")
            served.append((served[0][0], int(start), int(end), "ab" * 32))
        return served

    ShardHost.__init__ = init  # type: ignore[method-assign]
    ShardHost.forward = forward  # type: ignore[method-assign]
    ShardHost.spans = spans  # type: ignore[method-assign]


def as_name(args: list[str], name: str) -> list[str]:
    """The node's command line with its name, certificate and key replaced by NAME's."""
    out = list(args)
    for i, flag in enumerate(out[:-1]):
        if flag == "--name":
            out[i + 1] = name
        elif flag in ("--cert", "--key"):
            path = Path(out[i + 1])
            out[i + 1] = str(path.with_name(name + path.suffix))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--misbehave", required=True)
    parser.add_argument("--as-name", default="")
    own, rest = parser.parse_known_args(sys.argv[1:])
    install(own.misbehave)
    if own.as_name:
        rest = as_name(rest, own.as_name)
    return cli.main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
