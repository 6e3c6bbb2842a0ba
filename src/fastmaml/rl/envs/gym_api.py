"""gymnasium.Env views of the batched task environments (a batch of one), and their registration.

    import gymnasium, fastmaml.rl.envs
    env = gymnasium.make("fastmaml/HalfCheetahVel-v0")
    obs, info = env.reset(seed=0, options={"goal": 1.5})   # or env.unwrapped.set_task(1.5)

As in rllab, a task (goal) stays until it is changed; the first reset without one samples it from
the task distribution with the env's seeded generator. The time limit (100 or 200 steps) is
gymnasium's ``max_episode_steps``. Actions are in [-1, 1]^action_dim (rllab's normalised actions).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from fastmaml.rl._optional import require
from fastmaml.rl.envs.nav2d import Nav2dBatch

gymnasium = require("gymnasium")

ENV_IDS = {  # gymnasium id -> (entry point, kwargs, horizon)
    "fastmaml/Nav2d-v0": ("fastmaml.rl.envs.gym_api:Nav2dEnv", {}, Nav2dBatch.horizon),
    "fastmaml/HalfCheetahVel-v0": ("fastmaml.rl.envs.gym_api:LocomotionEnv", {"task": "cheetah-vel"}, 200),
    "fastmaml/HalfCheetahDir-v0": ("fastmaml.rl.envs.gym_api:LocomotionEnv", {"task": "cheetah-dir"}, 200),
    "fastmaml/AntVel-v0": ("fastmaml.rl.envs.gym_api:LocomotionEnv", {"task": "ant-vel"}, 200),
    "fastmaml/AntDir-v0": ("fastmaml.rl.envs.gym_api:LocomotionEnv", {"task": "ant-dir"}, 200),
}


class TaskEnv(gymnasium.Env):
    """One environment of a task batch (``Nav2dBatch``, ``LocomotionBatch``) with gymnasium's API."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, batch) -> None:
        self.batch = batch
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (batch.obs_dim,), np.float32)
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (batch.action_dim,), np.float32)
        self.goal: torch.Tensor | None = None

    def set_task(self, goal) -> None:
        """Use ``goal`` (shape ``batch.goal_shape``) from the next reset on."""
        goal = torch.as_tensor(np.asarray(goal, dtype=np.float64), dtype=torch.float32)
        if tuple(goal.shape) != self.batch.goal_shape:
            raise ValueError(f"goal must have shape {self.batch.goal_shape}, got {tuple(goal.shape)}")
        self.goal = goal

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        generator = torch.Generator().manual_seed(int(self.np_random.integers(2**62)))
        if options and "goal" in options:
            self.set_task(options["goal"])
        if self.goal is None:
            self.goal = self.batch.sample_goals(1, generator)[0]
        obs = self.batch.reset(self.goal[None], generator)
        return obs[0].numpy(), self._info()

    def step(self, action):
        obs, reward, done = self.batch.step(torch.as_tensor(np.asarray(action, dtype=np.float32))[None])
        return obs[0].numpy(), float(reward[0]), bool(done[0]), False, self._info()

    def _info(self) -> dict:
        return {"goal": self.goal.numpy().copy()}


class Nav2dEnv(TaskEnv):
    """2D navigation to a goal in [-0.5, 0.5]^2 (see ``fastmaml.rl.envs.nav2d``)."""

    def __init__(self) -> None:
        super().__init__(Nav2dBatch())


class LocomotionEnv(TaskEnv):
    """Half-cheetah or ant velocity / direction tasks (see ``fastmaml.rl.envs.locomotion``)."""

    def __init__(self, task: str) -> None:
        from fastmaml.rl.envs.locomotion import LocomotionBatch  # imports mujoco only when made

        super().__init__(LocomotionBatch(task))

    def set_task(self, goal) -> None:
        """As ``TaskEnv.set_task``; a direction task's goal is +1 (forward) or -1 (backward), the only
        values its reward g v was defined for (a velocity goal may lie outside the training range)."""
        if self.batch.task.goal == "direction" and np.asarray(goal, dtype=np.float64).tolist() not in (1.0, -1.0):
            raise ValueError(f"a direction task's goal is +1 (forward) or -1 (backward), got {goal!r}")
        super().set_task(goal)


def register_envs() -> None:
    """Register the ``fastmaml/...`` ids with gymnasium (idempotent)."""
    for env_id, (entry_point, kwargs, horizon) in ENV_IDS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(env_id, entry_point=entry_point, kwargs=kwargs, max_episode_steps=horizon)
