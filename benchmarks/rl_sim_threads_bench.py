"""Robot-steps per second of the batched MuJoCo environments for 1, 2, ... stepping threads.

    python benchmarks/rl_sim_threads_bench.py --envs ant-dir cheetah-dir --robots 800 --steps 50 --threads 1 2

``LocomotionBatch(threads=N)`` (the meta-RL config's ``sim_threads``) splits the robots over N
threads; MuJoCo releases the GIL inside its functions, so the physics runs in parallel while the
Python around it (per robot: copying controls, reading observations) does not. Random actions,
the same for every thread count; rounds interleaved so that a change in machine load hits them
alike; the final state's checksum shows that every count computes the same trajectories.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from fastmaml.rl.envs.locomotion import LocomotionBatch


def rollout(env: LocomotionBatch, goals: torch.Tensor, actions: torch.Tensor) -> tuple[float, float]:
    """(seconds, checksum of the final positions) for one reset and ``len(actions)`` steps."""
    env.reset(goals, torch.Generator().manual_seed(1))
    start = time.perf_counter()
    for action in actions:
        env.step(action)
    return time.perf_counter() - start, float(env.qpos.sum())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--envs", nargs="+", default=["ant-dir", "cheetah-dir"])
    parser.add_argument("--robots", type=int, default=800, help="tasks x trajectories stepped together")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"# {args.robots} robots x {args.steps} steps, {args.rounds} interleaved rounds; torch "
          f"{torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}")
    for name in args.envs:
        envs = {n: LocomotionBatch(name, threads=n) for n in args.threads}
        some = next(iter(envs.values()))
        g = torch.Generator().manual_seed(0)
        goals = some.sample_goals(args.robots, g)
        actions = 1.2 * torch.randn(args.steps, args.robots, some.action_dim, generator=g, dtype=torch.float64)
        times = {n: [] for n in args.threads}
        sums = {}
        for _ in range(args.rounds):
            for n, env in envs.items():
                seconds, sums[n] = rollout(env, goals, actions)
                times[n].append(seconds)
        base = statistics.median(times[args.threads[0]])
        for n in args.threads:
            median = statistics.median(times[n])
            print(f"{name:>12}  threads {n}: {args.robots * args.steps / median:9,.0f} robot-steps/s "
                  f"({median:.2f} s, x{base / median:.2f})  checksum {sums[n]:.10f}")


if __name__ == "__main__":
    main()
