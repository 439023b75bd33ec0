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
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def parse_named_dirs(value: Any, key: str, base: Path) -> tuple[tuple[str, str], ...]:
    """NAME=DIR strings (a list, or one comma-separated string) or a {name: dir} table ->
    ((name, absolute dir), ...); each directory must exist."""
    if isinstance(value, dict):
        pairs = [(str(k), str(v)) for k, v in value.items()]
    else:
        items = [v for v in value.split(",") if v] if isinstance(value, str) else list(value)
        pairs = []
        for item in items:
            name, sep, directory = str(item).partition("=")
            if not sep or not name or not directory:
                raise ConfigError(f"{key}: expected NAME=DIR, got {item!r}")
            pairs.append((name, directory))
    out = []
    for name, directory in pairs:
        path = (base / directory).resolve()
        if not path.is_dir():
            raise ConfigError(f"{key}: {name}={directory}: {path} is not a directory")
        out.append((name, str(path)))
    if len({n for n, _ in out}) != len(out):
        raise ConfigError(f"{key}: a name appears twice")
    return tuple(out)


def _name_pairs(value: Any, key: str, expected: str) -> list[tuple[str, str]]:
    """NAME=VALUE strings (a list, or one comma-separated string) -> [(name, value), ...]."""
    items = [v for v in value.split(",") if v] if isinstance(value, str) else list(value)
    out = []
    for item in items:
        name, sep, rest = str(item).partition("=")
        if not sep or not name.strip() or not rest.strip():
            raise ConfigError(f"{key}: expected {expected}, got {item!r}")
        out.append((name.strip(), rest.strip()))
    return out


def parse_sealed(value: Any) -> tuple[tuple[str, str], ...]:
    """NAME=OWNER strings (a list, or one comma-separated string) -> ((name, owner CN), ...)."""
    out = _name_pairs(value, "fides_sealed", "NAME=OWNER (owner: a certificate CN)")
    if len({n for n, _ in out}) != len(out):
        raise ConfigError("fides_sealed: a name appears twice")
    return tuple(out)


def parse_clients(value: Any) -> tuple[tuple[str, str], ...]:
    """NAME=CN strings (a list, or one comma-separated string) -> ((verifier, client CN), ...);
    a verifier may appear with several CNs."""
    out = _name_pairs(value, "fides_clients", "NAME=CN (a client certificate's CN)")
    return tuple(dict.fromkeys(out))


