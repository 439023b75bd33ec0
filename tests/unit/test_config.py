from __future__ import annotations

from pathlib import Path

import pytest

from secure_infer.config import ConfigError, load, parse_span

TOML = """
[node]
name = "node-a"
listen = "127.0.0.1:7001"
seeds = ["127.0.0.1:7002"]
metrics = "127.0.0.1:9101"

[tls]
ca = "certs/ca.crt"
cert = "certs/node-a.crt"
key = "certs/node-a.key"

[[spans]]
model = "all-MiniLM-L6-v2"
start = 0
end = 3
"""


def test_toml_with_flag_overrides(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(TOML)
    cfg = load(path, {"listen": "127.0.0.1:7005", "device": None})
    assert cfg.settings.listen == "127.0.0.1:7005"
    assert cfg.settings.seeds == ("127.0.0.1:7002",)
    assert cfg.settings.spans == (("all-MiniLM-L6-v2", 0, 3),)
    assert cfg.tls is not None and cfg.tls.ca_cert == tmp_path / "certs/ca.crt"
    assert cfg.data_dir == tmp_path / "node-a"
    assert cfg.settings.fides_protocol == "distribution"
    assert load(path, {"fides_protocol": "verdicts"}).settings.fides_protocol == "verdicts"
    cfg = load(path, {"spans": [("SmolLM2-135M-Instruct", 10, 20)], "seeds": "a:1,b:2"})
    assert cfg.settings.spans == (("SmolLM2-135M-Instruct", 10, 20),)
    assert cfg.settings.seeds == ("a:1", "b:2")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"spans": [("nope", 0, 1)]}, "unknown model 'nope'"),
        ({"spans": [("all-MiniLM-L6-v2", 4, 9)]}, r"outside layers \[0, 6\)"),
        ({"insecure_dev": True, "listen": "0.0.0.0:7001"}, "only on loopback"),
        ({"bogus": 1}, "unknown \\[node\\] keys: bogus"),
        ({"heartbeat_s": 10.0}, "heartbeat_s < dead_after_s"),
        ({"fides_protocol": "everything"}, "fides_protocol must be one of distribution, verdicts"),
        ({"fides_sealed": ["mnist"]}, "fides_sealed: expected NAME=OWNER"),
        ({"fides_sealed": ["mnist= "]}, "fides_sealed: expected NAME=OWNER"),
        ({"fides_sealed": "a=alice,a=bob"}, "fides_sealed: a name appears twice"),
    ],
)
def test_invalid_configs(tmp_path: Path, overrides: dict[str, object], message: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(TOML)
    with pytest.raises(ConfigError, match=message):
        load(path, overrides)


def test_sealed_verifier_slots(tmp_path: Path) -> None:
    """`fides_sealed` NAME=OWNER slots are enough for a node to serve, and their names may not
    collide with verifiers loaded from disk."""
    cfg = load(None, {"insecure_dev": True, "fides_sealed": "mnist=alice, text = bob"})
    assert cfg.settings.fides_sealed == (("mnist", "alice"), ("text", "bob"))
    (tmp_path / "fides").mkdir()
    clash = {"fides_verifiers": [f"mnist={tmp_path / 'fides'}"], "fides_sealed": ["mnist=a"]}
    with pytest.raises(ConfigError, match="mnist is also in fides_verifiers"):
        load(None, {"insecure_dev": True, **clash})


def test_missing_tls_and_spans_and_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="serves nothing"):
        load(None, {"insecure_dev": True})
    with pytest.raises(ConfigError, match="cannot run under MPC"):
        load(None, {"insecure_dev": True, "mpc_models": ["no-such-model"]})
    mpc_only = load(None, {"insecure_dev": True, "mpc_models": ["all-MiniLM-L6-v2"]})
    assert mpc_only.settings.mpc_models == ("all-MiniLM-L6-v2",) and not mpc_only.settings.spans
    both = load(None, {"insecure_dev": True, "mpc_models": ["SmolLM2-135M-Instruct"]})
    assert both.settings.mpc_models == ("SmolLM2-135M-Instruct",)
    with pytest.raises(ConfigError, match=r"\[tls\] lacks ca, cert, key"):
        load(None, {"spans": [("all-MiniLM-L6-v2", 0, 6)]})
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "missing.toml", {})
    bad = tmp_path / "bad.toml"
    bad.write_text("[node\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load(bad, {})
    with pytest.raises(ConfigError, match="MODEL:START:END"):
        parse_span("all-MiniLM-L6-v2:0")
