"""One table and one return-vs-steps figure for meta-RL runs trained apart (e.g. MAML, the
context-vector baseline and ``--set method=none`` for the other baselines) and evaluated alike.

    fastmaml eval RUN_A && fastmaml eval RUN_B ...
    python benchmarks/rl_compare_runs.py RUN_A RUN_B ... [--figure out.png]

The same as ``fastmaml compare RUN_A RUN_B ... [--figure out.png]`` (kept because the recorded
commands in README and benchmarks/results use it): see :mod:`fastmaml.engine.compare`.
"""

from __future__ import annotations

import sys

from fastmaml.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
