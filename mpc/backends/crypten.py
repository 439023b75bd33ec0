"""CrypTen 0.4.1 behind one module, with its compatibility fixes for torch 2.13 in one place.

CrypTen (facebookresearch/CrypTen) was last released in 2022-12. As published it neither
installs (dead `sklearn` dependency, pulls torchvision and a CUDA torch) nor imports on current
torch. The Makefile installs it with `--no-deps` plus its real imports (numpy, pyyaml,
omegaconf, onnx); this module applies the smallest fixes that make it import and run:

1. `crypten.nn.onnx_converter` probes `torch.onnx._internal.registration`, which moved to
   `torch.onnx._internal.torchscript_exporter.registration` in torch 2.9. The probe only
   decides which code path to take, so the moved module is aliased under the old name.
2. `crypten.nn.from_pytorch` calls `torch.onnx.export`, whose default is now the dynamo
   exporter (which ignores CrypTen's custom symbolics): the TorchScript exporter is selected
   with `dynamo=False`.

Nothing else in the project imports `crypten`: use `load()`.
"""

from __future__ import annotations

import importlib
import sys
import threading
from types import ModuleType

_LOCK = threading.Lock()
_CRYPTEN: ModuleType | None = None
CRYPTEN_VERSION = "0.4.1"


class CrypTenUnavailable(ImportError):
    """CrypTen is not installed (run `make install`), or not the version these fixes target."""


def _alias_onnx_registration() -> None:
    """Fix 1: make the old registry module path importable."""
    old = "torch.onnx._internal.registration"
    if old in sys.modules:
        return
    try:
        importlib.import_module(old)
        return
    except ImportError:
        pass
    moved = importlib.import_module("torch.onnx._internal.torchscript_exporter.registration")
    sys.modules[old] = moved


def _torchscript_onnx_export() -> None:
    """Fix 2: CrypTen's ONNX conversion needs the TorchScript exporter."""
    import torch.onnx

    converter = importlib.import_module("crypten.nn.onnx_converter")
    if getattr(converter, "_secure_infer_patched", False):
        return
    original = torch.onnx.export

    def export(*args: object, **kwargs: object) -> object:
        kwargs.setdefault("dynamo", False)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    # Patch only the name CrypTen's converter calls through, not torch globally.
    converter.torch = _TorchWithExport(torch, export)  # type: ignore[attr-defined]
    converter._secure_infer_patched = True  # type: ignore[attr-defined]


class _TorchWithExport:
    """A view of the torch module whose `onnx.export` defaults to the TorchScript exporter."""

    def __init__(self, torch_module: ModuleType, export: object) -> None:
        self._torch = torch_module
        self.onnx = _OnnxWithExport(torch_module.onnx, export)

    def __getattr__(self, name: str) -> object:
        return getattr(self._torch, name)


class _OnnxWithExport:
    def __init__(self, onnx_module: ModuleType, export: object) -> None:
        self._onnx = onnx_module
        self.export = export

    def __getattr__(self, name: str) -> object:
        return getattr(self._onnx, name)


def load() -> ModuleType:
    """Import CrypTen with the fixes applied; idempotent and thread-safe."""
    global _CRYPTEN
    with _LOCK:
        if _CRYPTEN is not None:
            return _CRYPTEN
        _alias_onnx_registration()
        try:
            crypten = importlib.import_module("crypten")
        except ModuleNotFoundError as exc:
            raise CrypTenUnavailable(
                "CrypTen is not installed: run `make install` (it installs crypten==0.4.1 "
                "with --no-deps)"
            ) from exc
        version = getattr(crypten, "__version__", "")
        if version and version != CRYPTEN_VERSION:
            raise CrypTenUnavailable(
                f"these compatibility fixes target CrypTen {CRYPTEN_VERSION}, found {version}"
            )
        _torchscript_onnx_export()
        _CRYPTEN = crypten
        return crypten
