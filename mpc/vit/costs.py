"""Measured MPC cost of each MPCViT variant on our engine, the latency table of the search.

Method:  `measure_costs` runs every variant under CrypTen, 2 parties + TTP over OS pipes
         (`mpc.launch.run_parties(transport="pipe")`), exactly as `mpc.vit.secure` runs it:
         the attention weights of u heads (one (T, T) score matrix each) per kind, and the MLP
         activation of u blocks ((T, F) each) per kind, on random secret inputs, at two sizes
         u = `units` (small, large). For each it records party 1's communication (bytes sent +
         received, rounds: CrypTen's counters) and party 0's wall time, the least of `repeats`
         runs.
         Seconds are split into a per-unit part (the slope between the two sizes) and a
         per-call part (the intercept: round latency and fixed overheads, shared by a batch);
         bytes are per unit (large size); rounds are per call. Only the variant-dependent part
         is timed: q k^T, weights v, LayerNorms and the linear layers are the same for every
         architecture.
Model:   per image, a head of kind k costs seconds_k + bytes_k / bandwidth; each kind PRESENT
         in a block costs (call_seconds_k + rounds_k rtt) / batch more (a kind runs as one
         batched call per block); a block's MLP kind likewise. `NetworkModel()` (the default)
         adds no link to the loopback measurement and amortizes calls over batches of 50.
         A single size is not enough: at 32 heads a call, softmax's 98 rounds made it look as
         costly per head as a GeLU block, while at the benchmark's batches GeLU costs ~30x more.
Cache:   the table is JSON under `checkpoint.cache_dir()`, keyed by T, F, units and the
         engine version and transport; a table that lacks a variant is measured again; delete
         the file to re-measure.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from mpc.approx import gelu
from mpc.backends.crypten import CRYPTEN_VERSION, load
from mpc.launch import run_parties
from mpc.vit.checkpoint import cache_dir
from mpc.vit.model import ATTENTION_KINDS, MLP_KINDS, AttentionKind, MLPKind, MPCViT, ViTConfig
from mpc.vit.secure import DEFAULT_EXP_ITERATIONS, attention_weights_secure

__all__ = ["CostTable", "NetworkModel", "VariantCost", "expected_latency", "measure_costs"]

_TRANSPORT = "pipe"  # mpc.launch transport the table is measured over (bench/mpcvit.py's default)
_SCORE_STD = 2.0  # spread of the random secret scores the variants are timed on


@dataclass(frozen=True)
class VariantCost:
    bytes: float  # per head-image (attention) or block-image (MLP), party 1 sent + received
    rounds: int  # per batched call
    seconds: float  # party 0 wall time per head- or block-image (slope), loopback
    call_seconds: float  # party 0 wall time per batched call (intercept), loopback


@dataclass(frozen=True)
class NetworkModel:
    """A link added on top of the loopback measurement (defaults: none)."""

    rtt_s: float = 0.0  # seconds per communication round
    bandwidth_bytes_per_s: float = float("inf")
    batch: int = 50  # images per secure forward, over which rounds are shared


@dataclass(frozen=True)
class CostTable:
    """Measured costs; keys are `AttentionKind.value` and `MLPKind.value`."""

    tokens: int
    hidden: int
    units: tuple[int, int]
    engine: str
    attention: dict[str, VariantCost]
    mlp: dict[str, VariantCost]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CostTable:
        return cls(
            tokens=data["tokens"],
            hidden=data["hidden"],
            units=tuple(data["units"]),  # type: ignore[arg-type]
            engine=data["engine"],
            attention={k: VariantCost(**v) for k, v in data["attention"].items()},
            mlp={k: VariantCost(**v) for k, v in data["mlp"].items()},
        )

    def vectors(self, network: NetworkModel) -> dict[str, torch.Tensor]:
        """Per-image costs as tensors ordered like the search logits."""

        def per_image(cost: VariantCost) -> float:
            return cost.seconds + cost.bytes / network.bandwidth_bytes_per_s

        def per_call(cost: VariantCost) -> float:
            return (cost.call_seconds + cost.rounds * network.rtt_s) / network.batch

        att = [self.attention[k.value] for k in ATTENTION_KINDS]
        mlp = [self.mlp[k.value] for k in MLP_KINDS]
        return {
            "attention": torch.tensor([per_image(c) for c in att]),
            "attention_call": torch.tensor([per_call(c) for c in att]),
            "mlp": torch.tensor([per_image(c) + per_call(c) for c in mlp]),
        }


def expected_latency(
    attention_mix: torch.Tensor, mlp_mix: torch.Tensor, table: CostTable, network: NetworkModel
) -> torch.Tensor:
    """Expected variant-dependent seconds per image of a mixture (differentiable).

    Args:
        attention_mix: (depth, heads, 3) probabilities of each head's kind.
        mlp_mix: (depth, len(MLP_KINDS)) probabilities of each block's MLP kind.
    """
    v = table.vectors(network)
    per_head = (attention_mix * v["attention"]).sum()
    present = 1 - (1 - attention_mix).prod(dim=1)  # (depth, 3): P(kind used in the block)
    return per_head + (present * v["attention_call"]).sum() + (mlp_mix * v["mlp"]).sum()


def latency_of(model: MPCViT, table: CostTable, network: NetworkModel) -> float:
    """Expected latency of a model's (mixed or discrete) architecture, seconds per image."""
    attention, mlp = model.mixing()
    return float(expected_latency(attention.detach(), mlp.detach(), table, network))


