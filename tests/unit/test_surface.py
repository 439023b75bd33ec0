"""Public surface and layering: every __all__ is sorted and real; lower layers stay lower."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "module", ["secure_infer", "secure_infer.errors", "decentralized.models", "tee"]
)
def test_all_is_sorted_and_exported(module: str) -> None:
    mod = importlib.import_module(module)
    names = mod.__all__
    assert names == sorted(names)
    for name in names:
        assert hasattr(mod, name), f"{module}.__all__ lists missing {name}"


def _imports(package: str) -> set[str]:
    found: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_decentralized_never_imports_the_sdk() -> None:
    assert "secure_infer" not in _imports("decentralized")


def test_no_pickle_on_the_wire() -> None:
    for package in ("decentralized", "secure_infer"):
        assert "pickle" not in _imports(package)


BOTTOM = ("mpc", "tee", "verification")


@pytest.mark.parametrize("package", BOTTOM)
def test_bottom_packages_import_no_grpc_and_no_other_layer(package: str) -> None:
    if not (ROOT / package).is_dir():
        pytest.skip(f"{package}/ does not exist yet")
    forbidden = {"grpc", "grpc_health", "decentralized", "secure_infer", *BOTTOM} - {package}
    assert _imports(package).isdisjoint(forbidden)
