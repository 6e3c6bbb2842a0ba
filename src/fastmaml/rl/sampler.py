"""Sample N trajectories for each of T tasks at once: one batched environment of B = T x N agents
and one policy evaluation per time step for the whole batch."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from fastmaml.rl.policy import sample_actions

DistributionFn = Callable[[Tensor], tuple[Tensor, Tensor]]  # obs (T, N, obs_dim) -> (μ, log σ)


class Trajectories(NamedTuple):
    """N trajectories of H steps for each of T tasks.

    ``observations (T, N, H, obs_dim)`` is the state each action was taken in; ``actions
    (T, N, H, action_dim)``; ``rewards (T, N, H)``; ``mask (T, N, H)`` is 1 for steps inside the
    episode (up to and including the step that ended it) and 0 after, where rewards are 0.
    """

    observations: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor

    @property
    def returns(self) -> Tensor:
        """Undiscounted return of each trajectory: (T, N)."""
        return self.rewards.sum(-1)


@torch.no_grad()
def sample_trajectories(
    env,
    distribution: DistributionFn,
    goals: Tensor,
    num_trajectories: int,
    generator: torch.Generator,
    horizon: int | None = None,
    rows: slice | None = None,
) -> Trajectories:
    """Roll out ``num_trajectories`` episodes of ``horizon`` (default ``env.horizon``) steps per goal.

    ``env`` is a batched environment (``fastmaml.rl.envs``); ``goals`` (T, ...) one per task;
    ``distribution(obs)`` maps observations (T, N, obs_dim) to the policy's (μ, log σ), e.g. with
    per-task adapted parameters under ``torch.vmap``. Actions and the environment's start noise come
    from ``generator``, so a seed fixes the whole batch.

    ``rows=slice(a, b)`` rolls out tasks a..b-1 of ``goals`` only (one process's share under
    torch.distributed; ``distribution`` then sees those tasks' observations): every random number
    is still drawn for all tasks and the share's are used, so each task's trajectories are the ones
    the whole batch would give it, and ``generator`` ends in the same state in every process.
    """
    if num_trajectories < 1:
        raise ValueError(f"num_trajectories must be >= 1, got {num_trajectories}")
    horizon = env.horizon if horizon is None else horizon
    starts = goals.repeat_interleave(num_trajectories, dim=0)
    total = len(goals)
    first, stop, stride = (slice(None) if rows is None else rows).indices(total)
    if stride != 1:
        raise ValueError(f"rows must be a contiguous slice of the tasks, got {rows}")
    tasks = max(stop - first, 0)
    if rows is None:  # an environment of a user's own need not know rows
        obs = env.reset(starts, generator)
    else:
        obs = env.reset(starts, generator, rows=slice(first * num_trajectories, stop * num_trajectories))
    alive = torch.ones(tasks * num_trajectories, dtype=torch.bool)
    observations, actions, rewards, masks = [], [], [], []
    for _ in range(horizon):
        obs = obs.reshape(tasks, num_trajectories, -1)
        mean, log_std = distribution(obs)
        noise = torch.randn((total, *mean.shape[1:]), generator=generator, dtype=mean.dtype, device=mean.device)
        action = sample_actions(mean, log_std, noise=noise[first:stop])  # the whole batch's noise, these rows
        next_obs, reward, done = env.step(action.reshape(tasks * num_trajectories, -1))
        observations.append(obs)
        actions.append(action)
        rewards.append(reward.reshape(tasks, num_trajectories))
        masks.append(alive.reshape(tasks, num_trajectories))
        alive = ~done
        obs = next_obs
    stack = lambda xs: torch.stack(xs, dim=2)  # noqa: E731 - (T, N, H, ...)
    return Trajectories(stack(observations), stack(actions), stack(rewards), stack(masks).to(rewards[0].dtype))
