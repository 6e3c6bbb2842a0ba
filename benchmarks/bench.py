"""The issue-5 benchmark suite: fastmaml vs a plain torch.func loop, learn2learn and higher.

The same benchmark as ``fastmaml bench`` (src/fastmaml/bench.py: workloads, implementations, the
meta-gradient check, interleaved timing, peak memory), run with learn2learn importable: its
torchvision import is shimmed first (benchmarks/peers/safe_import.py), here and in every memory
subprocess, which re-runs this file. Install the peers with benchmarks/peers/install_peers.sh.

    python benchmarks/bench.py --threads 1 --repeats 10 --sweep --out benchmarks/results/bench_cpu.md
    python benchmarks/bench.py --workloads sinusoid --repeats 2 --quick
    python benchmarks/bench.py --device cuda --out benchmarks/results/bench_h100.md    # on a GPU
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers"))

from safe_import import install_torchvision_shim  # noqa: E402

from fastmaml.bench import main  # noqa: E402

if __name__ == "__main__":
    install_torchvision_shim()
    sys.exit(main(prog="python benchmarks/bench.py", child_command=(sys.executable, os.path.abspath(__file__))))
