"""Seconds to evaluate a meta-batch of tasks (``MAML.adaptation_curve`` under ``torch.no_grad``, as
``fastmaml eval`` and training's validation run it) in one thread and in ``workers`` threads.

The paper's conv workloads (fastmaml.bench.WORKLOADS), their meta-test number of inner steps (10),
one torch thread per worker as ``fastmaml train`` runs them (``--set workers=2 --set threads=1``);
the variants are timed in turn (fastmaml.bench.time_interleaved) on one pre-generated batch of
``--tasks`` tasks, and their curves checked equal; the median is printed as a markdown table.

    python benchmarks/eval_workers_bench.py --repeats 7 [--workers 2] [--tasks 32] [--strategy vmap]

``--strategy vmap`` (the Omniglot 5-way 1-shot preset's): each worker vectorises a contiguous share
of the tasks (models of THREADED_VMAP_MIN_PARAMS parameters or more), against one vectorised call.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics

import torch

from fastmaml import MAML
from fastmaml.bench import WORKLOADS, BenchConfig, time_interleaved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["omniglot-5w1s", "omniglot-20w1s", "miniimagenet-5w1s"],
                        choices=list(WORKLOADS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=32, help="tasks per evaluated batch (default 32)")
    parser.add_argument("--steps", type=int, default=10, help="inner steps (default 10, the meta-test's)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--strategy", default="auto", choices=["auto", "loop", "vmap", "hybrid"],
                        help="MAML's strategy (default auto: the per-task loop for conv nets on the CPU)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"1 torch thread per worker, {args.tasks} tasks, {args.steps} steps, strategy {args.strategy}, "
          f"median of {args.repeats}\n")
    print(f"| workload | 1 thread (s) | {args.workers} workers (s) | speed-up | max abs difference |")
    print("|---|---|---|---|---|")
    for name in args.workloads:
        w = WORKLOADS[name]
        batch = w.make_batch(torch.Generator().manual_seed(0), args.tasks)
        torch.manual_seed(0)
        model = w.make_model()
        runs = {label: MAML(model, w.loss_fn, inner_lr=w.inner_lr, workers=workers, strategy=args.strategy)
                for label, workers in (("one", 1), ("workers", args.workers))}
        with torch.no_grad():
            curves = {label: maml.adaptation_curve(batch, args.steps) for label, maml in runs.items()}
            diff = (curves["one"] - curves["workers"]).abs().max().item()
            runners = {label: lambda maml=maml, batch=batch: maml.adaptation_curve(batch, args.steps)
                       for label, maml in runs.items()}
            times = time_interleaved(runners, BenchConfig(repeats=args.repeats, warmup=1), torch.device("cpu"))
        one, many = (statistics.median(times[k]) for k in ("one", "workers"))
        print(f"| {w.description} | {one:.3f} | {many:.3f} | {one / many:.2f}x | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
