"""End-to-end membership audits through the CLI on mnist1d: reports, resume, errors, exit codes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from secure_infer.audit.data import load_dataset
from secure_infer.audit.models import Recipe, build_mlp, save_checkpoint, train_model
from secure_infer.cli import main
from tests.audit.conftest import validate_report

SMALL = [
    "--data", "mnist1d", "--shadows", "4", "--workers", "2", "--no-progress",
    "--set", "data.pool_size=600", "--set", "data.population_size=300",
    "--set", "model.epochs=40", "--set", "model.hidden=[64]",
]  # fmt: skip


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(["audit", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_membership_end_to_end_and_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r1"
    rc, stdout, _ = _run(["membership", *SMALL, "--out", str(out)], capsys)
    assert rc == 0
    assert "lira_online" in stdout and "TPR@0.1%" in stdout
    report = json.loads((out / "report.json").read_text())
    validate_report(report)
    assert (out / "report.html").read_text().count("<svg") >= 2
    t = report["target"]
    assert t["train_accuracy"] > t["test_accuracy"] + 0.2  # the small target overfits
    by = {a["name"]: a for a in report["attacks"]}
    assert set(by) == {"loss", "lira_online", "lira_offline", "rmia_online", "rmia_offline"}
    assert by["rmia_online"]["auc"] > 0.65 and by["lira_offline"]["auc"] > 0.65
    assert report["shadows"] == {**report["shadows"], "trained": 4, "cached": 0}

    # An interrupted run leaves some shadows cached: a rerun trains only the missing ones.
    cache = Path(report["shadows"]["cache_dir"])
    for f in sorted(cache.glob("shadow_*.npz"))[:2]:
        f.unlink()
    rc, _, _ = _run(["membership", *SMALL, "--out", str(tmp_path / "r2")], capsys)
    again = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert rc == 0 and again["shadows"]["trained"] == 2 and again["shadows"]["cached"] == 2
    assert [a["auc"] for a in again["attacks"]] == [a["auc"] for a in report["attacks"]]


def _target_file(
    tmp_path: Path, n_features: int, hidden: tuple[int, ...] = (64,)
) -> tuple[Path, Path]:
    ds = load_dataset("mnist1d")
    members = np.random.default_rng(5).permutation(len(ds))[:300]
    recipe = Recipe(hidden=hidden, epochs=40)
    model = (
        train_model(ds.x[members], ds.y[members], 10, recipe, seed=3)
        if n_features == ds.n_features
        else build_mlp(n_features, 10, hidden)
    )
    path, mpath = tmp_path / "target.pt", tmp_path / "members.npy"
    save_checkpoint(model, path, recipe, n_features, 10)
    np.save(mpath, members)
    return path, mpath


def test_membership_of_a_model_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, mpath = _target_file(tmp_path, 40)
    args = [
        "membership",
        *SMALL,
        "--target",
        str(path),
        "--members",
        str(mpath),
        "--out",
        str(tmp_path / "r"),
    ]
    rc, _, err = _run(args, capsys)
    assert rc == 0, err
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    validate_report(report)
    assert report["target"]["members"] == 300 and not report["target"]["trained_by_tool"]
    assert max(a["auc"] for a in report["attacks"]) > 0.65


def test_model_that_does_not_fit_the_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, mpath = _target_file(tmp_path, 784)
    rc, _, err = _run(
        ["membership", *SMALL, "--target", str(path), "--members", str(mpath)], capsys
    )
    assert rc == 1 and "ModelMismatch" in err and "784 input features" in err and "has 40" in err


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[data]\nname = 'adult'\nbogus = 1\n", "unknown key data.bogus"),
        ("[data]\npool_size = 'many'\n", "data.pool_size: expected int"),
        ("[membership]\nattacks = ['lira_online', 'magic']\n", "unknown ['magic']"),
        ("[membership]\nn_shadows = 3\n", "n_shadows must be even"),
        ("[nope]\n", "unknown section [nope]"),
        ("[data\n", "invalid TOML"),
        ("kind = 'distribution'\n", "is a 'distribution' config"),
        ("[target]\npath = 'm.pt'\n", "target.path and target.members go together"),
    ],
)
def test_bad_config_exits_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str, message: str
) -> None:
    cfg = tmp_path / "audit.toml"
    cfg.write_text(toml)
    rc, _, err = _run(["membership", "--config", str(cfg)], capsys)
    assert rc == 1 and err.startswith("AuditConfigError") and message in err


def test_missing_inputs_exit_non_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(["membership", "--config", str(tmp_path / "none.toml")], capsys)
    assert rc == 1 and "does not exist" in err
    rc, _, err = _run(
        ["membership", "--target", "x.pt", "--members", str(tmp_path / "m.npy")], capsys
    )
    assert rc == 1 and err.startswith("DataUnavailable") and "m.npy does not exist" in err
    rc, _, err = _run(["membership", "--set", "data.pool_size=100000"], capsys)
    assert rc == 1 and "pool + population need" in err


@pytest.mark.skipif(importlib.util.find_spec("ray") is not None, reason="ray is installed")
def test_ray_address_without_ray(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(["membership", *SMALL, "--ray-address", "127.0.0.1:6379"], capsys)
    assert rc == 1 and err.startswith("BackendUnavailable") and "ray is not installed" in err


@pytest.mark.filterwarnings(
    "ignore:`torch.jit:DeprecationWarning"
)  # TorchScript is what users have
def test_torchscript_target_is_probed(tmp_path: Path) -> None:
    from secure_infer.audit.errors import ModelMismatch
    from secure_infer.audit.models import LocalTorchTarget

    path = tmp_path / "scripted.pt"
    torch.jit.script(build_mlp(40, 10, (16,))).save(str(path))
    target = LocalTorchTarget(path)
    target.check_fits(40, 10)
    assert target.logits(np.zeros((3, 40), np.float32)).shape == (3, 10)
    with pytest.raises(ModelMismatch, match="cannot take 784 input features"):
        LocalTorchTarget(path).check_fits(784, 10)
    with pytest.raises(ModelMismatch, match="outputs"):
        LocalTorchTarget(path).check_fits(40, 2)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ModelMismatch, match="not a loadable torch file"):
        LocalTorchTarget(tmp_path / "junk.pt")


def test_documented_config_is_valid(tmp_path: Path) -> None:
    from secure_infer.audit.config import load_config

    doc = (Path(__file__).resolve().parents[2] / "docs" / "audit.md").read_text()
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "audit.toml").write_text(example)
    cfg = load_config(tmp_path / "audit.toml", "membership", [{"run": {"workers": 1}}])
    assert cfg.target.members == "members.npy" and cfg.membership.n_shadows == 8
    assert cfg.run.workers == 1  # flags override the file