def load(path: Path | None, overrides: dict[str, Any]) -> NodeConfig:
    """Read TOML (if given), apply non-None overrides, validate."""
    doc: dict[str, Any] = {}
    if path is not None:
        try:
            doc = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    base = path.parent if path is not None else Path.cwd()
    node = dict(doc.get("node", {}))
    tls = dict(doc.get("tls", {}))
    spans_doc = doc.get("spans", [])
    for key, value in overrides.items():
        if value is None:
            continue
        if key in ("ca", "cert", "key"):
            tls[key] = value
        elif key == "spans":
            spans_doc = [{"model": m, "start": s, "end": e} for m, s, e in value]
        else:
            node[key] = value
    unknown = set(node) - {
        "name",
        "listen",
        "advertise",
        "seeds",
        "device",
        "data_dir",
        "metrics",
        "insecure_dev",
        "heartbeat_s",
        "dead_after_s",
        "max_sessions",
        "session_idle_s",
        "max_tokens",
        "log_format",
        "mpc_models",
        "mpc_max_sessions",
        "classifiers",
        "fides_verifiers",
        "mpc_classifiers",
        "enclave",
        "fides_protocol",
        "fides_sealed",
        "fides_clients",
    }
    if unknown:
        raise ConfigError(f"unknown [node] keys: {', '.join(sorted(unknown))}")
    name = str(node.get("name", "node"))
    listen = str(node.get("listen", "127.0.0.1:0"))
    insecure = bool(node.get("insecure_dev", False))
    if insecure and not is_loopback(listen):
        raise ConfigError(f"insecure_dev is allowed only on loopback, not {listen}")
    try:
        spans = tuple(
            _check_span(str(s["model"]), int(s["start"]), int(s["end"])) for s in spans_doc
        )
    except KeyError as exc:
        raise ConfigError(f"[[spans]] entry lacks {exc}") from None
    mpc_models = node.get("mpc_models", [])
    if isinstance(mpc_models, str):
        mpc_models = [m for m in mpc_models.split(",") if m]
    from decentralized.mpc_worker import MPC_MODELS

    for model in mpc_models:
        if model not in MPC_MODELS:
            raise ConfigError(
                f"mpc_models: {model!r} cannot run under MPC; supported: {', '.join(MPC_MODELS)}"
            )
    classifiers = parse_named_dirs(node.get("classifiers", []), "classifiers", base)
    verifiers = parse_named_dirs(node.get("fides_verifiers", []), "fides_verifiers", base)
    mpc_classifiers = parse_named_dirs(node.get("mpc_classifiers", []), "mpc_classifiers", base)
    sealed = parse_sealed(node.get("fides_sealed", []))
    clash = {n for n, _ in verifiers} & {n for n, _ in sealed}
    if clash:
        raise ConfigError(f"fides_sealed: {', '.join(sorted(clash))} is also in fides_verifiers")
    clients = parse_clients(node.get("fides_clients", []))
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
    enclave = str(node.get("enclave", "auto"))
    from decentralized.classify_service import ENCLAVE_KINDS

    if enclave not in ENCLAVE_KINDS:
        raise ConfigError(f"enclave must be one of {', '.join(ENCLAVE_KINDS)}, got {enclave!r}")
    fides_protocol = str(node.get("fides_protocol", "distribution"))
    from verification.fides.enclave_app import PROTOCOLS

    if fides_protocol not in PROTOCOLS:
        raise ConfigError(
            f"fides_protocol must be one of {', '.join(PROTOCOLS)}, got {fides_protocol!r}"
        )
    if not (spans or mpc_models or classifiers or verifiers or mpc_classifiers or sealed):
        raise ConfigError(
            "the node serves nothing: add [[spans]] or --span MODEL:START:END, "
            "mpc_models / --mpc-model MODEL, --classifier / --fides-verifier NAME=DIR, or "
            "--fides-sealed NAME=OWNER"
        )
    material = None
    if not insecure:
        missing = [k for k in ("ca", "cert", "key") if k not in tls]
        if missing:
            raise ConfigError(
                f"[tls] lacks {', '.join(missing)} (create them with `secure-infer certs`), "
                "or run with --insecure-dev on loopback"
            )
        material = TLSMaterial(
            ca_cert=base / tls["ca"], cert=base / tls["cert"], key=base / tls["key"]
        )
    seeds = node.get("seeds", [])
    if isinstance(seeds, str):
        seeds = [s for s in seeds.split(",") if s]
    from secure_infer import __version__

    try:
        settings = NodeSettings(
            name=name,
            listen=listen,
            advertise=str(node.get("advertise", "")),
            seeds=tuple(str(s) for s in seeds),
            spans=spans,
            device=str(node.get("device", "auto")),
            heartbeat_s=float(node.get("heartbeat_s", 2.0)),
            dead_after_s=float(node.get("dead_after_s", 8.0)),
            max_sessions=int(node.get("max_sessions", 64)),
            session_idle_s=float(node.get("session_idle_s", 300.0)),
            max_tokens=int(node.get("max_tokens", 2048)),
            mpc_models=tuple(str(m) for m in mpc_models),
            mpc_max_sessions=int(node.get("mpc_max_sessions", 2)),
            classifiers=classifiers,
            fides_verifiers=verifiers,
            mpc_classifiers=mpc_classifiers,
            enclave=enclave,
            fides_protocol=fides_protocol,
            fides_sealed=sealed,
            fides_clients=clients,
            version=f"secure-infer {__version__}",
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid [node] value: {exc}") from None
    if settings.heartbeat_s <= 0 or settings.dead_after_s <= settings.heartbeat_s:
        raise ConfigError("need 0 < heartbeat_s < dead_after_s")
    return NodeConfig(
        settings=settings,
        data_dir=base / str(node.get("data_dir", name)),
        tls=material,
        insecure_dev=insecure,
        metrics=str(node.get("metrics", "")),
        log_format=str(node.get("log_format", "json")),
    )
