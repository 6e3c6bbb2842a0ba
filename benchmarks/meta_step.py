"""Time one meta-training iteration (meta-loss, backward, Adam step) per execution strategy.

Median of repeated timed iterations after warm-up, on pre-generated data, so only the meta-step
is measured. Prints a markdown table; used to choose ``MAML(strategy="auto")``'s rule.

    python benchmarks/meta_step.py --threads 1 2 --repeats 30
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from fastmaml import MAML, TaskBatch
from fastmaml.models.conv import ConvNet
from fastmaml.models.mlp import MLP


def sinusoid(tasks=25, shots=10):
    x = torch.rand(tasks, 2 * shots, 1) * 10 - 5
    y = torch.sin(x)
    return MLP(1, 1), F.mse_loss, 0.01, 1, TaskBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:])


def omniglot(tasks=32, ways=5, shots=1, queries=15, steps=1, lr=0.4):
    x = lambda n: torch.rand(tasks, ways * n, 1, 28, 28)  # noqa: E731
    y = lambda n: torch.arange(ways).repeat_interleave(n).expand(tasks, -1)  # noqa: E731
    return ConvNet(1, ways), F.cross_entropy, lr, steps, TaskBatch(x(shots), y(shots), x(queries), y(queries))


WORKLOADS = {
    "sinusoid (MLP 40-40, K=10, 25 tasks, 1 step)": sinusoid,
    "omniglot 5-way 1-shot (conv 64, 32 tasks, 15 queries, 1 step)": omniglot,
    "omniglot 20-way 1-shot (conv 64, 16 tasks, 5 queries, 5 steps)": lambda: omniglot(16, 20, 1, 5, 5, 0.1),
}


def time_step(maml: MAML, batch: TaskBatch, repeats: int, warmup: int = 3) -> float:
    opt = torch.optim.Adam(maml.parameters(), lr=1e-3)
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        opt.zero_grad()
        maml.meta_loss(batch).backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), help="substring of a workload name")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads available\n")
    print("| workload | order | threads | vmap ms | loop ms | loop/vmap |")
    print("|---|---|---|---|---|---|")
    for name, make in WORKLOADS.items():
        if not any(w in name for w in args.workloads):
            continue
        for first_order in (False, True):
            for threads in args.threads:
                torch.set_num_threads(threads)
                ms = {}
                for strategy in ("vmap", "loop"):
                    torch.manual_seed(0)
                    model, loss, lr, steps, batch = make()
                    maml = MAML(model, loss, inner_lr=lr, inner_steps=steps, first_order=first_order, strategy=strategy)
                    ms[strategy] = 1000 * time_step(maml, batch, args.repeats)
                order = "first" if first_order else "second"
                print(f"| {name} | {order} | {threads} | {ms['vmap']:.1f} | {ms['loop']:.1f} | {ms['loop'] / ms['vmap']:.2f} |",
                      flush=True)


if __name__ == "__main__":
    main()
