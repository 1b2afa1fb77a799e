#!/usr/bin/env bash
# Install odekern into ./.venv (created with python3 -m venv if missing), saying what happens:
# torch 2.13.0 first (the CPU build from PyTorch's CPU index on a machine without an NVIDIA
# GPU, falling back to the default index), then odekern built against it with
# --no-build-isolation, its C++ build showing progress. A second run recompiles nothing that
# has not changed. The steps are in scripts/install.py; docs/install.md has both paths
# (CPU-only, CUDA) and the environment variables.
# Usage: bash scripts/install.sh [extra]   e.g. `test`, then run with .venv/bin/python
# ODEKERN_PYTHON=/path/to/python installs into that interpreter's environment instead.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${ODEKERN_PYTHON:-.venv/bin/python}"
if [ -z "${ODEKERN_PYTHON:-}" ] && [ ! -x "$python" ]; then
    echo "[install] creating ./.venv (python3 -m venv)"
    python3 -m venv .venv
fi
exec "$python" scripts/install.py "$@"
