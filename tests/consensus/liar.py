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
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import torch

from decentralized.shards import ForwardJob, ShardHost
from secure_infer import cli


def install(mode: str) -> None:
    name, _, arg = mode.partition(":")
    honest_init = ShardHost.__init__
    honest_forward = ShardHost.forward
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

    def forward(self: ShardHost, job: ForwardJob, span: Any = None) -> torch.Tensor:
        state["calls"] += 1
        if name == "drop_after" and state["calls"] > int(arg):
            os._exit(1)
        out = honest_forward(self, job, span)
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

    ShardHost.__init__ = init  # type: ignore[method-assign]
    ShardHost.forward = forward  # type: ignore[method-assign]


def main() -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--misbehave", required=True)
    own, rest = parser.parse_known_args(sys.argv[1:])
    install(own.misbehave)
    return cli.main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
