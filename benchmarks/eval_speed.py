"""Time of `fastmaml eval`'s adaptation curves: 600 meta-test tasks, 0..10 inner steps, per chunk size.

    python benchmarks/eval_speed.py                                  # CPU, Omniglot 20-way and 5-way 1-shot
    python benchmarks/eval_speed.py --device cuda --tasks 600        # as gpu_check.sh runs it
    python benchmarks/eval_speed.py --chunks 16 100 600 --strategies vmap loop

Why: on one H200 (2026-12-04) `fastmaml eval` of an Omniglot 20-way 1-shot run (600 tasks, 10 steps)
did not finish within 50 s, while the 5-way eval finished within 100 s; nothing was timed. The eval
vmaps chunks of 100 tasks (``engine.evaluate.adaptation_curves``), which turns every convolution of
the adapted model into a grouped convolution with 100 groups. This script times exactly that call
(the paper's conv net, the preset's loss, inner lr and 1 query per class) for several chunk sizes
and strategies, so the next GPU session can see where the time goes. The weights are a fresh
initialisation: the time depends on the shapes, not the values. Images are random tensors of
Omniglot's shape; sampling is timed separately by ``sampler_bench.py``.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time

import torch

from fastmaml.algorithms import MAML
from fastmaml.bench import image_batch
from fastmaml.core.batch import TaskBatch
from fastmaml.experiments.fewshot import accuracy, omniglot_config, xent_per_shot
from fastmaml.models.conv import ConvNet

WORKLOADS = {"omniglot-20w1s": (20, 1), "omniglot-5w1s": (5, 1)}


def time_eval(maml: MAML, batch: TaskBatch, steps: int, chunk: int, sync) -> tuple[float, float]:
    """Seconds for a first call on one chunk (tracing, kernel selection), then for all tasks."""
    metrics = (accuracy, torch.nn.functional.cross_entropy)
    metric = lambda pred, y: torch.stack([m(pred, y) for m in metrics])

    def run(tasks: TaskBatch) -> float:
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            for start in range(0, tasks.num_tasks, chunk):
                maml.adaptation_curve(tasks.slice(start, start + chunk), steps, metric).cpu()
        sync()
        return time.perf_counter() - t0

    return run(batch.slice(0, chunk)), run(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--chunks", type=int, nargs="+", default=[16, 100])
    parser.add_argument("--strategies", nargs="+", default=["vmap", "loop"], choices=["vmap", "loop"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    parser.add_argument("--out", default=None, help="also write the table to this markdown file")
    args = parser.parse_args()
    from fastmaml.engine.distributed import exit_unless_usable

    exit_unless_usable(args.device, __file__)  # one line on a machine without the GPU
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    lines = [
        (f"`python benchmarks/eval_speed.py {shlex.join(sys.argv[1:])}`; "
         f"{name}, torch {torch.__version__}, {torch.get_num_threads()} threads"),
        "",
        "| workload | strategy | chunk | first call, one chunk s | all tasks s | tasks/s |",
        "|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for workload in args.workloads:
        ways, shots = WORKLOADS[workload]
        config = omniglot_config(ways, shots)
        batch = image_batch(torch.Generator().manual_seed(0), args.tasks, ways, shots, 1, 1, 28).to(device)  # 1 query
        for strategy in args.strategies:
            for chunk in args.chunks if strategy == "vmap" else args.chunks[:1]:  # the loop runs task by task
                torch.manual_seed(0)
                model = ConvNet(1, ways, config.filters, image_size=28).to(device)
                maml = MAML(model, xent_per_shot(shots), inner_lr=config.inner_lr, strategy=strategy)
                first, rest = time_eval(maml, batch, args.steps, chunk, sync)
                line = f"| {workload} | {strategy} | {chunk} | {first:.2f} | {rest:.2f} | {args.tasks / rest:.0f} |"
                lines.append(line)
                print(line, flush=True)
                if args.out:  # rewritten after every row: a timeout keeps the rows done
                    with open(args.out, "w") as f:
                        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
