"""Seconds per MAML-TRPO meta-iteration (sampling vs the TRPO meta-update), per task-batching strategy.

    python benchmarks/rl_maml_bench.py --env nav2d --iterations 3 --strategies vmap loop
    python benchmarks/rl_maml_bench.py --env cheetah-vel --iterations 3 --strategies vmap

Paper settings per environment (``fastmaml.experiments.rl``); one torch thread. The first iteration
of each strategy is a warm-up (torch.func's first calls) and is reported separately. Strategies are
interleaved iteration by iteration so that a change in machine load hits them alike.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from fastmaml.experiments.rl import make_config
from fastmaml.rl import maml_trpo
from fastmaml.rl.trainer import _step_kwargs, make_env, make_policy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--env", default="nav2d")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--strategies", nargs="+", default=["vmap", "loop"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides (repeat --set, or give several after one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from fastmaml.config import apply_overrides

    config = apply_overrides(make_config(args.env), args.set)
    from fastmaml.engine.distributed import exit_unless_usable

    exit_unless_usable(config.device, __file__)  # one line on a machine without the GPU
    print(f"# {args.env}: meta_batch {config.meta_batch_size}, {config.trajectories} trajectories, "
          f"hvp {config.hvp}, hvp_tasks {config.hvp_tasks}, first_order {config.first_order}; torch "
          f"{torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")

    # time the two phases by wrapping the module's sampling and TRPO functions
    phases: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            out = fn(*a, **k)
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - start
            return out
        return wrapper

    maml_trpo.sample_and_adapt = timed("sample+adapt", maml_trpo.sample_and_adapt)
    maml_trpo.trpo_step = timed("trpo", maml_trpo.trpo_step)

    env = make_env(config)
    state = {}
    for strategy in args.strategies:
        policy, params = make_policy(config, env, config.seed)
        state[strategy] = (policy, params, torch.Generator().manual_seed(config.seed))
    times = {s: [] for s in args.strategies}
    for it in range(args.iterations + 1):
        for strategy in args.strategies:
            policy, params, generator = state[strategy]
            kwargs = {**_step_kwargs(config), "strategy": strategy, "inner_steps": config.inner_steps}
            phases.clear()
            start = time.perf_counter()
            params, stats = maml_trpo.maml_trpo_step(env, policy, params, generator, **kwargs)
            wall = time.perf_counter() - start
            state[strategy] = (policy, params, generator)
            label = "warm-up" if it == 0 else f"iter {it}"
            split = ", ".join(f"{k} {v:.2f} s" for k, v in phases.items())
            returns = f"{stats.returns[0]:.2f} -> {stats.returns[-1]:.2f}"
            print(f"{strategy:>5} {label:>8}: {wall:6.2f} s  ({split}); returns {returns}, load {os.getloadavg()[0]:.1f}")
            if it > 0:
                times[strategy].append(wall)
    for strategy, values in times.items():
        print(f"{strategy}: median {statistics.median(values):.2f} s per meta-iteration over {len(values)}")


if __name__ == "__main__":
    main()
