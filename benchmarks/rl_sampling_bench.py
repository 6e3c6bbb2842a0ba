"""Sampling time of ``sampling="trajectories"`` (K episodes per task) against ``sampling="steps"`` (the
original's budget of K x H completed steps per task, episodes restarted as they end), one sampling
round of the paper's initial 100-100 policy at preset settings, one torch thread; with the paths and
steps per task each mode collects and their mean length (in the trajectories row, that of every
episode, which the step budget's kept paths should match on average: module docstring of
``fastmaml.rl.sampler``), the lockstep steps a round took and the robot-steps it simulated per task
(agents not yet done nor stopped at each step, kept or not). A meta-iteration samples two such
rounds (before and after adaptation), plus one per trained baseline.

    python benchmarks/rl_sampling_bench.py [--envs nav2d ant-dir] [--repeats 3]

Prints a markdown table (median of the repeats, each on fresh goals and noise).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from fastmaml.experiments.rl import COLUMNS, SETTINGS
from fastmaml.rl import GaussianMLPPolicy, action_distribution, sample_trajectories
from fastmaml.rl.envs import make_batch


def preset(name: str) -> tuple[int, int]:
    """(meta-batch, trajectories per task) of the ``fastmaml train rl --env name`` preset."""
    values = dict(zip(COLUMNS, SETTINGS[name], strict=True))
    return values["meta_batch_size"], values["trajectories"]


class Counting:
    """The environment, counting lockstep steps and the agents stepped (not done, not stopped)."""

    def __init__(self, env):
        self.env, self.steps, self.stepped = env, 0, 0

    def step(self, actions):
        self.steps += 1
        self.stepped += int((~torch.as_tensor(self.env.done)).sum())
        return self.env.step(actions)

    def __getattr__(self, name):  # everything else, stop included where the environment has it
        return getattr(self.env, name)


def one_round(name: str, sampling: str, seed: int) -> tuple[float, torch.Tensor, torch.Tensor, int, int]:
    """Seconds, paths per task, completed steps per task, lockstep steps and agents stepped (all
    tasks) of one sampling round."""
    env, generator = Counting(make_batch(name)), torch.Generator().manual_seed(seed)
    tasks, trajectories = preset(name)
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(env.obs_dim, env.action_dim)
    params = {k: p.detach() for k, p in policy.named_parameters()}
    goals = env.sample_goals(tasks, generator)
    started = time.perf_counter()
    traj = sample_trajectories(env, lambda obs: action_distribution(policy, params, obs), goals, trajectories,
                               generator, sampling=sampling)
    seconds = time.perf_counter() - started
    return seconds, traj.paths.double(), traj.mask.sum((1, 2)).double(), env.steps, env.stepped


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=["nav2d", "ant-dir"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{cpu_name()} ({os.cpu_count()} cores), torch {torch.__version__}, 1 thread, "
          f"median of {args.repeats}\n")
    print("| env (tasks x K, H) | sampling | s per round | paths per task (mean, min-max) | steps per task (mean) "
          "| steps per path | lockstep steps (each round) | robot-steps per task |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.envs:
        tasks, trajectories = preset(name)
        horizon = make_batch(name).horizon
        for sampling in ("trajectories", "steps"):
            runs = [one_round(name, sampling, seed) for seed in range(args.repeats)]
            seconds = statistics.median(r[0] for r in runs)
            paths, steps = torch.cat([r[1] for r in runs]), torch.cat([r[2] for r in runs])
            print(f"| {name} ({tasks} x {trajectories}, {horizon}) | {sampling} | {seconds:.2f} | "
                  f"{paths.mean():.1f} ({paths.min():.0f}-{paths.max():.0f}) | {steps.mean():.0f} | "
                  f"{steps.sum() / paths.sum():.1f} | {', '.join(str(r[3]) for r in runs)} | "
                  f"{statistics.mean(r[4] for r in runs) / tasks:.0f} |", flush=True)


if __name__ == "__main__":
    main()
