#!/usr/bin/env bash
# Run the tests against another PyTorch release, in a virtual environment of its own.
# usage: bash scripts/test_torch_version.sh 2.4.1 [pytest arguments, e.g. tests/unit/core/test_compile.py]
# The venv is .venv-torch<version> (git-ignored; VENV_DIR overrides), made with python3 (PYTHON
# overrides, e.g. PYTHON=python3.10, the oldest Python fastmaml supports). pip takes whichever build
# of that release its index serves (from PyPI on Linux: the CUDA one, about 3 GB with its libraries;
# it runs on the CPU where there is no GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:?usage: bash scripts/test_torch_version.sh VERSION [pytest arguments]}"
shift
venv="${VENV_DIR:-.venv-torch$version}"
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "torch==$version"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[test,rl]"
"$venv/bin/python" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__)"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
