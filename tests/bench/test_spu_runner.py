"""Light checks of the SPU/PUMA reference runner (bench/spu/puma_minilm.py).

The runner lives in its own venv (bench/spu/.venv, made by bench/spu/setup.sh, because SPU pins
numpy<2 and jax 0.4.34), so these tests run it in that venv by subprocess and are skipped where
the venv has not been built. The full 3-party benchmark is not run here (minutes): only the
input validation, PUMA's plaintext approximations against exact softmax/GeLU, and the same two
functions executed by SPU's 3-party ABY3 simulator against plaintext, with stated tolerances.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "bench" / "spu" / "puma_minilm.py"
SPU_PYTHON = ROOT / "bench" / "spu" / ".venv" / "bin" / "python"

pytestmark = pytest.mark.skipif(
    not SPU_PYTHON.exists(), reason="SPU venv not built (run bash bench/spu/setup.sh)"
)

# PUMA's 4-piece GeLU vs erf GeLU on [-20, 30]: measured max abs error 0.0199.
GELU_TOL = 0.021
# Max-subtracted softmax with exp zeroed below -14: dropped mass <= T * e^-14 (8e-7 per entry).
SOFTMAX_TOL = 1e-4
# Same functions in SPU's ABY3/FM64 simulator (18 fractional bits). Softmax measured 0.0251: the
# Taylor exp with 5 iterations, (1 + x/32)^32, is 6% low at x = -2 (PUMA's setting, kept as is).
SPU_GELU_TOL = 0.03
SPU_SOFTMAX_TOL = 0.035


def _run_spu_python(code: str) -> dict[str, float]:
    out = subprocess.run(
        [str(SPU_PYTHON), "-c", code],
        cwd=RUNNER.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "in.json"
    bad.write_text(json.dumps({"sentences": ["ok", ""], "tokens": 32}))
    proc = subprocess.run(
        [str(SPU_PYTHON), str(RUNNER), "--model-dir", str(tmp_path), "--input", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "non-empty strings" in proc.stderr
    assert proc.stdout == ""


def test_puma_approximations_plaintext_and_under_spu() -> None:
    code = """
import json
import numpy as np
import spu, spu.libspu as libspu
from spu.utils import simulation
from puma_minilm import (
    exact_gelu, exact_softmax, puma_gelu, puma_softmax, runtime_config,
)
rng = np.random.default_rng(7)
x = np.linspace(-20.0, 30.0, 20001, dtype=np.float32)
scores = (rng.normal(0.0, 6.0, (16, 128))).astype(np.float32)
res = {
    "gelu": float(np.abs(puma_gelu(x) - exact_gelu(x)).max()),
    "softmax": float(np.abs(puma_softmax(scores) - exact_softmax(scores)).max()),
}
cfg = runtime_config(default_approx=False)
cfg.enable_pphlo_profile = False
sim = simulation.Simulator(3, cfg)
xs = np.linspace(-8.0, 8.0, 4001, dtype=np.float32)
res["spu_gelu"] = float(
    np.abs(simulation.sim_jax(sim, puma_gelu)(xs) - np.asarray(exact_gelu(xs))).max()
)
res["spu_softmax"] = float(
    np.abs(simulation.sim_jax(sim, puma_softmax)(scores) - np.asarray(exact_softmax(scores))).max()
)
print(json.dumps(res))
"""
    res = _run_spu_python(code)
    assert res["gelu"] < GELU_TOL
    assert res["softmax"] < SOFTMAX_TOL
    assert res["spu_gelu"] < SPU_GELU_TOL
    assert res["spu_softmax"] < SPU_SOFTMAX_TOL
