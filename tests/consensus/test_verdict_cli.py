"""`secure-infer verdict FILE` checks every line and reports each, failing if any is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secure_infer import cli
from verification.consensus import Receipt, decide, node_id_of, receipt_message, sign_verdict
from verification.consensus.verdict import Verdict, WireTensor


def _wire(t: torch.Tensor) -> WireTensor:
    a = t.numpy().astype(np.float32)
    return WireTensor("float32", tuple(a.shape), a.tobytes())


def _verdict(client: Ed25519PrivateKey, *, evidence: bool) -> Verdict:
    x = torch.randn(1, 2, 4)
    outs = [x * 2, x * 2, torch.zeros_like(x)]
    sent = _wire(x)
    receipts = []
    for out in outs:
        key = Ed25519PrivateKey.generate()
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        args = {
            "model": "m",
            "start": 0,
            "end": 1,
            "session_id": "",
            "past_length": 0,
            "input_digest": sent.digest(),
            "output_digest": _wire(out).digest(),
            "node_id": node_id_of(raw),
        }
        receipts.append(
            Receipt(**args, public_key=raw, signature=key.sign(receipt_message(**args)))
        )
    return sign_verdict(
        client,
        model="m",
        start=0,
        end=1,
        epoch=0,
        time_s=0.0,
        receipts=receipts,
        decision=decide(outs, 1e-5),
        step_tokens=2,
        evidence={j: (sent, _wire(o)) for j, o in enumerate(outs)} if evidence else None,
    )


def test_every_verdict_is_reported_and_any_refusal_fails_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = Ed25519PrivateKey.generate()
    lines = [
        _verdict(client, evidence=True).to_json(),
        _verdict(client, evidence=False).to_json(),  # a conviction without evidence
        '{"format": "secure-infer/verdict/v1"}',
        "",
        _verdict(client, evidence=True).to_json(),
    ]
    path = tmp_path / "v.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert cli.main(["verdict", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert [line.split(" ")[0] + " " + line.split(" ")[2].rstrip(":") for line in out[:4]] == [
        "OK 1",
        "REFUSED 2",
        "REFUSED 3",
        "OK 5",
    ]
    assert "unverifiable: no evidence" in out[1] and "malformed verdict" in out[2]
    assert out[4] == "2 verdict(s) verified, 2 refused"
    good = tmp_path / "good.jsonl"
    good.write_text(lines[0] + "\n")
    assert cli.main(["verdict", str(good)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "1 verdict(s) verified"
