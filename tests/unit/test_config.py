from __future__ import annotations

from pathlib import Path

import pytest

from secure_infer.config import ConfigError, NodeConfig, load, parse_span

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


# -- every key is typed: the file and the flags alike --------------------------------------

NODE = "[node]\ninsecure_dev = true\n"
SPAN = '[[spans]]\nmodel = "all-MiniLM-L6-v2"\nstart = 0\nend = 3\n'
TLS = '[tls]\nca = "ca.crt"\ncert = "n.crt"\nkey = "n.key"\n'


def _load_text(tmp_path: Path, text: str) -> NodeConfig:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return load(path, {})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # a string is not a boolean: "false" must not turn off mTLS
        (
            '[node]\ninsecure_dev = "false"\n' + TLS + SPAN,
            r"node.toml: \[node\] insecure_dev: expected true or false .*got 'false' \(string\)",
        ),
        ("node = 5\n" + SPAN, r"node.toml: node: expected a \[node\] table, got 5 \(integer\)"),
        ("tls = 5\n" + NODE + SPAN, r"tls: expected a \[tls\] table"),
        ('spans = ["all-MiniLM-L6-v2:0:3"]\n' + NODE, r"spans: expected \[\[spans\]\] tables"),
        (NODE + "mpc_models = 5\n", r"\[node\] mpc_models: expected an array .* got 5"),
        (NODE + "mpc_models = [5]\n", r"\[node\] mpc_models\[0\]: expected a non-empty"),
        # misspelt tables and keys are errors, not ignored
        (
            NODE + SPAN + '[[span]]\nmodel = "x"\n[tlss]\nca = "x"\n',
            r"unknown top-level tables .*: span \(did you mean spans\?\), tlss \(did you mean tls",
        ),
        (NODE + SPAN + "stride = 7\n", r"\[\[spans\]\] #1: unknown keys .*: stride"),
        (NODE + SPAN + TLS + 'crt = "x"\n', r"unknown \[tls\] keys .*crt \(did you mean cert\?\)"),
        (NODE + "heartbeat = 1.0\n" + SPAN, r"unknown \[node\] keys: heartbeat \(did you mean"),
        (NODE + '[[spans]]\nmodel = "all-MiniLM-L6-v2"\nend = 3\n', r"#1 lacks start"),
        # integers are integers, not floats, strings or booleans
        (NODE + SPAN.replace("start = 0", "start = 0.9"), r"#1 start: expected an integer >= 0"),
        (NODE + SPAN.replace("start = 0", 'start = "abc"'), r"#1 start: .*got 'abc' \(string"),
        (NODE + SPAN.replace("end = 3", "end = true"), r"#1 end: .*got True \(boolean\)"),
        (NODE + SPAN.replace('"all-MiniLM-L6-v2"', "7"), r"#1 model: expected a non-empty str"),
        (NODE + "max_sessions = -1\n" + SPAN, r"max_sessions: expected an integer >= 1, got -1"),
        (NODE + "max_tokens = 0\n" + SPAN, r"max_tokens: expected an integer >= 1, got 0"),
        (NODE + "max_tokens = 2048.0\n" + SPAN, r"max_tokens: .*got 2048.0 \(float\)"),
        (NODE + "mpc_max_sessions = true\n" + SPAN, r"mpc_max_sessions: .*\(boolean\)"),
        # seconds are finite and positive (NaN used to pass 0 < heartbeat_s < dead_after_s)
        (NODE + "session_idle_s = -5\n" + SPAN, r"session_idle_s: expected a finite number"),
        (
            NODE + "heartbeat_s = nan\ndead_after_s = nan\n" + SPAN,
            r"heartbeat_s: expected a finite number of seconds > 0, got nan \(float\)",
        ),
        (NODE + "dead_after_s = inf\n" + SPAN, r"dead_after_s: expected a finite number"),
        (NODE + 'heartbeat_s = "2"\n' + SPAN, r"heartbeat_s: .*got '2' \(string\)"),
        (NODE + "heartbeat_s = 9\n" + SPAN, r"heartbeat_s < dead_after_s, got heartbeat_s = 9"),
        # strings, addresses and choices
        (NODE + "name = 5\n" + SPAN, r"\[node\] name: expected a non-empty string, got 5"),
        (NODE + 'data_dir = ""\n' + SPAN, r"\[node\] data_dir: expected a non-empty string"),
        (NODE + "listen = 7001\n" + SPAN, r"\[node\] listen: expected HOST:PORT"),
        (NODE + 'listen = "127.0.0.1"\n' + SPAN, r"listen: expected HOST:PORT .*0-65535"),
        (NODE + 'listen = "127.0.0.1:99999"\n' + SPAN, r"listen: expected HOST:PORT"),
        (NODE + 'advertise = "h:0"\n' + SPAN, r"advertise: expected HOST:PORT .*1-65535"),
        (NODE + 'seeds = ["a:1", 2]\n' + SPAN, r"\[node\] seeds\[1\]: expected a non-empty"),
        (NODE + 'seeds = "a:1,b"\n' + SPAN, r"\[node\] seeds item: expected HOST:PORT"),
        (NODE + 'metrics = "9101"\n' + SPAN, r"\[node\] metrics: expected HOST:PORT"),
        (NODE + 'metrics = "h:70000"\n' + SPAN, r"\[node\] metrics: expected HOST:PORT"),
        (NODE + 'device = "foo"\n' + SPAN, r"\[node\] device: expected auto, cpu, cuda or cuda:N"),
        (NODE + 'device = "meta"\n' + SPAN, r"\[node\] device: expected auto, cpu, cuda"),
        (NODE + "device = 0\n" + SPAN, r"\[node\] device: expected auto, .*got 0 \(integer"),
        (NODE + 'log_format = "xml"\n' + SPAN, r"log_format must be one of json, text"),
        (NODE + "enclave = 1\n" + SPAN, r"enclave must be one of auto, simulated, configfs"),
        (NODE + "fides_protocol = true\n" + SPAN, r"fides_protocol must be one of"),
        (NODE + "classifiers = [1]\n", r"\[node\] classifiers\[0\]: expected a non-empty"),
        (NODE + "classifiers = { a = 1 }\n", r"\[node\] classifiers.a: expected a non-empty"),
        (NODE + "fides_sealed = 5\n", r"\[node\] fides_sealed: expected an array"),
        (NODE + "fides_clients = [5]\n" + SPAN, r"\[node\] fides_clients\[0\]: expected"),
        ("[node]\n" + SPAN + "[tls]\nca = 5\n", r"\[tls\] ca: expected a non-empty string"),
    ],
)
def test_file_values_are_typed(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _load_text(tmp_path, text)


def test_every_node_key_is_checked(tmp_path: Path) -> None:
    """No [node] key the reader accepts takes a value of any type (a TOML datetime fits none)."""
    from secure_infer.config import _NODE_KEYS

    for key in _NODE_KEYS:
        node = "[node]\n" if key == "insecure_dev" else NODE
        with pytest.raises(ConfigError, match=rf"\[node\] {key}\b.*datetime"):
            _load_text(tmp_path, f"{node}{key} = 1979-05-27T07:32:00Z\n{SPAN}")


def test_valid_values_of_every_key(tmp_path: Path) -> None:
    """Strictness refuses nothing the format documents: every key, with integers for seconds."""
    for d in ("svc", "fides", "vit"):
        (tmp_path / d).mkdir()
    text = (
        "[node]\n"
        'name = "node-a"\nlisten = "[::1]:0"\nadvertise = "node-a.example:7001"\n'
        'seeds = "a:1, b:2"\ndevice = "cpu"\ndata_dir = "state"\nmetrics = ""\n'
        "insecure_dev = false\nheartbeat_s = 1\ndead_after_s = 4.5\nmax_sessions = 1\n"
        'session_idle_s = 0.5\nmax_tokens = 16\nlog_format = "text"\n'
        'mpc_models = ["all-MiniLM-L6-v2"]\nmpc_max_sessions = 3\n'
        'classifiers = { svc = "svc" }\nfides_verifiers = ["v=fides"]\n'
        'mpc_classifiers = "vit=vit"\nenclave = "simulated"\nfides_protocol = "verdicts"\n'
        'fides_sealed = ["s=owner"]\nfides_clients = ["v=alice", "s=bob"]\n' + TLS + SPAN
    )
    cfg = _load_text(tmp_path, text)
    s = cfg.settings
    assert (s.heartbeat_s, s.dead_after_s, s.session_idle_s) == (1.0, 4.5, 0.5)
    assert isinstance(s.heartbeat_s, float) and s.seeds == ("a:1", "b:2")
    assert (s.max_sessions, s.max_tokens, s.mpc_max_sessions) == (1, 16, 3)
    assert s.classifiers == (("svc", str(tmp_path / "svc")),)
    assert s.mpc_classifiers == (("vit", str(tmp_path / "vit")),)
    assert s.fides_clients == (("v", "alice"), ("s", "bob"))
    assert cfg.insecure_dev is False and cfg.tls is not None
    assert cfg.log_format == "text" and cfg.data_dir == tmp_path / "state"
    assert (
        load(
            None,
            {
                "insecure_dev": True,
                "metrics": "127.0.0.1:9101",
                "spans": [("all-MiniLM-L6-v2", 0, 6)],
            },
        ).metrics
        == "127.0.0.1:9101"
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"metrics": "9101"}, r"command line: \[node\] metrics: expected HOST:PORT"),
        ({"metrics": "127.0.0.1:0"}, r"metrics: expected HOST:PORT with a port 1-65535"),
        ({"device": "foo"}, r"command line: \[node\] device: expected auto, cpu, cuda"),
        ({"heartbeat_s": float("nan")}, r"command line: \[node\] heartbeat_s: expected a fin"),
        ({"dead_after_s": -1.0}, r"dead_after_s: expected a finite number of seconds > 0"),
        ({"seeds": "127.0.0.1"}, r"command line: \[node\] seeds item: expected HOST:PORT"),
        ({"spans": [("all-MiniLM-L6-v2", 0.5, 3)]}, r"span #1 start: expected an integer"),
    ],
)
def test_flag_values_are_typed(overrides: dict[str, object], message: str) -> None:
    base = {"insecure_dev": True, "spans": [("all-MiniLM-L6-v2", 0, 6)]}
    with pytest.raises(ConfigError, match=message):
        load(None, {**base, **overrides})


def test_cuda_must_be_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ "cuda" without CUDA, or a GPU index past the last, fails at load, naming the field; a
    file's device the flags replace is not held against the node."""
    import torch

    base = {"insecure_dev": True, "spans": [("all-MiniLM-L6-v2", 0, 6)]}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"device: 'cuda' requested but CUDA is not avail"):
        load(None, {**base, "device": "cuda"})
    assert load(None, {**base, "device": "auto"}).settings.device == "auto"
    path = tmp_path / "node.toml"
    path.write_text('[node]\ndevice = "cuda:0"\n')
    assert load(path, {**base, "device": "cpu"}).settings.device == "cpu"
    with pytest.raises(ConfigError, match=r"node.toml: \[node\] device: 'cuda:0' requested"):
        load(path, base)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert load(None, {**base, "device": "cuda:0"}).settings.device == "cuda:0"
    with pytest.raises(ConfigError, match=r"'cuda:3' requested but this machine has 1 GPU"):
        load(None, {**base, "device": "cuda:3"})
