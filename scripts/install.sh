#!/usr/bin/env bash
# Create .venv (if missing) and install fastmaml into it with the given extras (e.g. "test,rl").
# PyTorch: TORCH_SPEC picks the build (default torch==2.13.0; see README "Choosing a PyTorch build").
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
[ -x .venv/bin/python ] || python3 -m venv .venv
# a run again (to add extras) keeps the torch already there: one picked with TORCH_SPEC or installed by
# hand with an --index-url was replaced by torch==2.13.0; TORCH_SPEC set installs it in any case
if [ -n "${TORCH_SPEC:-}" ] || ! .venv/bin/python -c "import torch" 2> /dev/null; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "${TORCH_SPEC:-torch==2.13.0}"
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}"
