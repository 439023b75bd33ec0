"""`secure-infer audit llm-membership`: SmolLM2 fine-tuned on real reviews, ICP-MIA probing.

A small but real configuration: 8 member and 8 non-member reviews of 16 tokens, the last two
blocks fine-tuned for 3 epochs at lr 3e-4 (about 30 s on 2 cores), then a resumed run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from secure_infer.cli import main
from tests.audit.conftest import validate_report

pytestmark = pytest.mark.slow

SMALL = [
    "--no-progress",
    "--set", "llm.members=8", "--set", "llm.non_members=8", "--set", "llm.references=1",
    "--set", "llm.max_tokens=16", "--set", "llm.train_layers=2", "--set", "llm.epochs=3",
    "--set", "llm.lr=3e-4",
]  # fmt: skip


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(["audit", "llm-membership", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_llm_membership_end_to_end_and_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, stdout, err = _run([*SMALL, "--out", str(tmp_path / "r1")], capsys)
    assert rc == 0, err[-2000:]
    assert "icp_self" in stdout and "TPR@0.1%" in stdout
    report = json.loads((tmp_path / "r1" / "report.json").read_text())
    validate_report(report)
    assert report["kind"] == "llm-membership"
    assert (tmp_path / "r1" / "report.html").read_text().count("<svg") >= 2
    by = {a["name"]: a for a in report["attacks"]}
    assert set(by) == {"loss", "reference", "icp_reference", "icp_self"}
    assert by["reference"]["auc"] > 0.7  # 3 epochs on 8 reviews: the fine-tune memorizes
    t = report["target"]
    assert t["members"] == t["non_members"] == 8
    assert t["train_accuracy"] > t["test_accuracy"]
    ft = report["fine_tuning"]
    assert ft["trained_epochs"] == 3 and ft["cached_epochs"] == 0

    # An interrupted fine-tune resumes from its last saved epoch (AdamW moments restart).
    (Path(ft["cache_dir"]) / "epoch_3.safetensors").unlink()
    rc, _, err = _run([*SMALL, "--out", str(tmp_path / "r2")], capsys)
    assert rc == 0, err[-2000:]
    again = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert again["fine_tuning"]["trained_epochs"] == 1
    assert again["fine_tuning"]["cached_epochs"] == 2


def test_bad_llm_configs_exit_non_zero(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(["--set", "llm.perturb=1.5"], capsys)
    assert rc == 1 and "llm.perturb" in err
    rc, _, err = _run(["--set", "llm.attacks=['loss', 'magic']"], capsys)
    assert rc == 1 and "magic" in err
    rc, _, err = _run(["--set", "llm.train_layers=99"], capsys)
    assert rc == 1 and "train_layers" in err


@pytest.fixture(scope="module")
def tokenizer() -> object:
    import transformers

    from decentralized.models._files import smollm2_dir

    return transformers.AutoTokenizer.from_pretrained(str(smollm2_dir()))


@pytest.mark.parametrize("seed", [5, 23])
def test_texts_keep_their_token_ids(tokenizer: object, seed: int) -> None:
    """For these seeds some review, cut to 32 tokens and decoded, re-tokenizes to another length
    (a word split at the cut merges differently), which broke the fine-tune's batch; the texts
    are now kept as the cut ids. Real reviews, the real SmolLM2 tokenizer, the defaults."""
    import torch

    from secure_infer.audit.config import load_config
    from secure_infer.audit.llm import load_texts

    cfg = load_config(None, "llm-membership", [{"data": {"seed": seed}}])
    data = load_texts(cfg, tokenizer)
    assert len(data.ids) == 128 and len(data.references) == 2
    assert all(len(t) == 32 for t in data.ids + data.references)
    members = [t for t, m in zip(data.ids, data.member, strict=True) if m]
    assert torch.tensor(members).shape == (64, 32)  # the fine-tune's batch
    retokenized = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in data.texts]
    assert any(n != 32 for n in retokenized)  # the case that crashed is in this draw
    assert len({tuple(t) for t in data.ids + data.references}) == 130  # distinct texts
    assert "duplicates_dropped" in data.provenance
