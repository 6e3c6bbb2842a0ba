"""Meta-test return of a half-cheetah/ant *direction* run split by the task's direction (+1 forward,
-1 backward): the same 40 tasks, trajectories and step sizes as ``fastmaml eval``, MAML's policy only.

    python benchmarks/rl_per_direction.py runs/rl-cheetah-dir

A policy that does not know the direction should score about the same on both halves before
adaptation; a large gap shows a meta-learned bias towards one direction.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from fastmaml.engine.evaluate import EVAL_SEED
from fastmaml.engine.run_dir import read_config
from fastmaml.rl.maml_trpo import adaptation_returns
from fastmaml.rl.trainer import adapt_keys, load_policies


def main(run: Path, tasks: int = 40, steps: int = 3) -> None:
    _, config = read_config(run)
    torch.set_num_threads(1)
    methods, meta = load_policies(run, config)
    env, policy, params = methods[config.method]
    goals = env.sample_goals(tasks, torch.Generator().manual_seed(EVAL_SEED))
    lrs = [config.inner_lr] + [config.inner_lr * config.eval_lr_decay] * (steps - 1)
    per_task = adaptation_returns(
        env, policy, params, goals, torch.Generator().manual_seed(EVAL_SEED + 1), trajectories=config.eval_trajectories,
        lrs=lrs, horizon=config.horizon or None, discount=config.discount, gae_lambda=config.gae_lambda,
        strategy=config.strategy, adapt_keys=adapt_keys(config.method),
    )  # (steps + 1, tasks)
    direction = goals.reshape(tasks, -1)[:, 0]
    print(f"{run} at iteration {meta['step']}, {tasks} tasks; mean return after 0..{steps} inner steps:")
    for sign, name in ((1.0, "forward"), (-1.0, "backward")):
        mask = direction == sign
        means = ", ".join(f"{x:.1f}" for x in per_task[:, mask].mean(1).tolist())
        print(f"  {name:>8} ({int(mask.sum())} tasks): {means}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
