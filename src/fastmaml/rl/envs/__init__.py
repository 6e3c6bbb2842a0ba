"""Task distributions for meta-RL as batched environments: B = tasks x trajectories at once.

Every batch has the same small interface, which the sampler uses:

    goals = env.sample_goals(num_tasks, generator)       # (T, *env.goal_shape)
    obs = env.reset(goals, generator)                    # one robot/agent per goal row: (B, obs_dim)
    obs, reward, done = env.step(actions)                # actions (B, action_dim) in [-1, 1]
    obs = env.restart(ended, generator)                  # new episodes where ended (B,) is True: (ended.sum(), obs_dim)

``env.reset(goals, generator, rows=slice(a, b))`` starts only rows a..b-1 of the batch, where they
would start in the whole batch (the random start noise is drawn for all rows): how the processes of
a ``torch.distributed`` run share one batch (``fastmaml.rl.sampler``). An environment of a user's
own needs ``rows`` only to be trained under torchrun.

``restart`` starts a new episode of the same goal for some rows in the middle of a rollout: the
step-budget sampler (``sampling="steps"``) calls it at every step for the rows whose episode just
ended (possibly none). Like ``reset`` it draws start noise for every row of the batch ``reset`` was
given, also outside its ``rows``, so a process's share restarts where the whole batch would. An
environment of a user's own needs it only for ``sampling="steps"``. Optionally ``env.stop(ended)``
ends those rows' episodes (no longer simulated, as after ``done``): the sampler calls it for rows none
of whose paths can still be kept (a slot beyond its task's kept paths, a task that has them all),
whose remaining simulation would be dropped; ``LocomotionBatch`` has it.

``Nav2dBatch`` (pure torch) and ``LocomotionBatch`` (MuJoCo; half-cheetah and ant, needs the ``rl``
extra). Importing this package registers gymnasium ids ``fastmaml/Nav2d-v0``,
``fastmaml/HalfCheetahVel-v0``, ``fastmaml/HalfCheetahDir-v0``, ``fastmaml/AntVel-v0`` and
``fastmaml/AntDir-v0`` when gymnasium is installed.
"""

from __future__ import annotations

from fastmaml.errors import ConfigError
from fastmaml.rl._optional import MissingExtraError
from fastmaml.rl.envs.nav2d import Nav2dBatch

__all__ = ["ENV_NAMES", "LocomotionBatch", "Nav2dBatch", "make_batch"]

ENV_NAMES = ("nav2d", "cheetah-vel", "cheetah-dir", "ant-vel", "ant-dir")


def make_batch(name: str, **kwargs):
    """The batched environment called ``name``, one of ``ENV_NAMES``."""
    if name not in ENV_NAMES:
        raise ConfigError(f"unknown environment {name!r}; choose one of {', '.join(ENV_NAMES)}")
    if name == "nav2d":
        return Nav2dBatch(**kwargs)
    from fastmaml.rl.envs.locomotion import LocomotionBatch

    return LocomotionBatch(name, **kwargs)


def __getattr__(name: str):
    if name == "LocomotionBatch":  # imported on first use: needs mujoco
        from fastmaml.rl.envs.locomotion import LocomotionBatch

        return LocomotionBatch
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


try:
    from fastmaml.rl.envs.gym_api import register_envs
except MissingExtraError:  # no gymnasium: nothing to register
    pass
else:
    register_envs()
