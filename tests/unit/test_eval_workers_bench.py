"""benchmarks/eval_workers_bench.py runs and finds the threaded evaluation equal to one thread's."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "eval_workers_bench.py"


def test_the_eval_workers_benchmark_prints_one_row_per_workload_with_equal_curves():
    out = subprocess.run([sys.executable, str(SCRIPT), "--workloads", "omniglot-5w1s", "--tasks", "3", "--steps", "1",
                          "--repeats", "1", "--workers", "2"], capture_output=True, text=True, timeout=300, check=True)
    rows = [line for line in out.stdout.splitlines() if line.startswith("| Omniglot 5-way 1-shot")]
    assert len(rows) == 1, out.stdout
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert float(cells[1]) > 0 and float(cells[2]) > 0 and cells[3].endswith("x")
    assert float(cells[4]) == 0.0  # the curves of 2 workers equal one thread's
