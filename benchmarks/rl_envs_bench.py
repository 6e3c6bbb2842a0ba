"""Steps per second of the batched RL environments and sampler, against gymnasium's vector envs and
MuJoCo's open-loop batched rollout (the physics alone). One torch thread.

    python benchmarks/rl_envs_bench.py    # markdown table, about a minute on 2 cores

The gymnasium HalfCheetah-v5 row needs gymnasium's own MuJoCo extra (``pip install "gymnasium[mujoco]"``).
"""

from __future__ import annotations

import os
import platform
import tempfile
import time

import numpy as np
import torch

import fastmaml.rl.envs  # noqa: F401 - registers the gymnasium ids
from fastmaml.rl import GaussianMLPPolicy, action_distribution, fit_linear_baseline, sample_trajectories
from fastmaml.rl.envs import make_batch

SETTINGS = {"nav2d": (20, 20), "cheetah-vel": (40, 20), "ant-vel": (40, 20)}  # (tasks, trajectories): the paper's


def timed(fn):
    """``fn()`` and the seconds it took: (result, wall seconds, CPU seconds of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def env_only(name: str, tasks: int, trajectories: int) -> tuple[int, float, float]:
    """Random actions, no policy: (simulated steps, seconds)."""
    env, g = make_batch(name), torch.Generator().manual_seed(0)
    goals = env.sample_goals(tasks, g).repeat_interleave(trajectories, dim=0)
    actions = torch.rand(env.horizon, len(goals), env.action_dim, generator=g) * 2 - 1

    def run():
        env.reset(goals, g)
        alive = 0
        for a in actions:
            alive += int((~env.done).sum())  # agents still in their episode
            env.step(a)
        return alive

    alive, wall, cpu = timed(run)
    return alive, wall, cpu


def with_policy(name: str, tasks: int, trajectories: int) -> tuple[int, float, float]:
    """The sampler with the paper's 100-100 policy: (simulated steps, seconds)."""
    env, g = make_batch(name), torch.Generator().manual_seed(0)
    policy = GaussianMLPPolicy(env.obs_dim, env.action_dim)
    params = dict(policy.named_parameters())
    goals = env.sample_goals(tasks, g)
    traj, wall, cpu = timed(
        lambda: sample_trajectories(env, lambda o: action_distribution(policy, params, o), goals, trajectories, g)
    )
    return int(traj.mask.sum()), wall, cpu


def gymnasium_vector(env_id: str, num_envs: int, steps: int, **kwargs) -> tuple[int, float, float]:
    import gymnasium

    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch:  # gymnasium's half_cheetah.xml makes MuJoCo 4 write MUJOCO_LOG.TXT
        os.chdir(scratch)
        try:
            envs = gymnasium.vector.SyncVectorEnv([lambda: gymnasium.make(env_id, **kwargs) for _ in range(num_envs)])
        finally:
            os.chdir(cwd)
    envs.reset(seed=0)
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, *envs.action_space.shape)).astype(np.float32)
    _, wall, cpu = timed(lambda: [envs.step(a) for a in actions])
    return num_envs * steps, wall, cpu


def mujoco_rollout(robot: str, batch: int, steps: int) -> tuple[int, float, float]:
    """Open-loop ``mujoco.rollout`` in C, one thread: the physics cost alone (no observations, no policy)."""
    import mujoco
    from mujoco import rollout

    from fastmaml.rl.envs.locomotion import load_model

    model = load_model(robot)
    data = mujoco.MjData(model)
    state = np.zeros(mujoco.mj_stateSize(model, mujoco.mjtState.mjSTATE_FULLPHYSICS))
    mujoco.mj_getState(model, data, state, mujoco.mjtState.mjSTATE_FULLPHYSICS)
    control = np.random.default_rng(0).uniform(-1, 1, (batch, steps, model.nu))
    _, wall, cpu = timed(lambda: rollout.rollout(model, data, np.tile(state, (batch, 1)), control))
    return batch * steps, wall, cpu


def main() -> None:
    torch.set_num_threads(1)
    rows, skipped = [], []
    for name, (tasks, trajectories) in SETTINGS.items():
        shape = f"{tasks} tasks x {trajectories} traj"
        rows.append((f"{name} batch, random actions", shape, *env_only(name, tasks, trajectories)))
        rows.append((f"{name} sampler + 100-100 policy", shape, *with_policy(name, tasks, trajectories)))
    rows.append(
        (
            "fastmaml/HalfCheetahVel-v0 in SyncVectorEnv",
            "40 envs",
            *gymnasium_vector("fastmaml/HalfCheetahVel-v0", 40, 200),
        )
    )
    try:
        rows.append(
            (
                "gymnasium HalfCheetah-v5 frame_skip=1, SyncVectorEnv",
                "40 envs",
                *gymnasium_vector("HalfCheetah-v5", 40, 200, frame_skip=1),
            )
        )
    except ImportError as error:  # gymnasium's own MuJoCo envs import imageio, which fastmaml[rl] does not need
        skipped.append(f"gymnasium HalfCheetah-v5 row skipped ({error}): pip install 'gymnasium[mujoco]' for it")
    rows.append(("mujoco.rollout half_cheetah, open loop", "800 x 200", *mujoco_rollout("half_cheetah", 800, 200)))
    rows.append(("mujoco.rollout ant, open loop", "800 x 200", *mujoco_rollout("ant", 800, 200)))

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"torch {torch.__version__}, 1 thread, {platform.machine()}, {os.cpu_count()} CPUs, load average {load}\n")
    print("| what | batch | simulated steps | wall s | steps/s (wall) | steps/s (CPU time) |")
    print("|---|---|---:|---:|---:|---:|")
    for what, batch, steps, wall, cpu in rows:
        print(f"| {what} | {batch} | {steps} | {wall:.2f} | {steps / wall:,.0f} | {steps / cpu:,.0f} |")
    for line in skipped:
        print(f"\n{line}")

    g = torch.Generator().manual_seed(0)
    obs, returns = torch.randn(40, 20, 200, 125, generator=g), torch.randn(40, 20, 200, generator=g)
    _, wall, _ = timed(lambda: fit_linear_baseline(obs, returns, torch.ones_like(returns)))
    print(f"\nlinear baseline fit, ant size (40 tasks x 20 x 200 steps, 254 features): {wall:.2f} s")


if __name__ == "__main__":
    import argparse

    # no options: --help says so instead of running the whole benchmark
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
