"""Escalation: the queries the verifier is least sure of are recomputed with the service model
(in the enclave) and checked exactly; the rest are judged by the detector as before.

The tiny setup (`conftest.TINY`) escalates 5 % of its `fides` queries."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from verification.fides.attacks import average_top2, swap_top2
from verification.fides.enclave_app import (
    decode_output,
    decode_reply,
    encode_request,
    judge_request,
    prepare_request,
    request_digest,
    verifier_bundle,
    verifier_handler,
)
from verification.fides.errors import InvalidInput
from verification.fides.experiment import Outcome, TaskData
from verification.fides.training import batched
from verification.fides.verifier import (
    EXACT_LOG_TOLERANCE,
    FidesVerifier,
    Recomputed,
    exact_mismatch,
    top_margin,
)


def _test_split(tiny: tuple[TaskData, Outcome]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    data, out = tiny
    x = data.inputs["test"]
    return x, batched(out.service, x).softmax(1), out.fides.verifier_probs(x)


def _recomputed(
    tiny: tuple[TaskData, Outcome],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, FidesVerifier, Recomputed]:
    """The test split, its honest and verifier distributions, the bundle, its recomputation."""
    x, ps, pv = _test_split(tiny)
    fides = tiny[1].fides
    rec = fides.recompute(x, pv)
    assert rec is not None and len(rec.rows)
    return x, ps, pv, fides, rec


def test_the_escalated_fraction_and_its_cost_are_reported(
    tiny_mnist: tuple[TaskData, Outcome],
) -> None:
    m = tiny_mnist[1].metrics
    assert m["escalation_margin"] is not None
    assert 0.0 < m["escalated_fraction"] < 0.15  # 5 % of `fides` set the margin; test differs
    assert m["recomputed_fraction"] == m["escalated_fraction"]  # the tiny setup audits none
    want = m["verifier_macs"] + m["recomputed_fraction"] * m["service_macs"]
    assert m["verification_macs_per_query"] == pytest.approx(want)
    # the same detector alone, calibrated without escalation, is reported beside it
    alone = m["without_escalation"]
    assert alone["escalated_fraction"] == 0.0
    assert set(alone["attacks"]) == set(m["attacks"])


def test_escalated_rows_are_the_least_sure_and_recompute_the_service(
    tiny_mnist: tuple[TaskData, Outcome],
) -> None:
    x, ps, pv, fides, rec = _recomputed(tiny_mnist)
    margins = top_margin(pv.numpy())
    assert (margins[rec.rows] <= fides.escalation_margin).all()
    rest = np.setdiff1d(np.arange(len(x)), rec.rows)
    assert (margins[rest] > fides.escalation_margin).all()
    np.testing.assert_allclose(rec.probs, ps[rec.rows].numpy(), rtol=1e-5, atol=1e-7)


def test_an_honest_answer_passes_exactly_and_any_attack_on_an_escalated_row_is_caught(
    tiny_mnist: tuple[TaskData, Outcome],
) -> None:
    x, ps, pv, fides, rec = _recomputed(tiny_mnist)
    rows = rec.rows.tolist()
    honest = fides.judge_columns(ps, pv, rec)
    assert [honest.exact[i] for i in rows] == [True] * len(rows)
    assert not any(honest.attacked[i] for i in rows)  # the detector's opinion does not count
    assert sum(honest.exact) == len(rows)
    for attacked in (swap_top2(ps), average_top2(ps)):
        j = fides.judge_columns(attacked, pv, rec)
        # every row whose answer moved beyond the tolerance (an average of two classes that
        # tie within 1e-3 nats changes nothing that matters)
        moved = [(attacked[i].log() - ps[i].log()).abs().max() for i in rows]
        changed = [i for i, m in zip(rows, moved, strict=True) if m > 2 * EXACT_LOG_TOLERANCE]
        assert changed and all(j.attacked[i] for i in changed)
        # re-classified to the recomputation's top-1: the honest class, exactly
        assert all(j.reclassified_label[i] == int(ps[i].argmax()) for i in changed)


def test_the_exact_check_tolerates_rounding_only() -> None:
    ref = torch.tensor([[0.7, 0.2, 0.1 - 1e-25, 1e-25], [0.5, 0.49, 0.01, 0.0]]).numpy()
    rounding = ref * (1 + 1e-6)  # float32 rounding of another machine or batch
    assert not exact_mismatch(rounding, ref).any()
    off = ref.copy()
    off[0, :2] = off[0, :2] * np.exp([-EXACT_LOG_TOLERANCE * 1.5, 0.0])
    assert exact_mismatch(off, ref).tolist() == [True, False]
    swap = ref.copy()
    swap[1, :2] = swap[1, [1, 0]]  # 0.50 <-> 0.49: within the tolerance, but another top-1
    assert exact_mismatch(swap, ref).tolist() == [False, True]
    tie = np.array([[0.5, 0.5 - 2e-5, 2e-5]], np.float32)
    assert not exact_mismatch(tie[:, [1, 0, 2]], tie).any()  # a tie within EXACT_TIE
    tail = ref.copy()
    tail[0, 3] = 1e-12  # moved from 1e-25: a tail change like FGSM's that keeps the label
    assert exact_mismatch(tail, ref).tolist() == [True, False]
    dead = ref.copy()
    dead[0, 3] = 1e-29  # both below EXACT_LIVE: not compared
    assert not exact_mismatch(dead, ref).any()


def test_recomputed_rows_must_be_exactly_the_escalated_ones(
    tiny_mnist: tuple[TaskData, Outcome],
) -> None:
    x, ps, pv, fides, rec = _recomputed(tiny_mnist)
    with pytest.raises(InvalidInput, match="sent no recomputed rows"):
        fides.judge_columns(ps, pv)  # an escalating verifier's answer must carry them
    with pytest.raises(InvalidInput, match="were not recomputed"):  # a row left out
        fides.judge_columns(ps, pv, Recomputed(rec.rows[1:], rec.probs[1:]))
    with pytest.raises(InvalidInput, match="were not recomputed|not increasing"):  # others
        fides.judge_columns(ps, pv, Recomputed(rec.rows - 1, rec.probs))
    other = np.setdiff1d(np.arange(len(x)), rec.rows)[:1]
    more = np.sort(np.concatenate([rec.rows, other]))
    with pytest.raises(InvalidInput, match="do not escalate"):  # one more, and no audits
        fides.judge_columns(ps, pv, Recomputed(more, ps[more].numpy()))
    for bad_rows in (np.concatenate([rec.rows, rec.rows[-1:]]), np.array([-1, *rec.rows[1:]])):
        with pytest.raises(InvalidInput, match="not increasing"):  # repeated, negative
            fides.judge_columns(ps, pv, Recomputed(bad_rows, ps[bad_rows % len(x)].numpy()))
    with pytest.raises(InvalidInput, match="recomputed distributions"):  # not one per row
        fides.judge_columns(ps, pv, Recomputed(rec.rows, rec.probs[1:]))
    bad = rec.probs.copy()
    bad[0] = np.nan
    with pytest.raises(InvalidInput, match="NaN"):
        fides.judge_columns(ps, pv, Recomputed(rec.rows, bad))


def test_bundles_keep_escalation_and_clients_never_get_the_service_weights(
    tiny_mnist: tuple[TaskData, Outcome], tmp_path: Path
) -> None:
    x, ps, pv, fides, rec = _recomputed(tiny_mnist)
    full = fides.save(tmp_path / "full")
    assert (full / "reference.safetensors").exists()
    again = FidesVerifier.load(full)
    assert again.escalation_margin == fides.escalation_margin
    want = fides.verify(x, swap_top2(ps))
    assert again.verify(x, swap_top2(ps)) == want
    client = fides.save_client(tmp_path / "client", "ab" * 48)
    assert not (client / "reference.safetensors").exists()
    assert not (client / "verifier.safetensors").exists()
    judge = FidesVerifier.load(client)
    assert judge.escalation_margin == fides.escalation_margin and judge.reference is None
    assert judge.judge(swap_top2(ps), pv, rec) == want
    with pytest.raises(ValueError, match="reference"):
        FidesVerifier(
            "image", fides.verifier, fides.detector, fides.reclassifier, 0.0, escalation_margin=0.5
        )


def test_the_enclave_recomputes_what_the_client_checks(
    tiny_mnist: tuple[TaskData, Outcome], tmp_path: Path
) -> None:
    x, ps, pv, fides, want = _recomputed(tiny_mnist)
    path = fides.save(tmp_path / "fides")
    request = encode_request(x, "image")
    pv_enclave, rec = decode_reply(verifier_handler(verifier_bundle(path))(request))
    torch.testing.assert_close(pv_enclave, pv)
    assert rec is not None and rec.rows.tolist() == want.rows.tolist()
    np.testing.assert_allclose(rec.probs, want.probs, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(decode_output(verifier_handler(verifier_bundle(path))(request)), pv)
    # protocol "verdicts": the enclave seals its recomputation with the distribution and judges
    handle = verifier_handler(verifier_bundle(path, "verdicts"))
    sealed = handle(prepare_request(request))
    swapped = swap_top2(ps).numpy().astype("<f4")
    out = handle(judge_request(sealed, request_digest(request), swapped.tobytes()))
    verdicts = fides.judge(swapped, pv, want)
    import json

    got = json.loads(out)
    assert got["attacked"] == [v.attacked for v in verdicts]
    assert got["reclassified"] == [v.reclassified_label for v in verdicts]


def test_random_audits_catch_a_service_that_predicts_escalation(
    tiny_mnist: tuple[TaskData, Outcome],
) -> None:
    """A service that knows the verifier (or a copy) and the published margin answers honestly
    where the margin escalates and with the verifier's own distribution elsewhere: the
    detector sees nothing, the margin's exact checks pass, and only random audits, which it
    cannot predict, catch it."""
    x, ps, pv = _test_split(tiny_mnist)
    fides = copy.copy(tiny_mnist[1].fides)
    predicted = torch.from_numpy(fides.escalates(pv.numpy()))
    adaptive = torch.where(predicted[:, None], ps, pv)
    unaudited = fides.judge_columns(adaptive, pv, fides.recompute(x, pv))
    assert not any(a for a, e in zip(unaudited.attacked, unaudited.exact, strict=True) if e)
    fides.audit_rate = 0.25
    rec = fides.recompute(x, pv, rng=np.random.default_rng(1))
    audited = np.setdiff1d(rec.rows, predicted.nonzero().flatten().numpy())
    assert 0.1 * len(x) < len(audited) < 0.4 * len(x)  # about a quarter of the others
    judged = fides.judge_columns(adaptive, pv, rec)
    mimicked = [i for i in audited if (adaptive[i] - ps[i]).abs().max() > 1e-3]
    assert mimicked and all(judged.attacked[i] and judged.exact[i] for i in mimicked)
    # the enclave draws audits from the OS's entropy: two batches differ
    draws = [fides.recompute(x, pv).rows.tolist() for _ in range(2)]
    assert draws[0] != draws[1]
    for rows in draws:  # each includes every escalated row, and the client accepts it
        assert set(predicted.nonzero().flatten().tolist()) <= set(rows)
    assert len(fides.judge_columns(ps, pv, fides.recompute(x, pv)).attacked) == len(x)
    with pytest.raises(ValueError, match="audit_rate"):
        FidesVerifier(
            "image",
            fides.verifier,
            fides.detector,
            fides.reclassifier,
            0.0,
            reference=fides.reference,
            escalation_margin=0.5,
            audit_rate=1.0,
        )
