"""Seconds per meta-gradient with every parameter adapted (MAML) and with the last layer alone
(``MAML(inner_params=[...])``, ANIL), on the paper's workloads (fastmaml.bench.WORKLOADS); the
last-layer variant both running the whole model at every inner step (``reuse_features=False``) and
computing the body's features once per task (``reuse_features=True``, the default).

The meta-step as the trainer runs it (``meta_backward``, eager, one worker, ``--strategy``: "auto"
by default, which loops over tasks for conv nets on the CPU), the variants timed in turn
(fastmaml.bench.time_interleaved) on one pre-generated meta-batch; the median is printed as a
markdown table.

    python benchmarks/inner_params_bench.py --threads 1 --repeats 20 [--workloads sinusoid omniglot-5w1s]
"""

from __future__ import annotations

import argparse
import contextlib
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
    parser.add_argument("--strategy", default="auto", choices=["auto", "vmap", "loop"])
    parser.add_argument("--eval-steps", type=int, default=0,
                        help="time evaluation instead: adaptation_curve with this many steps, under no_grad")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} thread(s), "
          f"{'first' if args.first_order else 'second'} order, strategy {args.strategy}, median of {args.repeats}"
          + (f"; evaluation: adaptation_curve over {args.eval_steps} steps, no_grad" if args.eval_steps else "") + "\n")
    print("| workload | all adapted (s/it) | last layer, whole model per step (s/it) | last layer, features once "
          "(s/it) | all / features once | whole / features once |")
    print("|---|---|---|---|---|---|")
    for name in args.workloads:
        w = WORKLOADS[name]
        torch.manual_seed(0)
        batch = w.batch()
        runners = {}
        head = HEADS.get(name, ["head"])
        for label, inner, reuse in (("all", None, True), ("whole", head, False), ("once", head, True)):
            maml = MAML(w.make_model(), w.loss_fn, inner_lr=w.inner_lr, inner_steps=w.inner_steps,
                        first_order=args.first_order, inner_params=inner, reuse_features=reuse,
                        strategy=args.strategy)
            if args.eval_steps:
                runners[label] = lambda maml=maml, batch=batch: maml.adaptation_curve(batch, args.eval_steps)
            else:
                runners[label] = lambda maml=maml, batch=batch: (maml.zero_grad(), maml.meta_backward(batch))
        with torch.no_grad() if args.eval_steps else contextlib.nullcontext():
            times = time_interleaved(runners, BenchConfig(repeats=args.repeats, warmup=2), torch.device("cpu"))
        a, h, o = (statistics.median(times[k]) for k in ("all", "whole", "once"))
        print(f"| {w.description} | {a:.4f} | {h:.4f} | {o:.4f} | {a / o:.2f}x | {h / o:.2f}x |")


if __name__ == "__main__":
    main()
