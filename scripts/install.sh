#!/usr/bin/env bash
# Install odekern into ./.venv (created with python3 -m venv if missing) without ever pulling a
# CUDA torch build: torch is pinned to the 2.13.0 CPU wheel first, then odekern is built against
# it with --no-build-isolation (a build-isolated install would fetch a fresh, multi-GB torch).
# Usage: bash scripts/install.sh [extra]   e.g. `test`, then run with .venv/bin/python
# ODEKERN_PYTHON=/path/to/python installs into that interpreter's environment instead.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${ODEKERN_PYTHON:-.venv/bin/python}"
if [ -z "${ODEKERN_PYTHON:-}" ] && [ ! -x "$python" ]; then
    python3 -m venv .venv
fi
extras="networks${1:+,$1}"
"$python" -m pip install --quiet torch==2.13.0
"$python" -m pip install --quiet "setuptools>=64" wheel ninja
"$python" -m pip install --quiet --no-build-isolation -e ".[${extras}]"
