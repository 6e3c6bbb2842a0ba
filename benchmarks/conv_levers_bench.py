"""Two levers issue #5 lists for the conv nets, measured on one CPU thread against the per-task loop
that ``MAML(strategy="auto")`` uses on the CPU (Omniglot 5-way 1-shot conv 64, 32 tasks, 1 inner
step, second order; meta-loss + backward, no optimiser step):

- ``loop``: the reference, one task at a time (autograd, ``create_graph=True``);
- ``loop channels_last``: the same with every image batch in channels-last memory format;
- ``shared first step``: the inner gradients of all tasks in one ``vmap(grad)`` whose weights are
  not batched (every task starts from θ, so the support forward is one convolution over all tasks'
  images), then the per-task query forwards in a loop;
- ``vmap``: the whole meta-batch in one ``vmap`` (per-task weights after the step: grouped
  convolutions).

The vmap variants run batch norm from primitive ops (``fastmaml.core.exact_vmap_ops``): the fused
kernel's second-order gradients are wrong under vmap (``fastmaml.core.norm``). Every variant's
meta-gradient is compared with the loop's in float64 first. Rounds are interleaved so that a change
in machine load hits every variant alike; the median of the timed rounds is reported.

    python benchmarks/conv_levers_bench.py --queries 1 15 --repeats 7
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from fastmaml.core import exact_vmap_ops
from fastmaml.models.conv import ConvNet

TASKS, WAYS, SHOTS, LR = 32, 5, 1, 0.4


def problem(queries: int, dtype: torch.dtype):
    torch.manual_seed(0)
    net = ConvNet(1, WAYS).to(dtype)
    params = {k: v.detach().requires_grad_() for k, v in net.named_parameters()}
    xs = torch.rand(TASKS, WAYS * SHOTS, 1, 28, 28, dtype=dtype)
    xq = torch.rand(TASKS, WAYS * queries, 1, 28, 28, dtype=dtype)
    ys = torch.arange(WAYS).repeat_interleave(SHOTS).expand(TASKS, -1)
    yq = torch.arange(WAYS).repeat_interleave(queries).expand(TASKS, -1)
    return net, params, xs, ys, xq, yq


def variants(net, params, xs, ys, xq, yq):
    def loss(p, x, y):
        return F.cross_entropy(functional_call(net, p, (x,)), y, reduction="sum") / SHOTS

    def step(p, g):
        return {k: v - LR * g[k] for k, v in p.items()}

    def loop(fmt=torch.contiguous_format):
        total = 0
        for t in range(TASKS):
            s, q = xs[t].contiguous(memory_format=fmt), xq[t].contiguous(memory_format=fmt)
            g = dict(zip(params, torch.autograd.grad(loss(params, s, ys[t]), list(params.values()), create_graph=True)))
            total = total + loss(step(params, g), q, yq[t])
        return total

    def shared_first_step():
        with exact_vmap_ops():
            g = vmap(grad(loss), in_dims=(None, 0, 0))(params, xs, ys)
        total = 0
        for t in range(TASKS):
            total = total + loss(step(params, {k: v[t] for k, v in g.items()}), xq[t], yq[t])
        return total

    def whole_vmap():
        def one(s, y, q, yy):
            return loss(step(params, grad(loss)(params, s, y)), q, yy)

        with exact_vmap_ops():
            return vmap(one)(xs, ys, xq, yq).sum()

    return {
        "loop": loop,
        "loop channels_last": lambda: loop(torch.channels_last),
        "shared first step": shared_first_step,
        "vmap": whole_vmap,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, nargs="+", default=[1, 15])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{args.threads} thread(s), load {os.getloadavg()[0]:.1f}")
    print("\n| queries per class | variant | s per meta-batch (median) | loop / variant | max abs. grad diff / max abs. grad (float64) |")
    print("|---|---|---|---|---|")
    for queries in args.queries:
        net, params, *data = problem(queries, torch.float64)
        fns = variants(net, params, *data)
        ref = torch.autograd.grad(fns["loop"](), list(params.values()))
        scale = max(a.abs().max().item() for a in ref)  # over all entries: conv biases before batch norm get ~0
        diffs = {}
        for name, fn in fns.items():
            got = torch.autograd.grad(fn(), list(params.values()))
            diffs[name] = max((a - b).abs().max().item() for a, b in zip(ref, got)) / scale
        net, params, *data = problem(queries, torch.float32)
        fns = variants(net, params, *data)
        times = {name: [] for name in fns}
        for round_ in range(args.repeats + 1):  # round 0 warms up
            for name, fn in fns.items():
                start = time.perf_counter()
                fn().backward()
                if round_:
                    times[name].append(time.perf_counter() - start)
                for p in params.values():
                    p.grad = None
        base = statistics.median(times["loop"])
        for name, values in times.items():
            median = statistics.median(values)
            print(f"| {queries} | {name} | {median:.3f} | {base / median:.2f} | {diffs[name]:.1e} |")
    print(f"\nload at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
