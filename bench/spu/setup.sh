#!/usr/bin/env bash
# Create the isolated SecretFlow SPU 0.9.5 venv used by bench/spu/puma_minilm.py.
#
# SPU 0.9.5 pins numpy<2 and jax/jaxlib 0.4.34, which conflict with the project venv, so it gets
# its own venv at bench/spu/.venv (gitignored). It never touches /work/main/.venv and installs no
# torch: the reference model is written in jax.numpy and reads the safetensors file directly.
# Idempotent: re-running only installs what is missing, then prints the installed versions.
#
# Usage: bash bench/spu/setup.sh        (PYTHON=python3.11 by default; override with $PYTHON)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
PYTHON="${PYTHON:-python3.11}"

if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# spu brings jax/jaxlib 0.4.34 and numpy 1.26; the pins below only restate what it needs.
"$VENV/bin/python" -m pip install --quiet \
    "spu==0.9.5" "jax==0.4.34" "jaxlib==0.4.34" "numpy<2" \
    "safetensors>=0.4" "tokenizers>=0.15" "psutil>=5.9"

if "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "error: torch ended up in $VENV; it must not be there" >&2
    exit 1
fi
echo "SPU bench venv: $VENV"
"$VENV/bin/python" -m pip list --format=freeze \
    | grep -iE '^(spu|jax|jaxlib|numpy|safetensors|tokenizers|psutil)=='
