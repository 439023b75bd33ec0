"""A span node with one fault, for the forward-limit tests:
`python -m tests.integration.faulty_node --fault MODE [--computed-log PATH] node run ...`

It is the real node daemon (`secure_infer.cli`), patched in this process only, so product code
carries no fault injection. Modes:

    zero_shape    a lying node: every Forward reply's hidden states travel as a zero-element
                  tensor of shape [2**62, 2**62, 0] (signed receipt and all), and it advertises
                  a huge throughput so that clients route through it first
    slow:SECONDS  honest, but a job of batch size 3 holds the compute thread SECONDS longer
                  (a long job, the same on every machine); with --computed-log, every job the
                  compute thread actually runs appends its batch size there; it advertises a
                  low throughput so that clients route around it
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from decentralized import _wire, shards
from decentralized.v1 import common_pb2
from secure_infer import cli

SLOW_BATCH = 3  # the batch size that marks a long job in slow mode


def install(fault: str, computed_log: str) -> None:
    name, _, arg = fault.partition(":")
    if name == "zero_shape":
        honest_to_proto = _wire.tensor_to_proto

        def lying_to_proto(t: torch.Tensor) -> common_pb2.Tensor:
            if t.dim() == 3:  # hidden states (the receipt signs what travels)
                return common_pb2.Tensor(dtype="float32", shape=[2**62, 2**62, 0], data=b"")
            return honest_to_proto(t)

        _wire.tensor_to_proto = lying_to_proto  # type: ignore[assignment]
        shards.ShardHost.benchmark = lambda self: 1e9  # type: ignore[method-assign]
    elif name == "slow":
        honest_forward = shards.ShardHost.forward
        delay = float(arg)

        def slow_forward(
            self: shards.ShardHost, job: Any, span: Any = None, stop: Any = None
        ) -> torch.Tensor:
            if computed_log:
                with Path(computed_log).open("a") as log:
                    log.write(f"{job.hidden.shape[0]}\n")
            if job.hidden.shape[0] == SLOW_BATCH:
                time.sleep(delay)
            return honest_forward(self, job, span, stop)

        shards.ShardHost.forward = slow_forward  # type: ignore[method-assign]
        shards.ShardHost.benchmark = lambda self: 1.0  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown fault {fault!r}")


def main() -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--fault", required=True)
    parser.add_argument("--computed-log", default="")
    own, rest = parser.parse_known_args(sys.argv[1:])
    install(own.fault, own.computed_log)
    return cli.main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
