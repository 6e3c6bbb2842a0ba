#!/usr/bin/env bash
# Wheels for the device machine's Python 3.12 (no package index there), into carry/whl:
# the peers for benchmarks/bench.py (learn2learn 0.2.0, built here; its runtime need gym; higher)
# and MuJoCo + gymnasium (optional: no step of benchmarks/gpu_check.sh needs them now).
#
#   PY312=/path/to/python3.12 bash benchmarks/peers/gpu_wheels.sh
#
# learn2learn ships only as an sdist with Cython extensions: its C is regenerated with `cython -3`
# (as in install_peers.sh) and built with a local Python 3.12 (PY312; pyenv has one here).
# mujoco-studio (12 MB, a viewer) is left out: `import mujoco` does not need it.
set -euo pipefail
if [ -z "${PY312:-}" ]; then
    PY312=python3.12; "$PY312" -c pass 2>/dev/null || PY312="$HOME/.pyenv/versions/3.12.1/bin/python3.12"
fi
DEST="${DEST:-carry/whl}"
mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"  # absolute: the learn2learn build runs in another folder
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$PY312" -m venv "$work/venv"
"$work/venv/bin/pip" install -q cython setuptools wheel numpy
"$work/venv/bin/pip" download -q --no-deps --no-binary :all: -d "$work" "learn2learn==0.2.0"
tar -xzf "$work/learn2learn-0.2.0.tar.gz" -C "$work"
find "$work/learn2learn-0.2.0/learn2learn" -name '*.pyx' -exec "$work/venv/bin/python" -m cython -3 --fast-fail {} \;
(cd "$work/learn2learn-0.2.0" && "$work/venv/bin/pip" wheel -q --no-build-isolation --no-deps -w "$DEST" .)
# pure-Python wheels (gym 0.26.2 is an sdist: built into a wheel here)
"$work/venv/bin/pip" wheel -q --no-deps -w "$DEST" "gym==0.26.2" "gym_notices==0.1.0" "higher==0.2.1"
"$work/venv/bin/pip" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" \
    "mujoco==4.0.0" "mujoco-core==4.0.0" "gymnasium==1.4.0" "farama-notifications==0.0.6" "glfw==2.11.0"
ls -la "$DEST"
