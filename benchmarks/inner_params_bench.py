"""Seconds per meta-gradient with every parameter adapted (MAML) and with the last layer alone
(``MAML(inner_params=[...])``, ANIL), on the paper's workloads (fastmaml.bench.WORKLOADS).

The meta-step as the trainer runs it (``meta_backward``, strategy "auto", eager, one worker), both
variants timed in turn (fastmaml.bench.time_interleaved) on one pre-generated meta-batch; the median
is printed as a markdown table.

    python benchmarks/inner_params_bench.py --threads 1 --repeats 20 [--workloads sinusoid omniglot-5w1s]
"""

from __future__ import annotations

import argparse
import platform
import statistics

import torch

from fastmaml import MAML
from fastmaml.bench import WORKLOADS, BenchConfig, time_interleaved

HEADS = {"sinusoid": ["net.4"]}  # the MLP's output layer; the conv nets' is "head"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["sinusoid", "omniglot-5w1s", "omniglot-20w1s"],
                        choices=list(WORKLOADS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--first-order", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} thread(s), "
          f"{'first' if args.first_order else 'second'} order, median of {args.repeats}\n")
    print("| workload | all adapted (s/it) | last layer adapted (s/it) | ratio |")
    print("|---|---|---|---|")
    for name in args.workloads:
        w = WORKLOADS[name]
        torch.manual_seed(0)
        batch = w.batch()
        runners = {}
        for label, inner in (("all", None), ("head", HEADS.get(name, ["head"]))):
            maml = MAML(w.make_model(), w.loss_fn, inner_lr=w.inner_lr, inner_steps=w.inner_steps,
                        first_order=args.first_order, inner_params=inner)
            runners[label] = lambda maml=maml, batch=batch: (maml.zero_grad(), maml.meta_backward(batch))
        times = time_interleaved(runners, BenchConfig(repeats=args.repeats, warmup=2), torch.device("cpu"))
        a, h = (statistics.median(times[k]) for k in ("all", "head"))
        print(f"| {w.description} | {a:.4f} | {h:.4f} | {a / h:.2f}x |")


if __name__ == "__main__":
    main()
