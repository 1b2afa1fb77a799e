#!/usr/bin/env bash
# Install odekern into the active Python environment without ever pulling a CUDA torch build:
# torch is pinned to the 2.13.0 CPU wheel first, then odekern is built against it with
# --no-build-isolation (a build-isolated install would fetch a fresh, multi-GB torch).
# Usage: bash scripts/install.sh [extra ...]   e.g. `test`, `networks`
set -euo pipefail
cd "$(dirname "$0")/.."
extras="networks${1:+,$1}"
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet "setuptools>=64" wheel ninja
python -m pip install --quiet --no-build-isolation -e ".[${extras}]"
