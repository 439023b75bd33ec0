"""Node configuration: a TOML file, overridden by command-line flags.

Example ``node.toml``::

    [node]
    name = "node-a"                 # also the CN of the node's certificate
    listen = "127.0.0.1:7001"       # host:port to bind (port 0 = any free port)
    seeds = ["127.0.0.1:7002"]      # nodes to join through
    device = "auto"                 # auto | cpu | cuda | cuda:N
    data_dir = "node-a"             # identity key (Ed25519) is created here on first start
    metrics = "127.0.0.1:9101"      # Prometheus endpoint; "" disables it
    mpc_models = ["all-MiniLM-L6-v2"]  # run whole as an MPC party or dealer (optional)
    classifiers = ["mnist-cnn=models/mnist-cnn"]  # NAME=DIR plaintext classifiers (optional)
    fides_verifiers = ["mnist-cnn=models/fides-mnist"]  # NAME=DIR Fides verifiers (optional)
    fides_sealed = ["mnist-sealed=alice"]  # NAME=OWNER: a verifier its owner (the CN of a mesh
                                    # certificate) sends sealed to the enclave (optional)
    mpc_classifiers = ["mpcvit-mnist=models/mpcvit"]  # NAME=DIR MPCViT checkpoints under MPC
    enclave = "auto"                # verifiers' enclave: auto | simulated | configfs-tsm

    [tls]
    ca = "certs/ca.crt"
    cert = "certs/node-a.crt"
    key = "certs/node-a.key"


    [[spans]]
    model = "all-MiniLM-L6-v2"
    start = 0
    end = 3

Every key is checked, from the file and from the flags alike; anything else is a
`ConfigError` that names the file (or "command line"), the table, the key, what was expected
and what was found. The file may hold only the tables ``[node]``, ``[tls]`` and
``[[spans]]``, and each table only the keys below (a misspelt key is an error, not ignored).

``[node]`` (defaults in brackets):

- ``name`` string, not empty ["node"]; ``data_dir`` string, not empty [the name]. Relative
  paths (``data_dir``, ``[tls]``, NAME=DIR; flags' too) are taken from the config file's
  directory, or the working directory without a file.
- ``listen`` "HOST:PORT", port 0-65535 ["127.0.0.1:0"]; ``advertise`` "" or "HOST:PORT",
  port 1-65535 [""]; ``seeds`` array of "HOST:PORT" (or one comma-separated string) [[]];
  ``metrics`` "" or "HOST:PORT", port 1-65535 [""].
- ``insecure_dev`` boolean (``true``/``false``, never a string) [false]: plaintext gRPC,
  loopback ``listen`` only.
- ``device`` "auto", "cpu", "cuda" or "cuda:N" ["auto"]; "cuda" needs a visible GPU.
- ``heartbeat_s`` [2.0], ``dead_after_s`` [8.0], ``session_idle_s`` [300.0]: finite numbers
  > 0, with ``heartbeat_s < dead_after_s``.
- ``max_sessions`` [64], ``max_tokens`` [2048], ``mpc_max_sessions`` [2]: integers >= 1.
- ``log_format`` "json" | "text" ["json"]; ``enclave`` "auto" | "simulated" |
  "configfs-tsm" ["auto"]; ``fides_protocol`` "distribution" | "verdicts" ["distribution"].
- ``mpc_models`` array of model names (or a comma-separated string) [[]].
- ``classifiers``, ``fides_verifiers``, ``mpc_classifiers``: arrays of "NAME=DIR" strings
  (or a comma-separated string, or a ``{NAME = "DIR"}`` table); each DIR must exist [[]].
- ``fides_sealed`` "NAME=OWNER", ``fides_clients`` "NAME=CN": arrays of strings (or a
  comma-separated string) [[]].

``[tls]``: ``ca``, ``cert``, ``key``, path strings, all three required unless
``insecure_dev``. ``[[spans]]``: ``model`` string, ``start`` and ``end`` integers with
``0 <= start < end <= layers of the model``.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from decentralized.models import get_spec
from decentralized.node import NodeSettings
from decentralized.transport import is_loopback
from secure_infer.certs import TLSMaterial


class ConfigError(ValueError):
    """The configuration is invalid; the message names the field."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    settings: NodeSettings  # what the node runs
    data_dir: Path  # where the identity key lives
    tls: TLSMaterial | None  # None only with insecure_dev
    insecure_dev: bool  # plaintext gRPC on loopback, for development
    metrics: str  # "host:port" of the Prometheus endpoint, "" for none
    log_format: str  # "json" or "text"


