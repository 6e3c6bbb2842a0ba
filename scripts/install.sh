#!/usr/bin/env bash
# Create .venv (if missing) and install fastmaml into it with the given extras (e.g. "test,rl").
# PyTorch: TORCH_SPEC picks the build (default torch==2.13.0; see README "Choosing a PyTorch build").
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}"
