"""A tiny, fully trained Fides setup on real MNIST, built once per test session (~20-40 s)."""

from __future__ import annotations

import pytest
import torch

from verification.fides.detector import GanConfig
from verification.fides.experiment import Outcome, Scale, TaskData, prepare_mnist, run
from verification.fides.gdtl import GdtlConfig

TINY = Scale(
    n_samples=1500,
    service_epochs=10,
    service_hidden=[32],
    channels=[8, 16],
    widths=[[], [16]],
    fgsm_eps=0.2,
    gan_shifted_copies=1,
    verifier_budget=0.25,
    gdtl=GdtlConfig(epochs=15, finetune_epochs=2, target_fidelity=0.97),
    gan=GanConfig(epochs=30),
    escalate_fraction=0.05,  # the enclave recomputes the 5 % least sure queries (test_escalation)
)


@pytest.fixture(scope="session")
def tiny_mnist() -> tuple[TaskData, Outcome]:
    torch.set_num_threads(1)
    data = prepare_mnist(TINY)
    return data, run(data, TINY)
