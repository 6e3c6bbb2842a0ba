"""Meta-test return after one inner step at other step sizes than the run's own, split by direction
for direction tasks: does a longer step from the meta-learned initialisation help?

    python benchmarks/rl_inner_lr_probe.py runs/rl-cheetah-dir-kl02 0.1 0.2 0.4

Same 40 tasks, trajectories and action noise as ``fastmaml eval`` (its seed), MAML's (or the
context vector's) policy of the run, one step at each lr.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fastmaml.engine.evaluate import EVAL_SEED
from fastmaml.engine.run_dir import read_config
from fastmaml.rl.trainer import by_direction, is_direction_env, load_policies, meta_test_returns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("lrs", type=float, nargs="+")
    parser.add_argument("--tasks", type=int, default=40)
    args = parser.parse_args()
    _, config = read_config(args.run)
    torch.set_num_threads(1)
    methods, meta = load_policies(args.run, config)
    env, policy, params = methods[config.method]
    goals = env.sample_goals(args.tasks, torch.Generator().manual_seed(EVAL_SEED))
    print(f"{args.run} ({config.method}) at iteration {meta['step']}, {args.tasks} tasks; return before -> after one step")
    for lr in args.lrs:
        returns = meta_test_returns(config, config.method, env, policy, params, goals, [lr], EVAL_SEED + 1)  # (2, tasks)
        parts = {"all": returns, **(by_direction(returns, goals) if is_direction_env(env) else {})}
        print(f"  lr {lr:g}: " + ", ".join(f"{name} {r[0].mean():.1f} -> {r[1].mean():.1f}" for name, r in parts.items()))


if __name__ == "__main__":
    main()
