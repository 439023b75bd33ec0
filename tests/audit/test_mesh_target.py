"""A membership audit of a mesh-served classifier (black-box, through the SDK over mTLS).

The audit tool's MNIST MLP is trained on 300 known member rows, exported as a classifier
directory, and hosted by a real node daemon (`--classifier`); `target.path = "mesh://..."` then
audits it through `client.classify`. The same audit of the checkpoint file on disk must give the
same attack results (the attacks depend on the output probabilities only).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from secure_infer.audit.data import load_dataset
from secure_infer.audit.mesh_target import export_classifier
from secure_infer.audit.models import Recipe, save_checkpoint, train_model
from secure_infer.cli import main
from secure_infer.localmesh import LocalMesh, NodeSpec
from tests.audit.conftest import validate_report
from tests.conftest import start_mesh

pytestmark = [pytest.mark.grpc]

RECIPE = Recipe(hidden=(64,), epochs=30)
COMMON = [
    "--data", "mnist", "--shadows", "4", "--workers", "2", "--no-progress",
    "--set", "data.population_size=300", "--set", "model.hidden=[64]",
    "--set", "model.epochs=30",
]  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalMesh, Path, Path]]:
    root = tmp_path_factory.mktemp("mesh-target")
    ds = load_dataset("mnist")
    members = np.sort(np.random.default_rng(7).permutation(len(ds))[:300])
    np.save(root / "members.npy", members)
    model = train_model(ds.x[members], ds.y[members], ds.n_classes, RECIPE, seed=7)
    checkpoint = root / "target.pt"
    save_checkpoint(model, checkpoint, RECIPE, ds.n_features, ds.n_classes)
    export_classifier(checkpoint, root / "classifier")
    spec = NodeSpec(name="audit-node", extra_args=("--classifier", f"digits={root / 'classifier'}"))
    mesh = start_mesh(root / "mesh", [spec])
    yield mesh, checkpoint, root / "members.npy"
    mesh.stop()


def _audit(args: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    rc = main(["audit", "membership", *COMMON, *args, "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err[-3000:]
    return json.loads((out / "report.json").read_text())


def test_membership_audit_of_a_mesh_served_model_matches_the_file(
    served: tuple[LocalMesh, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mesh, checkpoint, members = served
    mesh_args = [
        "--set", "target.path=mesh://digits",
        "--set", f"target.members={members}",
        "--set", f"target.seeds={json.dumps(mesh.seeds)}",
        "--set", f"target.certs={mesh.certs_dir}",
    ]  # fmt: skip
    on_mesh = _audit(mesh_args, tmp_path / "mesh", capsys)
    validate_report(on_mesh)
    assert "mesh-served classifier digits" in on_mesh["target"]["description"]
    file_args = ["--set", f"target.path={checkpoint}", "--set", f"target.members={members}"]
    on_disk = _audit(file_args, tmp_path / "file", capsys)
    mesh_auc = {a["name"]: a["auc"] for a in on_mesh["attacks"]}
    file_auc = {a["name"]: a["auc"] for a in on_disk["attacks"]}
    assert mesh_auc.keys() == file_auc.keys()
    for name, auc in file_auc.items():
        assert mesh_auc[name] == pytest.approx(auc, abs=0.01), name
    assert mesh_auc["lira_online"] > 0.6  # the 300-row target overfits: membership leaks


def test_mesh_target_errors_are_clear(
    served: tuple[LocalMesh, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mesh, _, members = served
    base = ["--set", f"target.members={members}", "--out", str(tmp_path / "x")]
    rc = main(["audit", "membership", *COMMON, "--set", "target.path=mesh://digits", *base])
    assert rc == 1 and "target.seeds" in capsys.readouterr().err
    args = [
        "--set", "target.path=mesh://no-such-model",
        "--set", f"target.seeds={json.dumps(mesh.seeds)}",
        "--set", f"target.certs={mesh.certs_dir}",
    ]  # fmt: skip
    rc = main(["audit", "membership", *COMMON, *args, *base])
    err = capsys.readouterr().err
    assert rc == 1 and "ModelMismatch" in err and "no-such-model" in err
