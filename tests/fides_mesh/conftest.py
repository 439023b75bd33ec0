"""A real mesh for `verify="fides"`: node processes over mTLS, an enclave, dishonest nodes.

Artefacts: `verification.fides.artefacts.build("mnist", "test")`, a small but real setup (1,500
MNIST images, a small CNN, ~15 s on one idle CPU thread; cached under the Fides cache), and
`build("reviews", "test")` (300 movie reviews, ~25 s). Nodes:

    verifier  hosts the Fides verifiers "mnist" (answering the "client" certificate only),
              "mnist-open" (the same verifier, open to every mesh client) and "reviews" in
              SIMULATED enclaves (INSECURE: tests only), and a slot "sealed-enrolled" that
              its owner provisions with an enrolment of the "client" certificate
    judge     hosts "mnist" under protocol "verdicts", and two slots ("sealed",
              "sealed-verdicts") whose verifier the tests provision sealed (tee.provisioning)
    service   hosts the honest classifiers "mnist" and "reviews" (MiniLM + head)
    attacker  tests/fides_mesh/attacker.py: "mnist@<attack>" for every Fides attack, and
              "mnist@relay-<verifier>", which answers with that verifier's distribution
    liar      tests/fides_mesh/attacker.py: verifiers "mnist@replay", "mnist@tamper",
              "mnist@reroute" (attacks on the quote or session tag) and "mnist@wrong" (a
              verifier with other weights: another measurement)
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from secure_infer.client import Client
from secure_infer.fides_client import FidesOptions, client_bundle
from secure_infer.localmesh import LocalMesh, NodeSpec
from verification.fides.artefacts import SCALES, build
from verification.fides.experiment import prepare_mnist

ATTACKS = ("swap_top2", "average_top2", "random_label_switch", "fgsm", "substitution")
ROOT = Path(__file__).resolve().parents[2]
ATTACKER = "tests.fides_mesh.attacker"


@pytest.fixture(scope="session")
def artefacts() -> Path:
    torch.set_num_threads(1)
    return build("mnist", "test")


@pytest.fixture(scope="session")
def text_artefacts() -> Path:
    """A tiny sentiment setup (300 reviews, MiniLM + a small head; ~25 s on first use)."""
    torch.set_num_threads(1)
    return build("reviews", "test")


@pytest.fixture(scope="session")
def test_images() -> torch.Tensor:
    """The held-out `test` split of the artefacts' MNIST sample (150 images, not trained on)."""
    return prepare_mnist(SCALES["mnist"]["test"]).inputs["test"]


def _other_verifier(fides: Path, out: Path) -> Path:
    """A copy of the Fides directory whose verifier weights differ (another measurement)."""
    shutil.copytree(fides, out)
    weights = load_file(str(out / "verifier.safetensors"))
    name = sorted(weights)[0]
    weights[name] = weights[name] + 0.01
    save_file(weights, str(out / "verifier.safetensors"))
    return out


@pytest.fixture(scope="module")
def mesh(
    artefacts: Path,
    text_artefacts: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch_module: pytest.MonkeyPatch,
) -> Iterator[LocalMesh]:
    monkeypatch_module.setenv("PYTHONPATH", str(ROOT))  # the attacker module lives in tests/
    work = tmp_path_factory.mktemp("fides-mesh")
    wrong = _other_verifier(artefacts / "fides", work / "wrong-fides")
    service, fides = artefacts / "service", artefacts / "fides"
    attacks = [
        a
        for attack in (*ATTACKS, "relay-mnist", "relay-mnist-open", "relay-sealed-enrolled")
        for a in ("--classifier", f"mnist@{attack}={service}")
    ]
    specs = [
        NodeSpec(
            name="verifier",
            extra_args=(
                *("--fides-verifier", f"mnist={fides}"),
                *("--fides-verifier", f"reviews={text_artefacts / 'fides'}"),
                # the same verifier, open to every mesh client (a relaying service can use it)
                *("--fides-verifier", f"mnist-open={fides}"),
                *("--fides-client", "mnist=client"),  # "mnist" answers the client only
                # the service model on the verifier's own node: clients must not pair them
                *("--classifier", f"colocated={service}"),
                *("--fides-verifier", f"twin={fides}"),  # "liar" lists another one as "twin"
                # a slot its owner provisions sealed WITH an enrolment (checked in the enclave)
                *("--fides-sealed", "sealed-enrolled=client"),
                *("--enclave", "simulated"),
            ),
        ),
        NodeSpec(  # protocol "verdicts": the enclave judges, never reveals distributions
            name="judge",
            extra_args=(
                *("--fides-verifier", f"mnist={fides}"),
                *("--fides-protocol", "verdicts"),
                *("--enclave", "simulated"),
                # slots whose verifier the "client" certificate's holder provisions sealed
                *("--fides-sealed", "sealed=client"),
                *("--fides-sealed", "sealed-verdicts=client"),
            ),
        ),
        NodeSpec(
            name="service",
            extra_args=(
                *("--classifier", f"mnist={service}"),
                *("--classifier", f"reviews={text_artefacts / 'service'}"),
            ),
        ),
        NodeSpec(
            name="attacker",
            entry=ATTACKER,
            extra_args=(*attacks, "--substitute", str(artefacts / "substitute")),
        ),
        NodeSpec(
            name="liar",
            entry=ATTACKER,
            extra_args=(
                "--enclave",
                "simulated",
                "--fides-verifier",
                f"mnist@replay={fides}",
                "--fides-verifier",
                f"mnist@tamper={fides}",
                "--fides-verifier",
                f"mnist@wrong={wrong}",
                "--fides-verifier",
                f"mnist@reroute={fides}",
                "--fides-verifier",
                f"twin={wrong}",
            ),
        ),
    ]
    with LocalMesh(work, specs, threads=1) as running:
        yield running


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def client(mesh: LocalMesh) -> Iterator[Client]:
    with Client(mesh.seeds, tls=mesh.client_tls()) as c:
        yield c


@pytest.fixture
def options(artefacts: Path) -> FidesOptions:
    return FidesOptions(
        bundle=client_bundle(artefacts / "fides"), allow_simulated=True, verifier_node="verifier"
    )
