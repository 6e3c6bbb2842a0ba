#!/usr/bin/env bash
# Install the libraries `fastmaml bench` compares against: higher 0.2.1 and learn2learn 0.2.0.
# Optional: the benchmark marks a peer that is missing as "not installed" and goes on.
#
#   bash benchmarks/peers/install_peers.sh                        # into `python`
#   PYTHON=.venv/bin/python bash benchmarks/peers/install_peers.sh  # into the project's venv
#
# - higher 0.2.1 installs from its wheel as is.
# - learn2learn 0.2.0 ships only as an sdist whose Cython-generated C does not compile on Python
#   3.11 (it uses CPython internals that 3.11 removed). Regenerating the C from its .pyx files with
#   a current Cython (`cython -3`) and building without build isolation, against the torch already
#   installed, works. Pinning torch and torchvision in a constraints file stops pip from replacing
#   the installed torch (learn2learn asks for torchvision, which asks for a matching torch).
#   learn2learn is installed with --no-deps, then only what `import learn2learn` needs: its full
#   requirement list pulls qpth (numpy<2: it downgraded numpy and broke pandas here), gsutil and
#   cvxpy, none of which MAML uses. numpy is pinned to the installed version for the same reason.
# - Importing learn2learn imports torchvision, whose compiled ops may not load beside a CPU-only
#   torch from another index; benchmarks/peers/safe_import.py works around that at import time.
# Each peer is installed on its own: a failure is reported and the script goes on with the other.
set -uo pipefail
PYTHON="${PYTHON:-python}"
# a relative path (e.g. .venv/bin/python) must survive the `cd` into learn2learn's source below
case "$PYTHON" in */*) PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")" ;; esac
TORCH_VERSION="$("$PYTHON" -c 'import torch; print(torch.__version__.split("+")[0])')" || {
    echo "install_peers: torch is not importable with $PYTHON; install fastmaml first" >&2; exit 2; }
TORCHVISION_VERSION="${TORCHVISION_VERSION:-0.28.0}"  # the torchvision release that pairs with torch 2.13
status=0

echo "== higher 0.2.1"
if ! "$PYTHON" -m pip install --quiet "higher==0.2.1"; then
    echo "install_peers: higher 0.2.1 did not install (see pip's message above)" >&2; status=1
fi

echo "== learn2learn 0.2.0 (sdist, C regenerated with cython -3, torch $TORCH_VERSION, torchvision $TORCHVISION_VERSION)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
install_learn2learn() {
    local numpy_version
    numpy_version="$("$PYTHON" -c 'import numpy; print(numpy.__version__)' 2>/dev/null)" || numpy_version=""
    printf 'torch==%s\ntorchvision==%s\n' "$TORCH_VERSION" "$TORCHVISION_VERSION" > "$work/constraints.txt"
    [ -n "$numpy_version" ] && printf 'numpy==%s\n' "$numpy_version" >> "$work/constraints.txt"
    "$PYTHON" -m pip install --quiet -c "$work/constraints.txt" cython setuptools wheel numpy || return 1
    "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: -d "$work" "learn2learn==0.2.0" || return 1
    tar -xzf "$work"/learn2learn-0.2.0.tar.gz -C "$work" || return 1
    local src="$work/learn2learn-0.2.0" pyx
    find "$src/learn2learn" -name '*.pyx' | while read -r pyx; do
        "$PYTHON" -m cython -3 --fast-fail "$pyx" || exit 1   # writes the .c next to it
    done || return 1
    (cd "$src" && "$PYTHON" -m pip install --quiet --no-build-isolation --no-deps .) || return 1
    # What `import learn2learn` imports (learn2learn.gym needs gym; data and vision need the rest).
    "$PYTHON" -m pip install --quiet -c "$work/constraints.txt" \
        "torchvision==$TORCHVISION_VERSION" "gym>=0.14.0" scipy requests tqdm || return 1
}
if ! install_learn2learn; then
    echo "install_peers: learn2learn 0.2.0 did not install (see the messages above)" >&2; status=1
fi

echo "== check"
HERE="$(cd "$(dirname "$0")" && pwd)"
"$PYTHON" - "$HERE" <<'EOF'
import sys
sys.path.insert(0, sys.argv[1])
from safe_import import peer_versions
for name, version in peer_versions().items():
    print(f"{name}: {version}")
EOF
exit $status