def _time_party(
    rank: int, tokens: int, hidden: int, sizes: tuple[int, ...], repeats: int
) -> dict[str, Any]:
    """Party side: {"<variant>@<units>": {bytes, rounds, seconds}} for every variant and size."""
    crypten = load()
    crypten.cfg.communicator.verbose = True
    comm = crypten.comm.get()
    generator = torch.Generator().manual_seed(7)
    runs: dict[str, Any] = {}

    def timed(name: str, fn: Any) -> None:
        best = float("inf")
        for _ in range(repeats):
            comm.reset_communication_stats()
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
            stats = comm.get_communication_stats()
        runs[name] = {"bytes": stats["bytes"], "rounds": stats["rounds"], "seconds": best}

    for units in sizes:
        scores = crypten.cryptensor(
            torch.randn(units, 1, tokens, tokens, generator=generator) * _SCORE_STD, src=0
        )  # (units, 1, T, T)
        activations = crypten.cryptensor(
            torch.randn(units, tokens, hidden, generator=generator) * _SCORE_STD, src=0
        )  # (units, T, F)
        for kind in AttentionKind:
            timed(
                f"attention/{kind.value}@{units}",
                lambda kind=kind, scores=scores: attention_weights_secure(
                    scores,
                    kind,
                    relu_bound=4.0 * tokens * _SCORE_STD,
                    exp_iterations=DEFAULT_EXP_ITERATIONS,
                ),
            )
        timed(f"mlp/{MLPKind.GELU.value}@{units}", lambda a=activations: gelu(a))
        timed(f"mlp/{MLPKind.LINEAR.value}@{units}", lambda a=activations: a)
        timed(f"mlp/{MLPKind.RELU.value}@{units}", lambda a=activations: a.relu())
    return runs


def _fit(p0: dict[str, Any], p1: dict[str, Any], name: str, small: int, large: int) -> VariantCost:
    """Slope and intercept of party 0's seconds between the two sizes; bytes per unit."""
    t_small, t_large = p0[f"{name}@{small}"]["seconds"], p0[f"{name}@{large}"]["seconds"]
    slope = max(0.0, (t_large - t_small) / (large - small))
    return VariantCost(
        bytes=p1[f"{name}@{large}"]["bytes"] / large,
        rounds=int(p1[f"{name}@{large}"]["rounds"]),
        seconds=slope,
        call_seconds=max(0.0, t_small - small * slope),
    )


def measure_costs(
    config: ViTConfig,
    *,
    units: tuple[int, int] = (16, 128),
    repeats: int = 2,
    cache: Path | None = None,
    refresh: bool = False,
) -> CostTable:
    """The cost table for `config`'s T and F: from the cache, or measured once and cached.

    Args:
        config: gives T (tokens) and F (MLP width).
        units: the (small, large) numbers of heads or blocks per timed call.
        repeats: runs per variant and size; the fastest counts.
        cache: folder of the JSON table (default `checkpoint.cache_dir()`).
        refresh: measure even if a cached table exists.
    """
    small, large = units
    if not 1 <= small < large or repeats < 1:
        raise ValueError(f"need 1 <= units[0] < units[1] and repeats >= 1, got {units}, {repeats}")
    engine = f"crypten-{CRYPTEN_VERSION}/2pc+ttp/{_TRANSPORT}/exp{DEFAULT_EXP_ITERATIONS}"
    folder = cache or cache_dir()
    path = folder / f"costs-T{config.tokens}-F{config.hidden}-u{small}-{large}.json"
    if path.is_file() and not refresh:
        table = CostTable.from_dict(json.loads(path.read_text()))
        complete = set(table.attention) == {k.value for k in AttentionKind} and set(table.mlp) == {
            k.value for k in MLPKind
        }
        if table.engine == engine and complete:
            return table
    p0, p1 = run_parties(
        _time_party,
        world_size=2,
        ttp=True,
        timeout_s=600.0,
        args=(config.tokens, config.hidden, (small, large), repeats),
        transport=_TRANSPORT,
    )
    table = CostTable(
        tokens=config.tokens,
        hidden=config.hidden,
        units=(small, large),
        engine=engine,
        attention={
            k.value: _fit(p0, p1, f"attention/{k.value}", small, large) for k in AttentionKind
        },
        mlp={k.value: _fit(p0, p1, f"mlp/{k.value}", small, large) for k in MLPKind},
    )
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table.to_dict(), indent=2, sort_keys=True))
    return table