COMMAND_LINE = "command line"  # the source named for values given as flags (overrides)
_TABLES = ("node", "tls", "spans")
_TLS_KEYS = ("ca", "cert", "key")
_SPAN_KEYS = ("model", "start", "end")
_DEVICE = "auto, cpu, cuda or cuda:N"


def _kind(value: Any) -> str:
    """The TOML name of a value's type, for messages."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def _bad(label: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"{label}: expected {expected}, got {value!r} ({_kind(value)})")


def _check_keys(where: str, what: str, keys: Any, known: Any) -> None:
    """Refuse keys outside `known`, suggesting the nearest known one for a typo."""
    unknown = sorted(str(k) for k in set(keys) - set(known))
    if not unknown:
        return
    named = []
    for key in unknown:
        close = difflib.get_close_matches(key, list(known), n=1)
        named.append(f"{key} (did you mean {close[0]}?)" if close else key)
    raise ConfigError(f"{where}: unknown {what}: {', '.join(named)}")


def _string(label: str, value: Any, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not empty and not value.strip()):
        raise _bad(label, "a string" if empty else "a non-empty string", value)
    return value


def _boolean(label: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _bad(label, "true or false (a boolean, not a string)", value)
    return value


def _integer(label: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(label, f"an integer >= {minimum}", value)
    return value


def _seconds(label: str, value: Any) -> float:
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
    if number is None or not math.isfinite(number) or number <= 0:
        raise _bad(label, "a finite number of seconds > 0", value)
    return float(number)


def _choice(label: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(
            f"{label} must be one of {', '.join(choices)}, got {value!r} ({_kind(value)})"
        )
    return value


def _host_port(label: str, value: Any, *, min_port: int = 1, empty: bool = False) -> str:
    """ "HOST:PORT" (IPv6 hosts in brackets), port in [min_port, 65535]; "" if `empty`."""
    if empty and value == "":
        return value
    expected = f"HOST:PORT with a port {min_port}-65535" + (' or ""' if empty else "")
    if not isinstance(value, str):
        raise _bad(label, expected, value)
    host, sep, port = value.rpartition(":")
    ok = (
        sep
        and host.strip("[]")
        and not any(c.isspace() for c in host)
        and port.isascii()
        and port.isdigit()
        and min_port <= int(port) <= 65535
    )
    if not ok:
        raise _bad(label, expected, value)
    return value


def _strings(label: str, value: Any, what: str) -> tuple[str, ...]:
    """An array of strings, or one comma-separated string -> the non-empty, stripped items."""
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if not isinstance(value, list | tuple):
        raise _bad(label, f"an array of {what} strings (or one comma-separated string)", value)
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise _bad(f"{label}[{i}]", f"a non-empty {what} string", item)
    return tuple(item.strip() for item in value)


def _pairs(
    label: str, value: Any, expected: str, *, table: bool = False
) -> tuple[tuple[str, str], ...]:
    """NAME=VALUE strings (an array, or one comma-separated string; or a {NAME = "VALUE"}
    table where `table`) -> ((name, value), ...)."""
    if table and isinstance(value, dict):
        for name, item in value.items():
            if not isinstance(item, str) or not item.strip():
                raise _bad(f"{label}.{name}", "a non-empty string", item)
        return tuple((str(k).strip(), v.strip()) for k, v in value.items())
    out = []
    for item in _strings(label, value, expected):
        name, sep, rest = item.partition("=")
        if not sep or not name.strip() or not rest.strip():
            raise ConfigError(f"{label}: expected {expected}, got {item!r}")
        out.append((name.strip(), rest.strip()))
    return tuple(out)


def _device(label: str, value: Any) -> str:
    """auto | cpu | cuda | cuda:N (syntax only: whether CUDA is here is checked by `load`)."""
    if value == "auto":
        return value
    if not isinstance(value, str):
        raise _bad(label, _DEVICE, value)
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError, TypeError):
        raise _bad(label, _DEVICE, value) from None
    if device.type not in ("cpu", "cuda"):
        raise _bad(label, _DEVICE, value)
    return value


def _device_present(label: str, value: str) -> None:
    """A CUDA device must be visible here (the node would fail to load its spans otherwise)."""
    if value == "auto":
        return
    device = torch.device(value)
    if device.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise ConfigError(
            f"{label}: {value!r} requested but CUDA is not available here (use auto or cpu)"
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(f"{label}: {value!r} requested but this machine has {count} GPU(s)")


_NAMED_DIRS = "NAME=DIR"
# [node] key -> check(label, value) -> the typed value. Each applies to the file's values and
# to the flags alike; checks that need the other keys or the machine are in `load`.
_NODE_KEYS: dict[str, Callable[[str, Any], Any]] = {
    "name": _string,
    "listen": lambda label, v: _host_port(label, v, min_port=0),
    "advertise": lambda label, v: _host_port(label, v, empty=True),
    "seeds": lambda label, v: tuple(
        _host_port(f"{label} item", s) for s in _strings(label, v, "HOST:PORT")
    ),
    "device": _device,
    "data_dir": _string,
    "metrics": lambda label, v: _host_port(label, v, empty=True),
    "insecure_dev": _boolean,
    "heartbeat_s": _seconds,
    "dead_after_s": _seconds,
    "max_sessions": _integer,
    "session_idle_s": _seconds,
    "max_tokens": _integer,
    "log_format": lambda label, v: _choice(label, v, ("json", "text")),
    "mpc_models": lambda label, v: _strings(label, v, "model name"),
    "mpc_max_sessions": _integer,
    "classifiers": lambda label, v: _pairs(label, v, _NAMED_DIRS, table=True),
    "fides_verifiers": lambda label, v: _pairs(label, v, _NAMED_DIRS, table=True),
    "mpc_classifiers": lambda label, v: _pairs(label, v, _NAMED_DIRS, table=True),
    "enclave": lambda label, v: _choice(label, v, _enclave_kinds()),
    "fides_protocol": lambda label, v: _choice(label, v, _fides_protocols()),
    "fides_sealed": lambda label, v: _pairs(label, v, "NAME=OWNER (owner: a certificate CN)"),
    "fides_clients": lambda label, v: _pairs(label, v, "NAME=CN (a client certificate's CN)"),
}


def _enclave_kinds() -> tuple[str, ...]:
    from decentralized.classify_service import ENCLAVE_KINDS

    return tuple(ENCLAVE_KINDS)


def _fides_protocols() -> tuple[str, ...]:
    from verification.fides.enclave_app import PROTOCOLS

    return tuple(PROTOCOLS)


def parse_span(text: str) -> tuple[str, int, int]:
    """ "MODEL:START:END" -> (model, start, end)."""
    try:
        model, start, end = text.rsplit(":", 2)
        return model, int(start), int(end)
    except ValueError:
        raise ConfigError(
            f"span {text!r}: expected MODEL:START:END, e.g. all-MiniLM-L6-v2:0:3"
        ) from None


def _check_span(model: str, start: int, end: int) -> tuple[str, int, int]:
    try:
        spec = get_spec(model)
    except Exception as exc:
        raise ConfigError(str(exc)) from None
    if not 0 <= start < end <= spec.num_layers:
        raise ConfigError(f"span {model}:{start}:{end} outside layers [0, {spec.num_layers})")
    return model, start, end


def _span(label: str, entry: Any) -> tuple[str, int, int]:
    """One [[spans]] table (or a (model, start, end) triple from --span), typed."""
    if isinstance(entry, tuple | list) and len(entry) == 3:
        entry = dict(zip(_SPAN_KEYS, entry, strict=True))
    if not isinstance(entry, dict):
        raise _bad(label, "a table with model, start and end", entry)
    _check_keys(label, "keys (known: model, start, end)", entry, _SPAN_KEYS)
    missing = [k for k in _SPAN_KEYS if k not in entry]
    if missing:
        raise ConfigError(f"{label} lacks {', '.join(missing)}")
    return (
        _string(f"{label} model", entry["model"]),
        _integer(f"{label} start", entry["start"], minimum=0),
        _integer(f"{label} end", entry["end"], minimum=1),
    )


def _named_dirs(
    label: str, pairs: tuple[tuple[str, str], ...], base: Path
) -> tuple[tuple[str, str], ...]:
    """((name, dir), ...) -> ((name, absolute dir), ...); each directory must exist."""
    out = []
    for name, directory in pairs:
        path = (base / directory).resolve()
        if not path.is_dir():
            raise ConfigError(f"{label}: {name}={directory}: {path} is not a directory")
        out.append((name, str(path)))
    if len({n for n, _ in out}) != len(out):
        raise ConfigError(f"{label}: a name appears twice")
    return tuple(out)


def _read(path: Path) -> dict[str, Any]:
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    _check_keys(str(path), "top-level tables (known: [node], [tls], [[spans]])", doc, _TABLES)
    for table in ("node", "tls"):
        if not isinstance(doc.get(table, {}), dict):
            raise _bad(f"{path}: {table}", f"a [{table}] table", doc[table])
    spans = doc.get("spans", [])
    if not isinstance(spans, list) or not all(isinstance(s, dict) for s in spans):
        raise _bad(f"{path}: spans", "[[spans]] tables (model, start, end)", spans)
    return doc


def load(path: Path | None, overrides: dict[str, Any]) -> NodeConfig:
    """Read TOML (if given), apply non-None overrides, validate."""
    doc = _read(path) if path is not None else {}
    base = path.parent if path is not None else Path.cwd()
    node: dict[str, Any] = {}  # key -> typed value
    labels: dict[str, str] = {}  # key -> "SOURCE: [node] key", where its value came from
    tls: dict[str, str] = {}
    spans: tuple[tuple[str, int, int], ...] = ()

    def node_value(source: str, key: str, value: Any) -> None:
        labels[key] = f"{source}: [node] {key}"
        node[key] = _NODE_KEYS[key](labels[key], value)

    if path is not None:
        file_node, file_tls = doc.get("node", {}), doc.get("tls", {})
        _check_keys(str(path), "[node] keys", file_node, _NODE_KEYS)
        _check_keys(str(path), "[tls] keys (known: ca, cert, key)", file_tls, _TLS_KEYS)
        for key, value in file_node.items():
            node_value(str(path), key, value)
        for key, value in file_tls.items():
            tls[key] = _string(f"{path}: [tls] {key}", value)
        spans = tuple(
            _span(f"{path}: [[spans]] #{i + 1}", s) for i, s in enumerate(doc.get("spans", []))
        )
    given = {k: v for k, v in overrides.items() if v is not None}
    _check_keys(COMMAND_LINE, "[node] keys", given, (*_NODE_KEYS, *_TLS_KEYS, "spans"))
    for key, value in given.items():
        if key in _TLS_KEYS:
            tls[key] = _string(f"{COMMAND_LINE}: [tls] {key}", str(value))
        elif key == "spans":
            if not isinstance(value, list | tuple):
                raise _bad(f"{COMMAND_LINE}: spans", "a list of (model, start, end)", value)
            spans = tuple(_span(f"{COMMAND_LINE}: span #{i + 1}", s) for i, s in enumerate(value))
        else:
            node_value(COMMAND_LINE, key, value)

    def label(key: str) -> str:
        return labels.get(key, key)

    name = node.get("name", "node")
    listen = node.get("listen", "127.0.0.1:0")
    insecure = node.get("insecure_dev", False)
    if insecure and not is_loopback(listen):
        raise ConfigError(f"insecure_dev is allowed only on loopback, not {listen}")
    spans = tuple(_check_span(*s) for s in spans)
    device = node.get("device", "auto")
    _device_present(label("device"), device)
    mpc_models = node.get("mpc_models", ())
    from decentralized.mpc_worker import MPC_MODELS

    for model in mpc_models:
        if model not in MPC_MODELS:
            raise ConfigError(
                f"{label('mpc_models')}: {model!r} cannot run under MPC; "
                f"supported: {', '.join(MPC_MODELS)}"
            )
    classifiers = _named_dirs(label("classifiers"), node.get("classifiers", ()), base)
    verifiers = _named_dirs(label("fides_verifiers"), node.get("fides_verifiers", ()), base)
    mpc_classifiers = _named_dirs(label("mpc_classifiers"), node.get("mpc_classifiers", ()), base)
    sealed = node.get("fides_sealed", ())
    if len({n for n, _ in sealed}) != len(sealed):
        raise ConfigError(f"{label('fides_sealed')}: a name appears twice")
    clash = {n for n, _ in verifiers} & {n for n, _ in sealed}
    if clash:
        raise ConfigError(f"fides_sealed: {', '.join(sorted(clash))} is also in fides_verifiers")
    clients = tuple(dict.fromkeys(node.get("fides_clients", ())))
    strangers = {n for n, _ in clients} - {n for n, _ in verifiers} - {n for n, _ in sealed}
    if strangers:
        raise ConfigError(
            f"fides_clients: {', '.join(sorted(strangers))} is not a verifier of this node "
            "(fides_verifiers or fides_sealed)"
        )
    if clients and insecure:
        raise ConfigError(
            "fides_clients needs mTLS: with insecure_dev there is no client certificate to check"
        )
    if not (spans or mpc_models or classifiers or verifiers or mpc_classifiers or sealed):
        raise ConfigError(
            "the node serves nothing: add [[spans]] or --span MODEL:START:END, "
            "mpc_models / --mpc-model MODEL, --classifier / --fides-verifier NAME=DIR, or "
            "--fides-sealed NAME=OWNER"
        )
    heartbeat_s = node.get("heartbeat_s", 2.0)
    dead_after_s = node.get("dead_after_s", 8.0)
    if dead_after_s <= heartbeat_s:
        raise ConfigError(
            f"need 0 < heartbeat_s < dead_after_s, got heartbeat_s = {heartbeat_s} "
            f"({label('heartbeat_s')}) and dead_after_s = {dead_after_s} "
            f"({label('dead_after_s')})"
        )
    material = None
    if not insecure:
        missing = [k for k in _TLS_KEYS if k not in tls]
        if missing:
            raise ConfigError(
                f"[tls] lacks {', '.join(missing)} (create them with `secure-infer certs`), "
                "or run with --insecure-dev on loopback"
            )
        material = TLSMaterial(
            ca_cert=base / tls["ca"], cert=base / tls["cert"], key=base / tls["key"]
        )
    from secure_infer import __version__

    settings = NodeSettings(
        name=name,
        listen=listen,
        advertise=node.get("advertise", ""),
        seeds=node.get("seeds", ()),
        spans=spans,
        device=device,
        heartbeat_s=heartbeat_s,
        dead_after_s=dead_after_s,
        max_sessions=node.get("max_sessions", 64),
        session_idle_s=node.get("session_idle_s", 300.0),
        max_tokens=node.get("max_tokens", 2048),
        mpc_models=mpc_models,
        mpc_max_sessions=node.get("mpc_max_sessions", 2),
        classifiers=classifiers,
        fides_verifiers=verifiers,
        mpc_classifiers=mpc_classifiers,
        enclave=node.get("enclave", "auto"),
        fides_protocol=node.get("fides_protocol", "distribution"),
        fides_sealed=sealed,
        fides_clients=clients,
        version=f"secure-infer {__version__}",
    )
    return NodeConfig(
        settings=settings,
        data_dir=base / node.get("data_dir", name),
        tls=material,
        insecure_dev=insecure,
        metrics=node.get("metrics", ""),
        log_format=node.get("log_format", "json"),
    )
