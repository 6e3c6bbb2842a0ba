"""Where the time of a second-order MAML meta-batch goes on one CPU thread, against what the core can do.

Issue #5 asks for 1.3x learn2learn on the conv workloads on the CPU. learn2learn, higher and
fastmaml's per-task loop call the same oneDNN convolutions, so a gain has to come from doing less
work or doing it on better-shaped kernels. This script bounds what is possible on the Omniglot
5-way 1-shot conv 64 problem (32 tasks, 1 inner step, 15 queries per class; meta-loss + backward,
no optimiser step) by splitting the per-task loop in two:

- ``query part``: each task's query forward + backward at θ with no inner step (75 images per task);
  every MAML variant must do at least this work, with per-task weights, once per task;
- ``query part as one batch``: the same images in one forward + backward (batch statistics over all
  tasks, so not MAML's computation: it shows what batching more images does to these kernels);
- ``support part``: the rest of the second-order loop (support forward, inner gradient with
  ``create_graph``, the double backward through it), measured as ``loop - query part``.

Floating-point operations are counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and
convolutions, forward and backward; element-wise work is not counted), and the core's reach is
measured with a large float32 matmul and a large convolution on the same thread. Rounds are
interleaved; the median of the timed rounds is reported.

    python benchmarks/cpu_roofline.py --repeats 7
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from conv_levers_bench import TASKS, problem, variants
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode


def timed(fn, calls: int) -> float:
    """Mean seconds of one call over ``calls`` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def flops(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"1 thread, load {os.getloadavg()[0]:.1f}")

    net, params, xs, ys, xq, yq = problem(args.queries, torch.float32)
    loop = variants(net, params, xs, ys, xq, yq)["loop"]

    def query_part():
        total = 0
        for t in range(TASKS):
            total = total + F.cross_entropy(functional_call(net, params, (xq[t],)), yq[t], reduction="sum")
        return total

    def query_one_batch():  # the same images and FLOPs, batch statistics over all 32 tasks' queries
        return F.cross_entropy(functional_call(net, params, (xq.flatten(0, 1),)), yq.flatten(), reduction="sum")

    def run(fn):
        def go():
            fn().backward()
            for p in params.values():
                p.grad = None
        return go

    a = torch.randn(1024, 1024)
    b = torch.randn(1024, 1024)
    images = torch.randn(256, 64, 14, 14)
    weight = torch.randn(64, 64, 3, 3)
    jobs = {
        "loop (second order)": run(loop),
        "query part": run(query_part),
        "query part as one batch of all tasks' images": run(query_one_batch),
        "matmul 1024x1024x1024": lambda: a @ b,
        "conv 64->64 3x3, 256 images 14x14": lambda: F.conv2d(images, weight, padding=1),
    }
    counts = {name: flops(job) for name, job in jobs.items()}
    times = {name: [] for name in jobs}
    for round_ in range(args.repeats + 1):  # round 0 warms up
        for name, job in jobs.items():
            seconds = timed(job, 5 if name.startswith(("matmul", "conv")) else 1)
            if round_:
                times[name].append(seconds)
    med = {name: statistics.median(v) for name, v in times.items()}
    med["support part (loop - query part)"] = med["loop (second order)"] - med["query part"]
    counts["support part (loop - query part)"] = counts["loop (second order)"] - counts["query part"]
    peak = med["matmul 1024x1024x1024"] and counts["matmul 1024x1024x1024"] / med["matmul 1024x1024x1024"]

    print("\n| work | s (median) | share of the loop | GFLOP | GFLOP/s | of the matmul's GFLOP/s |")
    print("|---|---|---|---|---|---|")
    order = ["loop (second order)", "query part", "support part (loop - query part)",
             "query part as one batch of all tasks' images",
             "matmul 1024x1024x1024", "conv 64->64 3x3, 256 images 14x14"]
    for name in order:
        rate = counts[name] / med[name]
        share = f"{med[name] / med['loop (second order)']:.0%}" if name in order[:4] else ""
        print(f"| {name} | {med[name]:.4f} | {share} | {counts[name] / 1e9:.2f} | {rate / 1e9:.1f} | {rate / peak:.0%} |")
    loop_s, query_s = med["loop (second order)"], med["query part"]
    print(f"\n- upper bound on any speed-up over the loop if the support part cost nothing: {loop_s / query_s:.2f}x")
    print(f"- upper bound if every counted FLOP ran at the matmul's rate: "
          f"{loop_s / (counts['loop (second order)'] / peak):.2f}x")
    print(f"- 1.3x the loop needs {loop_s / 1.3:.3f} s: the support part at most "
          f"{loop_s / 1.3 - query_s:.3f} s ({(loop_s / 1.3 - query_s) / max(med[order[2]], 1e-9):.0%} of now)")
    print(f"\nload at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
