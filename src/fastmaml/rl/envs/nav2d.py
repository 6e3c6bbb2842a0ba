"""2D navigation (Finn et al., 2017, section 5.3), batched over tasks and trajectories in tensors.

A point agent starts at (0, 0) and moves towards a goal g ~ U[-0.5, 0.5]^2 (one goal per task):

    x_{t+1} = x_t + 0.1 * clip(a_t, -1, 1)          (each step moves at most 0.1 per axis)
    r_t     = -||x_{t+1} - g||                      (distance after the step)
    done    = |x_{t+1} - g|_i < 0.01 for both axes  (within 0.01 of the goal, per axis)

as in cbfinn/maml_rl ``point_env_randgoal.py`` behind rllab's ``normalize`` wrapper: the policy acts
in [-1, 1]^2 and the wrapper rescales to the env's action box [-0.1, 0.1]^2 and clips. Horizon 100.
After ``done`` an agent stays where it is and gets reward 0 (its episode is over; samplers mask it)
until ``restart`` puts it back at the origin for a new episode of the same goal.
"""

from __future__ import annotations

import torch
from torch import Tensor

GOAL_LOW, GOAL_HIGH = -0.5, 0.5
MAX_STEP = 0.1  # bound of the action box [-0.1, 0.1]^2 in the original env
GOAL_TOLERANCE = 0.01
HORIZON = 100


class Nav2dBatch:
    """B independent point agents, B = tasks x trajectories, stepped in one tensor operation."""

    obs_dim = 2
    action_dim = 2
    goal_shape: tuple[int, ...] = (2,)
    horizon = HORIZON

    def __init__(self, *, dtype: torch.dtype = torch.float32) -> None:
        self.dtype = dtype
        self.goals = self.position = self.done = torch.empty(0)

    @staticmethod
    def sample_goals(num_tasks: int, generator: torch.Generator) -> Tensor:
        """Goals uniform in [-0.5, 0.5]^2: shape (num_tasks, 2)."""
        return GOAL_LOW + (GOAL_HIGH - GOAL_LOW) * torch.rand(num_tasks, 2, generator=generator)

    def reset(self, goals: Tensor, generator: torch.Generator | None = None, rows: slice | None = None) -> Tensor:
        """Start every agent at the origin with its goal from ``goals`` (B, 2); returns obs (B, 2).

        ``generator`` is accepted for the common batch interface; the start state has no noise.
        ``rows``: start only those agents of the batch (one process's share under torch.distributed).
        """
        del generator
        goals = torch.as_tensor(goals, dtype=self.dtype)
        if goals.dim() != 2 or goals.shape[1] != 2:
            raise ValueError(f"Nav2d goals must have shape (batch, 2), got {tuple(goals.shape)}")
        if rows is not None:
            goals = goals[rows]
        self.goals = goals.clone()
        self.position = torch.zeros_like(self.goals)
        self.done = torch.zeros(len(goals), dtype=torch.bool)
        return self.position.clone()

    def restart(self, ended: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Start a new episode (same goal, at the origin) for the agents where ``ended`` (B,) is True;
        returns their observations (ended.sum(), 2). The step-budget sampler calls it for every agent
        whose episode just ended. ``generator``: the common interface; the start has no noise."""
        del generator
        ended = torch.as_tensor(ended, dtype=torch.bool)
        if ended.shape != self.done.shape:
            raise ValueError(f"restart's ended must be a bool mask of shape {tuple(self.done.shape)}, "
                             f"got {tuple(ended.shape)}")
        self.position[ended] = 0.0
        self.done[ended] = False
        return self.position[ended].clone()

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Move all agents by ``actions`` (B, 2) in [-1, 1]; returns obs (B, 2), reward (B,), done (B,)."""
        if self.goals.numel() == 0:
            raise RuntimeError("call reset(goals) before step(actions)")
        actions = torch.as_tensor(actions, dtype=self.dtype)
        if actions.shape != self.position.shape:
            raise ValueError(
                f"actions must have shape {tuple(self.position.shape)} (batch, 2), got {tuple(actions.shape)}"
            )
        moved = self.position + MAX_STEP * actions.clamp(-1.0, 1.0)
        running = ~self.done
        self.position = torch.where(running[:, None], moved, self.position)
        offset = self.position - self.goals
        reward = torch.where(running, -offset.norm(dim=1), torch.zeros_like(offset[:, 0]))
        self.done = self.done | (offset.abs() < GOAL_TOLERANCE).all(dim=1)
        return self.position.clone(), reward, self.done.clone()
