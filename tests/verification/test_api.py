"""FidesVerifier API: safetensors + JSON round trip, typed errors, GDTL transfer on MiniLM."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from verification.fides import FidesVerifier, InvalidInput, ModelFormatError
from verification.fides.attacks import swap_top2
from verification.fides.detector import (
    LEGACY_LOG_FLOOR,
    LOG_FLOOR,
    N_STATS,
    divergence_features,
)
from verification.fides.experiment import Outcome, TaskData
from verification.fides.gdtl import ConvFamily, TextFamily
from verification.fides.nets import INFERENCE_CHUNK, ConvPrefixNet, MLPNet
from verification.fides.text import MiniLMEncoder
from verification.fides.training import batched
from verification.fides.verifier import DISAGREEMENT_BONUS

TEXTS = [
    "A moving, beautifully acted film.",
    "Dull, predictable and far too long.",
    "I laughed, I cried, I would watch it again tomorrow.",
]


def test_save_load_round_trip(tiny_mnist: tuple[TaskData, Outcome], tmp_path: Path) -> None:
    data, out = tiny_mnist
    x = data.inputs["test"][:50]
    probs = batched(out.service, x).softmax(1)
    path = out.fides.save(tmp_path / "fides")
    assert sorted(p.name for p in path.iterdir()) == [
        "detector.safetensors",
        "fides.json",
        "reclassifier.safetensors",
        "reference.safetensors",  # the tiny setup escalates (test_escalation.py)
        "verifier.safetensors",
    ]
    loaded = FidesVerifier.load(path)
    assert loaded.verify(x, probs) == out.fides.verify(x, probs)
    assert loaded.threshold == out.fides.threshold


def test_client_bundle_has_no_verifier_and_judges_alike(
    tiny_mnist: tuple[TaskData, Outcome], tmp_path: Path
) -> None:
    """The bundle clients get: detector, re-classifier, threshold, digest; no verifier weights
    (a service that had them could answer with the verifier's own distribution unflagged)."""
    data, out = tiny_mnist
    x = data.inputs["test"][:50]
    ps = batched(out.service, x).softmax(1)
    digest = "ab" * 48
    path = out.fides.save_client(tmp_path / "client", digest)
    assert sorted(p.name for p in path.iterdir()) == [
        "detector.safetensors",
        "fides.json",
        "reclassifier.safetensors",
    ]
    client = FidesVerifier.load(path)
    assert client.client_only and not out.fides.client_only
    assert client.verifier_model_digest == digest and client.n_classes == 10
    pv = out.fides.verifier_probs(x)
    rec = out.fides.recompute(x, pv)  # what the enclave sends with pv (test_escalation.py)
    assert client.judge(ps, pv, rec) == out.fides.judge(ps, pv, rec) == out.fides.verify(x, ps)
    for run_verifier in (
        lambda: client.verifier_probs(x),
        lambda: client.verify(x, ps),
        lambda: client.save(tmp_path / "full"),
    ):
        with pytest.raises(ModelFormatError, match="client bundle"):
            run_verifier()
    with pytest.raises(ValueError, match="96 lower-case hex"):
        out.fides.save_client(tmp_path / "bad", "AB" * 48)
    full = out.fides.save(tmp_path / "fides")
    with pytest.raises(ValueError, match="holds verification model weights"):
        out.fides.save_client(full, digest)
    with pytest.raises(ValueError, match="needs n_classes"):
        FidesVerifier("image", None, out.fides.detector, out.fides.reclassifier, 0.0)


def test_load_rejects_broken_directories(
    tiny_mnist: tuple[TaskData, Outcome], tmp_path: Path
) -> None:
    path = tiny_mnist[1].fides.save(tmp_path / "fides")
    (path / "detector.safetensors").unlink()
    with pytest.raises(ModelFormatError, match="missing weights"):
        FidesVerifier.load(path)
    cfg = json.loads((path / "fides.json").read_text())
    cfg["nets"]["verifier"]["hidden"] = [999]
    path2 = tiny_mnist[1].fides.save(tmp_path / "fides2")
    (path2 / "fides.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFormatError, match="does not match"):
        FidesVerifier.load(path2)
    (path2 / "fides.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match="JSON"):
        FidesVerifier.load(path2)


def test_verify_rejects_bad_input(tiny_mnist: tuple[TaskData, Outcome]) -> None:
    data, out = tiny_mnist
    x = data.inputs["test"][:4]
    good = torch.full((4, 10), 0.1)
    with pytest.raises(InvalidInput, match="shape"):
        out.fides.verify(x, torch.full((4, 2), 0.5))
    with pytest.raises(InvalidInput, match="sum to 1"):
        out.fides.verify(x, good * 2)
    with pytest.raises(InvalidInput, match="NaN"):
        out.fides.verify(x, good.clone().fill_(float("nan")))
    with pytest.raises(InvalidInput, match="rows"):
        out.fides.verify(x[:3], good)
    with pytest.raises(InvalidInput):
        out.fides.verify(torch.rand(4, 3, 28, 28), good)


def test_conv_transfer_copies_service_blocks(tiny_mnist: tuple[TaskData, Outcome]) -> None:
    service = tiny_mnist[1].service
    net = ConvFamily(service, [[]]).build(1, 0)
    for a, b in zip(net.prefix[0].parameters(), service.prefix[0].parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.fixture(scope="module")
def minilm() -> MiniLMEncoder:
    return MiniLMEncoder()


def test_text_transfer_reproduces_minilm_prefix(minilm: MiniLMEncoder) -> None:
    ids = minilm.tokenize(TEXTS)
    pooled = minilm.pooled_states(ids)
    # The reference: sentence-transformers' own encode (mean pooling + normalisation).
    assert torch.allclose(
        nn.functional.normalize(pooled[:, -1], dim=1), minilm.encode(TEXTS), atol=1e-5
    )
    family = TextFamily(minilm.bert, 2, [[]], tokens=128)
    for depth in (0, 2):
        with torch.no_grad():
            got = family.build(depth, 0).features(ids)
        assert torch.allclose(got, pooled[:, depth], atol=1e-4)


def test_text_verifier_accepts_strings_and_round_trips(
    minilm: MiniLMEncoder, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    verifier = TextFamily(minilm.bert, 2, [[8]], tokens=128).build(0, 0)
    fides = FidesVerifier(
        "text", verifier, MLPNet(4 + N_STATS, [8], 1), MLPNet(8 + N_STATS, [8], 2), threshold=0.0
    )
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    verdicts = fides.verify(TEXTS, probs)
    assert len(verdicts) == 3
    assert FidesVerifier.load(fides.save(tmp_path / "t")).verify(TEXTS, probs) == verdicts
    with pytest.raises(InvalidInput):
        fides.verify("not a list", probs[:1])
    with pytest.raises(InvalidInput, match="token ids"):
        fides.verify(torch.full((3, 5), 10**6, dtype=torch.int64), probs)


def test_older_formats_load_and_score_as_calibrated(
    tiny_mnist: tuple[TaskData, Outcome], tmp_path: Path
) -> None:
    """Format 3 adds the disagreement bonus to the detector's logit; format 2 bundles (no
    bonus) and format 1 bundles (no bonus, the legacy floor) score as they were calibrated."""
    data, out = tiny_mnist
    path = out.fides.save(tmp_path / "fides")
    cfg = json.loads((path / "fides.json").read_text())
    assert cfg["format_version"] == 4 and cfg["log_floor"] == out.fides.log_floor == LOG_FLOOR
    assert cfg["escalation_margin"] == out.fides.escalation_margin is not None
    assert cfg["disagreement_bonus"] == out.fides.disagreement_bonus == DISAGREEMENT_BONUS > 0
    x = data.inputs["test"][:40]
    ps, pv = batched(out.service, x).softmax(1), out.fides.verifier_probs(x)
    differ = (ps.argmax(1) != pv.argmax(1)).float()
    swapped = swap_top2(ps)  # its top-1 differs from the verifier's wherever they agreed
    raw = out.fides.detector(divergence_features(swapped, pv, LOG_FLOOR)).squeeze(1).detach()
    new = FidesVerifier.load(path)
    bonus = (swapped.argmax(1) != pv.argmax(1)).float() * DISAGREEMENT_BONUS
    assert bonus.sum() > 0 and torch.allclose(new.scores(swapped, pv), raw + bonus, atol=1e-5)
    del cfg["disagreement_bonus"]
    cfg["format_version"] = 2  # as written before the bonus
    (path / "fides.json").write_text(json.dumps(cfg))
    v2 = FidesVerifier.load(path)
    assert v2.disagreement_bonus == 0.0
    assert torch.allclose(v2.scores(swapped, pv), raw, atol=1e-5)
    del cfg["log_floor"]
    cfg["format_version"] = 1  # as written before the floor was recorded
    (path / "fides.json").write_text(json.dumps(cfg))
    old = FidesVerifier.load(path)
    assert old.log_floor == LEGACY_LOG_FLOOR and old.disagreement_bonus == 0.0
    expected = old.detector(divergence_features(ps, pv, LEGACY_LOG_FLOOR)).squeeze(1)
    assert torch.allclose(old.scores(ps, pv), expected.detach())
    assert differ.sum() < len(differ)  # the verifier mostly agrees with the service
    for bad in (
        {"format_version": 5},
        {"format_version": 4},  # no bonus recorded either
        {
            "format_version": 4,
            "log_floor": 1e-30,
            "disagreement_bonus": 2.0,
            "escalation_margin": 2,
        },
        {"format_version": 3},  # no bonus recorded
        {"format_version": 2},  # no floor recorded
        {"log_floor": float("nan")},
        {"format_version": 3, "log_floor": 1e-30, "disagreement_bonus": -1.0},
    ):
        (path / "fides.json").write_text(json.dumps({**cfg, "format_version": 2, **bad}))
        with pytest.raises((ModelFormatError, ValueError)):
            FidesVerifier.load(path)


@pytest.mark.parametrize("channels", [[8], [8, 16], [8, 16, 4]])  # 28 -> 14 -> 7 -> 3 (odd)
def test_conv_blocks_pool_before_relu_exactly(channels: list[int]) -> None:
    """`ConvBlock` computes conv -> pool -> ReLU: the same values as conv -> ReLU -> max-pool,
    on even and odd sides, with the weights under the same names."""
    torch.manual_seed(0)
    net = ConvPrefixNet(channels, [16], 10).eval()
    reference = nn.Sequential(
        *(nn.Sequential(b[0], nn.ReLU(), nn.MaxPool2d(2)) for b in net.prefix)
    )
    x = torch.rand(5, 1, 28, 28) - 0.3
    with torch.no_grad():
        assert torch.equal(net.prefix(x), reference(x))
    assert "prefix.0.0.weight" in net.state_dict()


def test_conv_nets_infer_in_chunks_with_the_same_results() -> None:
    """Without autograd a conv net runs more than `INFERENCE_CHUNK` images in chunks (cache-
    sized feature maps); rows equal a whole-batch run, and training still sees the batch."""
    torch.manual_seed(0)
    net = ConvPrefixNet([8, 16], [16], 10).eval()
    x = torch.rand(3 * INFERENCE_CHUNK + 5, 1, 28, 28)
    with torch.no_grad():
        chunked = net(x)
        whole = net.head(net.prefix(x))
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    assert net(x).requires_grad  # with autograd: one pass, as in training


def test_the_disagreement_bonus_needs_a_faithful_verifier() -> None:
    """The bonus makes a top-1 disagreement an alarm: only for a verifier whose honest
    disagreements are about as rare as the false-positive budget (GDTL's fidelity >= 0.96)."""
    from verification.fides.artefacts import SCALES
    from verification.fides.experiment import choose_bonus

    scale = SCALES["mnist"]["test"]
    assert scale.max_fpr == 0.02
    assert choose_bonus(0.99, scale) == choose_bonus(0.96, scale) == DISAGREEMENT_BONUS
    assert choose_bonus(0.95, scale) == choose_bonus(0.75, scale) == 0.0
    assert choose_bonus(0.99, dataclasses.replace(scale, disagreement_bonus=0.0)) == 0.0
