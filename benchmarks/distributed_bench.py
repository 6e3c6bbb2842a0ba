"""Meta-training throughput with 1, 2, ... processes under torchrun (torch.distributed, gloo on the CPU).

Each run is the real command a user types, ``torchrun --standalone --nproc_per_node P -m fastmaml
train PRESET``, with the same global meta-batch whatever P (each rank meta-trains on its slice of
the tasks; one all-reduce of the flat meta-gradient per iteration). Seconds per iteration come from
the run's own ``metrics.jsonl`` (``elapsed_s`` between the first and last logged row, so start-up,
data loading and the first iterations are excluded). Also a plain single-process run without
torchrun, to show the cost of the distributed machinery itself.

    python benchmarks/distributed_bench.py --procs 1 2 --out benchmarks/results/distributed_cpu.md
    python benchmarks/distributed_bench.py --presets omniglot --omniglot ../shared/data/omniglot
    python benchmarks/distributed_bench.py --presets rl-ant-dir rl-cheetah-dir --no-plain \
        --out benchmarks/results/rl_distributed_cpu.md

The ``rl-*`` presets are MAML-TRPO at each environment's preset (``fastmaml.experiments.rl``), without
the trained baselines: each process samples, adapts and differentiates through its share of the tasks, and the
TRPO step sums gradients, Hessian-vector products and line-search values (``fastmaml.rl.trpo``). They
have no ``workers`` setting; a single process under torchrun takes the plain path there
(``--no-plain`` skips the repeat).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

# preset: (train arguments, iterations, log_every, meta-batch)
PRESETS = {
    "sinusoid": (["sinusoid", "--set", "baseline=false"], 3000, 500, 25),
    "omniglot": (["omniglot", "--ways", "5", "--shots", "1", "--set", "val_every=0"], 60, 10, 32),
    "rl-nav2d": (["rl", "--env", "nav2d", "--set", "baselines="], 6, 1, 20),
    "rl-cheetah-dir": (["rl", "--env", "cheetah-dir", "--set", "baselines="], 3, 1, 40),
    "rl-ant-dir": (["rl", "--env", "ant-dir", "--set", "baselines="], 3, 1, 40),
}


def seconds_per_iteration(run_dir: Path) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "elapsed_s" in r]
    if len(rows) < 2:
        raise RuntimeError(f"{run_dir}: fewer than two logged rows; raise --iterations")
    first, last = rows[0], rows[-1]
    return (last["elapsed_s"] - first["elapsed_s"]) / (last["step"] - first["step"])


def run_one(preset: str, procs: int | None, workers: int, args: argparse.Namespace, workdir: Path) -> tuple[float, float]:
    """(seconds per iteration, wall seconds) of one training run; ``procs=None``: no torchrun."""
    train_args, iterations, log_every, _ = PRESETS[preset]
    iterations = args.iterations or iterations
    out = workdir / f"{preset}-{procs or 'plain'}-{workers}"
    settings = [f"iterations={iterations}", f"log_every={log_every}", f"checkpoint_every={iterations}", "threads=1"]
    if not preset.startswith("rl-"):
        settings.append(f"workers={workers}")
    command = [*train_args, "--out", str(out), "--no-progress"]
    for setting in settings:
        command += ["--set", setting]
    if preset == "omniglot" and args.omniglot:
        command += ["--set", f"root={args.omniglot}"]
    launcher = [sys.executable, "-m", "fastmaml", "train"] if procs is None else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
        "-m", "fastmaml", "train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run([*launcher, *command], capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(launcher + command)} failed:\n{proc.stderr[-2000:]}")
    return seconds_per_iteration(out), wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["sinusoid"], choices=list(PRESETS))
    parser.add_argument("--procs", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--iterations", type=int, help="override the preset's benchmark length")
    parser.add_argument("--workers", type=int, nargs="+", default=[0],
                        help="MAML worker threads per process (0: auto, the cores divided among the processes)")
    parser.add_argument("--omniglot", help="Omniglot root for the omniglot preset")
    parser.add_argument("--out", help="also write the markdown report here")
    parser.add_argument("--no-plain", action="store_true", help="skip the run without torchrun")
    args = parser.parse_args()
    load = os.getloadavg()
    lines = ["# Meta-training throughput vs processes (torchrun, gloo)", "", "```",
             "python " + " ".join(["benchmarks/distributed_bench.py", *sys.argv[1:]]), "```", "",
             (f"- {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, python "
              f"{platform.python_version()}, torch {torch.__version__}, 1 torch thread per process"),
             f"- load average at the start: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}", "",
             ("| preset | launcher | processes | workers per process | s / iteration | tasks/s | speed-up vs 1 process"
              " | wall s |"),
             "|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            meta_batch = PRESETS[preset][3]
            for workers in [0] if preset.startswith("rl-") else args.workers:
                base = None
                for procs in [*([] if args.no_plain else [None]), *args.procs]:
                    s_it, wall = run_one(preset, procs, workers, args, Path(tmp))
                    if procs == 1:
                        base = s_it
                    speed_up = "-" if procs is None or base is None else f"{base / s_it:.2f}x"
                    shown_workers = "-" if preset.startswith("rl-") else workers or "auto"
                    row = (f"| {preset} | {'plain' if procs is None else 'torchrun'} | {procs or 1} | "
                           f"{shown_workers} | {s_it:.4f} | {meta_batch / s_it:,.1f} | {speed_up} | {wall:.0f} |")
                    print(row, file=sys.stderr, flush=True)
                    lines.append(row)
    load = os.getloadavg()
    lines += ["", f"- load average at the end: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
