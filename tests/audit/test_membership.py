"""End-to-end membership audits through the CLI on mnist1d: reports, resume, errors, exit codes."""

from __future__ import annotations

import importlib.util
import json
import zipfile
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
    # 4 shadows (2 IN, 2 OUT per row): LiRA uses the global variance, and the report says so.
    assert report["shadows"]["lira_variance"] == "global"
    assert report["shadows"]["in_per_example"] == report["shadows"]["out_per_example"] == 2
    assert any("one global standard deviation" in a for a in report["assumptions"])
    assert report["provenance"]["duplicates_dropped"] == 0  # mnist1d has no repeated rows

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


def _bad_model_files(d: Path) -> dict[str, str]:
    """Model files a user may pass by mistake -> the message expected for each."""
    from secure_infer.audit.models import CHECKPOINT_FORMAT

    (d / "garbage.pt").write_bytes(b"not a model at all")
    with zipfile.ZipFile(d / "fake_ts.pt", "w") as z:  # looks like TorchScript, is not
        z.writestr("m/code/x.py", "junk")
    torch.save({"format": CHECKPOINT_FORMAT}, d / "noarch.pt")
    mlp = build_mlp(40, 10, (64, 32))
    arch = {"n_features": 40, "n_classes": 10, "hidden": [64]}  # the weights have two layers
    torch.save({"format": CHECKPOINT_FORMAT, "arch": arch, "state_dict": mlp.state_dict()},
               d / "badstate.pt")  # fmt: skip

    class Pair(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x[:, :10], x[:, :10]

    torch.jit.script(Pair()).save(str(d / "tuple.pt"))
    return {
        "garbage.pt": "garbage.pt is not a loadable torch file",
        "fake_ts.pt": "torch.jit.load cannot read it",
        "noarch.pt": "the checkpoint's 'arch' must be",
        "badstate.pt": "the state_dict does not fit its arch",
        "tuple.pt": "returns a tuple, not a tensor of logits",
    }


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_bad_model_files_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.save(tmp_path / "members.npy", np.arange(100))
    for name, message in _bad_model_files(tmp_path).items():
        rc, _, err = _run(
            ["membership", *SMALL, "--target", str(tmp_path / name),
             "--members", str(tmp_path / "members.npy")],
            capsys,
        )  # fmt: skip
        assert rc == 1 and err.startswith("ModelMismatch: ") and message in err, (name, err)
        assert err.count("\n") == 1 and "Traceback" not in err, err


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_export_classifier_refuses_bad_checkpoints(tmp_path: Path) -> None:
    from secure_infer.audit.errors import ModelMismatch
    from secure_infer.audit.mesh_target import export_classifier

    _bad_model_files(tmp_path)
    for name, message in (("noarch.pt", "'arch' must be"), ("badstate.pt", "does not fit")):
        with pytest.raises(ModelMismatch, match=message):
            export_classifier(tmp_path / name, tmp_path / "out")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("trunc.npy", None, "cannot be read as a .npy array"),
        ("bad.txt", "1\n2\nabc\n", "cannot be read as text with one integer row index a line"),
        ("float.json", "[1.5, 2.0]", "expected a flat list of integer row indices"),
        ("broken.json", "[1, 2", "cannot be read as a JSON list of integers"),
        ("empty.txt", "", "lists no row indices"),
        ("range.txt", "1\n99999\n", "indices must lie in [0, 5000)"),
    ],
)
def test_bad_members_files_name_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: str | None,
    message: str,
) -> None:  # fmt: skip
    path = tmp_path / name
    if content is None:  # a .npy file cut short
        np.save(path, np.arange(100))
        path.write_bytes(path.read_bytes()[:100])
    else:
        path.write_text(content)
    model, _ = _target_file(tmp_path, 40)
    rc, _, err = _run(
        ["membership", *SMALL, "--target", str(model), "--members", str(path)], capsys
    )
    assert rc == 1 and err.startswith(f"AuditConfigError: target.members file {path}"), err
    assert message in err and err.count("\n") == 1


def test_lira_variance_default_and_per_example_limit() -> None:
    from secure_infer.audit.config import load_config, parse_override
    from secure_infer.audit.errors import AuditConfigError

    def cfg(*sets: str) -> object:
        return load_config(None, "membership", [parse_override(s) for s in sets]).membership

    # Carlini et al.: with few shadow models the global variance is the better estimate.
    assert cfg().fixed_variance is None and cfg().lira_fixed_variance() is True
    assert cfg("membership.n_shadows=64").lira_fixed_variance() is False
    assert cfg("membership.fixed_variance=false").lira_fixed_variance() is False  # 4 per side
    assert cfg("membership.n_shadows=128", "membership.fixed_variance=true").lira_fixed_variance()
    assert (
        cfg("membership.fixed_variance=false", "membership.fixed_variance=auto").fixed_variance
        is None
    )
    with pytest.raises(AuditConfigError, match="at least 4 IN and 4 OUT .* n_shadows is 6"):
        cfg("membership.n_shadows=6", "membership.fixed_variance=false")
    with pytest.raises(AuditConfigError, match='expected true, false or "auto"'):
        cfg("membership.fixed_variance=3")


def test_target_and_shadow_models_have_distinct_seeds() -> None:
    """With data.seed 0 the tool's target and shadow 0 had the same torch seed (0): the same
    initialization and batch order, so shadow 0 was the target's near-twin."""
    from secure_infer.audit.config import load_config
    from secure_infer.audit.membership import _target, audit_rows
    from secure_infer.audit.shadows import STREAM_SHADOW, STREAM_TARGET, ShadowSpec, model_seed

    cfg = load_config(None, "membership", [{"data": {"name": "mnist1d", "pool_size": 600,
                                                     "population_size": 300},
                                            "model": {"epochs": 2, "hidden": [64]}}])  # fmt: skip
    ds = load_dataset("mnist1d")
    pool, member, _ = audit_rows(cfg, ds)
    target = _target(cfg, ds, pool, member)
    keep = np.zeros((1, len(pool)), bool)
    keep[0, ~member] = True  # shadow 0 on the other half: only the seed can make it a twin
    spec = ShadowSpec(ds.x[pool], ds.y[pool], ds.x[pool], 10, cfg.model.recipe(), keep, 0, {},
                      (STREAM_SHADOW,))  # fmt: skip
    shadow = train_model(ds.x[pool][~member], ds.y[pool][~member], 10, cfg.model.recipe(),
                         spec.model_seed(0))  # fmt: skip

    def flat(m: torch.nn.Module) -> np.ndarray:
        return torch.cat([p.detach().flatten() for p in m.parameters()]).numpy()

    assert abs(np.corrcoef(flat(target.model), flat(shadow))[0, 1]) < 0.3
    seeds = {model_seed(s, STREAM_TARGET) for s in range(20)}
    assert not seeds & {model_seed(s, STREAM_SHADOW, k) for s in range(20) for k in range(64)}
