"""Node configuration of classifiers, Fides verifiers and the enclave backend (no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from secure_infer.config import ConfigError, load


def test_classifier_and_verifier_flags_and_toml(tmp_path: Path) -> None:
    (tmp_path / "svc").mkdir()
    (tmp_path / "fides").mkdir()
    cfg = load(
        None,
        {
            "insecure_dev": True,
            "classifiers": [f"mnist={tmp_path / 'svc'}"],
            "fides_verifiers": [f"mnist={tmp_path / 'fides'}"],
            "enclave": "simulated",
        },
    )
    assert cfg.settings.classifiers == (("mnist", str(tmp_path / "svc")),)
    assert cfg.settings.fides_verifiers == (("mnist", str(tmp_path / "fides")),)
    assert cfg.settings.enclave == "simulated" and not cfg.settings.spans
    toml = tmp_path / "node.toml"
    toml.write_text('[node]\ninsecure_dev = true\nclassifiers = { mnist = "svc" }\n')
    assert load(toml, {}).settings.classifiers == (("mnist", str(tmp_path / "svc")),)


def test_enrolled_clients_of_a_verifier(tmp_path: Path) -> None:
    """`--fides-client NAME=CN` (repeatable) or TOML `fides_clients`: a verifier or a sealed
    slot of this node, several CNs each, duplicates dropped; mTLS material is required."""
    tls = {"ca": "ca.crt", "cert": "n.crt", "key": "n.key"}
    cfg = load(
        None,
        {
            **tls,
            "fides_verifiers": [f"mnist={tmp_path}"],
            "fides_sealed": ["sealed=owner"],
            "fides_clients": ["mnist=alice", "mnist=bob", "sealed=alice", "mnist=alice"],
        },
    )
    assert cfg.settings.fides_clients == (
        ("mnist", "alice"),
        ("mnist", "bob"),
        ("sealed", "alice"),
    )
    toml = tmp_path / "node.toml"
    toml.write_text(
        '[node]\nfides_sealed = ["s=o"]\nfides_clients = "s=alice,s=bob"\n'
        '[tls]\nca = "ca.crt"\ncert = "n.crt"\nkey = "n.key"\n'
    )
    assert load(toml, {}).settings.fides_clients == (("s", "alice"), ("s", "bob"))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"classifiers": ["mnist"]}, "NAME=DIR"),
        ({"classifiers": ["mnist=/no/such/dir"]}, "not a directory"),
        ({"fides_verifiers": ["a=/", "a=/"]}, "twice"),
        ({"classifiers": ["a=/"], "enclave": "sgx"}, "enclave must be"),
        ({}, "serves nothing"),
        ({"fides_verifiers": ["a=/"], "fides_clients": ["a"]}, "NAME=CN"),
        ({"fides_verifiers": ["a=/"], "fides_clients": ["b=alice"]}, "b is not a verifier"),
        ({"fides_verifiers": ["a=/"], "fides_clients": ["a=alice"]}, "needs mTLS"),
    ],
)
def test_bad_values_are_config_errors(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load(None, {"insecure_dev": True, **overrides})


def test_hardware_enclave_requested_where_there_is_none(artefacts: Path) -> None:
    """`--enclave configfs-tsm` off a confidential guest fails loudly, never falls back."""
    from decentralized.classify_service import start_verifier
    from tee import UnsupportedPlatform, tsm_available

    if tsm_available():
        pytest.skip("this machine is a confidential guest with configfs-tsm")
    with pytest.raises(UnsupportedPlatform, match="configfs-tsm"):
        start_verifier("mnist", artefacts / "fides", "configfs-tsm")
