"""MPC-aware search: measured cost table, latency term, discretization, distillation, checkpoints.

The cost table is measured once per module with 2 CrypTen parties + TTP (`multiparty`), at the
tiny test shape, and the searches below use it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mpc.vit import checkpoint
from mpc.vit.costs import (
    CostTable,
    NetworkModel,
    VariantCost,
    expected_latency,
    latency_of,
    measure_costs,
)
from mpc.vit.data import ImageSplit
from mpc.vit.model import Architecture, AttentionKind, MLPKind, MPCViT
from mpc.vit.search import distill, search_architecture
from mpc.vit.train import TrainSettings, accuracy
from tests.vit.conftest import TINY

SEARCH = TrainSettings(epochs=2, batch_size=32, lr=1e-3, shift=0, warmup_epochs=0, arch_lr=0.1)


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> CostTable:
    return measure_costs(TINY, units=(4, 16), repeats=1, cache=tmp_path_factory.mktemp("costs"))


@pytest.mark.multiparty
def test_measured_costs_order_the_variants(table: CostTable) -> None:
    att, mlp = table.attention, table.mlp
    assert att["softmax"].bytes > att["relu_softmax"].bytes > att["scaling"].bytes == 0
    assert att["softmax"].rounds > att["relu_softmax"].rounds > att["scaling"].rounds == 0
    assert mlp["gelu"].bytes > mlp["relu"].bytes > 0 == mlp["linear"].bytes
    assert mlp["gelu"].rounds > mlp["relu"].rounds > 0 == mlp["linear"].rounds
    softmax_call = att["softmax"].call_seconds + att["softmax"].seconds
    assert softmax_call > att["scaling"].call_seconds + att["scaling"].seconds
    assert (table.tokens, table.hidden) == (TINY.tokens, TINY.hidden)


@pytest.mark.multiparty
def test_cost_table_is_cached(table: CostTable, tmp_path: Path) -> None:
    path = tmp_path / f"costs-T{TINY.tokens}-F{TINY.hidden}-u4-16.json"
    path.write_text(json.dumps(table.to_dict()))
    assert measure_costs(TINY, units=(4, 16), cache=tmp_path) == table  # read, not re-measured


def test_expected_latency_counts_rounds_once_per_kind_and_block() -> None:
    cost = VariantCost(bytes=1000.0, rounds=10, seconds=0.5, call_seconds=2.0)
    free = VariantCost(bytes=0.0, rounds=0, seconds=0.0, call_seconds=0.0)
    table = CostTable(
        5,
        64,
        (1, 2),
        "test",
        {"softmax": cost, "relu_softmax": free, "scaling": free},
        {"gelu": free, "linear": free, "relu": free},
    )
    network = NetworkModel(rtt_s=0.01, bandwidth_bytes_per_s=1e4, batch=10)
    model = MPCViT(TINY)  # 2 blocks x 4 softmax heads
    want = 8 * (0.5 + 1000 / 1e4) + 2 * (2.0 + 10 * 0.01) / 10
    assert latency_of(model, table, network) == pytest.approx(want)
    mix = torch.full((2, 4, 3), 1 / 3, requires_grad=True)
    value = expected_latency(mix, torch.tensor([[1.0, 0.0, 0.0]] * 2), table, network)
    value.backward()
    assert mix.grad is not None and float(mix.grad[0, 0, 0]) > 0


@pytest.mark.multiparty
def test_higher_latency_weight_gives_a_cheaper_discrete_architecture(
    teacher: MPCViT, digits: ImageSplit, table: CostTable, tmp_path: Path
) -> None:
    found = {}
    for weight in (0.0, 3.0):
        settings = TrainSettings(**{**SEARCH.__dict__, "latency_weight": weight})
        torch.manual_seed(0)
        found[weight] = search_architecture(teacher, digits, table, settings, search_mlp=True)
    cheap, free = found[3.0], found[0.0]
    for model in (cheap, free):
        assert not model.search
        assert all(
            isinstance(k, AttentionKind) for row in model.architecture.attention for k in row
        )
    assert latency_of(cheap, table, NetworkModel()) < latency_of(free, table, NetworkModel())
    assert cheap.architecture.counts()["softmax"] < free.architecture.counts()["softmax"]

    # Distillation from the teacher keeps the discretized student's accuracy, within one
    # point: multithreaded training is not bit-reproducible, and in three runs the undistilled
    # student scored 0.958-0.972 and the distilled one 0.967-0.969 on these 359 digits (one CI
    # run failed a strict >= at 0.9694 vs 0.9721).
    before = accuracy(cheap, digits.test_x, digits.test_y)
    student = distill(cheap, teacher, digits, SEARCH)
    after = accuracy(student, digits.test_x, digits.test_y)
    assert after >= max(before - 0.01, 0.6), (before, after)

    # Checkpoint round trip.
    checkpoint.save(student, tmp_path / "student", {"test_accuracy": after})
    loaded, metadata = checkpoint.load(tmp_path / "student")
    assert loaded.architecture == student.architecture
    assert metadata == {"test_accuracy": after}
    with torch.no_grad():
        assert torch.equal(loaded(digits.test_x[:8]), student(digits.test_x[:8]))


@pytest.mark.multiparty
def test_mpcvit_search_keeps_the_gelu(
    teacher: MPCViT, digits: ImageSplit, table: CostTable
) -> None:
    settings = TrainSettings(**{**SEARCH.__dict__, "epochs": 1, "latency_weight": 3.0})
    model = search_architecture(teacher, digits, table, settings, search_mlp=False)
    assert model.architecture.mlp_kinds() == (MLPKind.GELU,) * TINY.depth


def test_checkpoint_errors(teacher: MPCViT, tmp_path: Path) -> None:
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
        checkpoint.load(tmp_path / "missing")
    with pytest.raises(checkpoint.CheckpointError, match="supernet"):
        checkpoint.save(MPCViT(TINY, search=True), tmp_path / "supernet")
    checkpoint.save(teacher, tmp_path / "model")
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(checkpoint.CheckpointError, match="JSON"):
        checkpoint.load(tmp_path / "model")
    other = MPCViT(TINY.__class__(**{**TINY.to_dict(), "dim": 16}))
    checkpoint.save(other, tmp_path / "model")
    doc = json.loads((tmp_path / "model.json").read_text())
    doc["config"]["dim"] = 32
    (tmp_path / "model.json").write_text(json.dumps(doc))
    with pytest.raises(checkpoint.CheckpointError, match="does not match"):
        checkpoint.load(tmp_path / "model")
    with pytest.raises(ValueError, match="architecture"):
        Architecture.from_dict({"attention": [["softmax"]], "mlp": ["gelu"]}).check(TINY)
