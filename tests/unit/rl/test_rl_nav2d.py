"""2D navigation: the definition (reward after the step, per-axis goal box, clipping), the batched
env against a per-agent reference written like the original, the sampler, and the gymnasium view."""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastmaml.errors import ConfigError
from fastmaml.rl import GaussianMLPPolicy, action_distribution, sample_trajectories
from fastmaml.rl._optional import MissingExtraError, require
from fastmaml.rl.envs import Nav2dBatch, make_batch


def step_once(goal, action):
    env = Nav2dBatch(dtype=torch.float64)
    env.reset(torch.tensor([goal], dtype=torch.float64))
    return env.step(torch.tensor([action], dtype=torch.float64))


def test_reward_is_minus_distance_after_the_clipped_step():
    obs, reward, done = step_once([0.3, -0.2], [5.0, -5.0])  # clipped to (1, -1): moves (0.1, -0.1)
    assert obs.tolist() == [[0.1, -0.1]]
    assert reward.item() == pytest.approx(-math.hypot(0.1 - 0.3, -0.1 + 0.2))
    assert not done.item()


def test_small_actions_are_scaled_not_clipped():
    obs, _, _ = step_once([0.3, 0.3], [0.5, -0.25])
    assert obs[0].tolist() == pytest.approx([0.05, -0.025])


def test_done_within_001_of_the_goal_on_each_axis():
    _, reward, done = step_once([0.095, 0.0], [1.0, 0.0])
    assert done.item() and reward.item() == pytest.approx(-0.005)
    # The original tests |dx| < 0.01 and |dy| < 0.01 (a box), so 0.0127 away still ends the episode.
    _, reward, done = step_once([0.091, 0.009], [1.0, 0.0])
    assert done.item() and -reward.item() > 0.01
    _, _, done = step_once([0.08, 0.0], [1.0, 0.0])
    assert not done.item()


def test_after_done_the_agent_stays_with_zero_reward():
    env = Nav2dBatch()
    env.reset(torch.tensor([[0.095, 0.0], [0.5, 0.5]]))
    env.step(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    obs, reward, done = env.step(torch.tensor([[1.0, 1.0], [1.0, 1.0]]))
    assert obs[0].tolist() == pytest.approx([0.1, 0.0]) and reward[0] == 0 and done[0]
    assert obs[1].tolist() == pytest.approx([0.2, 0.2]) and reward[1] < 0 and not done[1]


class ReferencePointEnv:
    """maml_rl's PointEnvRandGoal behind rllab's normalize wrapper, one agent, numpy float64."""

    def __init__(self, goal):
        self.goal, self.state = np.asarray(goal, dtype=np.float64), np.zeros(2)

    def step(self, action):
        lb, ub = -0.1 * np.ones(2), 0.1 * np.ones(2)
        scaled = np.clip(lb + (np.asarray(action) + 1.0) * 0.5 * (ub - lb), lb, ub)
        self.state = self.state + scaled
        x, y = self.state - self.goal
        return self.state.copy(), -((x**2 + y**2) ** 0.5), abs(x) < 0.01 and abs(y) < 0.01


def test_batched_env_equals_per_agent_reference():
    g = torch.Generator().manual_seed(0)
    goals = 0.3 * Nav2dBatch.sample_goals(16, g).double()  # close goals: some agents terminate early
    actions = 1.5 * torch.randn(60, 16, 2, generator=g, dtype=torch.float64)
    actions[:, :8] = (goals[:8] / 0.1 / 6).clamp(-1, 1)  # these reach their goal in 6 steps
    env = Nav2dBatch(dtype=torch.float64)
    env.reset(goals)
    batched = [env.step(a) for a in actions]
    for i in range(16):
        ref, ended = ReferencePointEnv(goals[i].numpy()), False
        for t, a in enumerate(actions[:, i]):
            obs, reward, done = batched[t]
            if ended:  # the episode is over: the batch keeps the agent still with reward 0
                assert reward[i] == 0 and done[i]
                continue
            ref_obs, ref_reward, ended = ref.step(a.numpy())
            np.testing.assert_allclose(obs[i].numpy(), ref_obs, rtol=0, atol=1e-12)
            assert reward[i].item() == pytest.approx(ref_reward, abs=1e-12)
            assert bool(done[i]) == ended
    assert all(batched[-1][2][:8]) and not any(batched[-1][2][8:])


def test_goals_uniform_in_the_square_and_seeded():
    goals = Nav2dBatch.sample_goals(2000, torch.Generator().manual_seed(1))
    assert goals.shape == (2000, 2) and goals.min() >= -0.5 and goals.max() <= 0.5
    assert goals.min() < -0.49 and goals.max() > 0.49
    assert torch.equal(goals, Nav2dBatch.sample_goals(2000, torch.Generator().manual_seed(1)))


def test_bad_shapes_raise_clear_errors():
    env = Nav2dBatch()
    with pytest.raises(RuntimeError, match=r"call reset\(goals\) before step"):
        env.step(torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"shape \(batch, 2\)"):
        env.reset(torch.zeros(3))
    env.reset(torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"actions must have shape \(3, 2\)"):
        env.step(torch.zeros(2, 2))
    with pytest.raises(ConfigError, match="choose one of nav2d, cheetah-vel"):
        make_batch("pendulum")


def test_missing_extra_says_how_to_install():
    with pytest.raises(MissingExtraError, match=r"pip install 'fastmaml\[rl\]'"):
        require("fastmaml_no_such_module")


WITHOUT_EXTRAS = """
import importlib.abc, sys
class Uninstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("gymnasium", "mujoco"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Uninstalled())
import torch
from fastmaml.rl.envs import Nav2dBatch, make_batch
env = Nav2dBatch()
env.reset(torch.zeros(1, 2))
env.step(torch.ones(1, 2))
make_batch("ant-dir")
"""


def test_without_gymnasium_and_mujoco_nav2d_works_and_mujoco_envs_say_what_to_install():
    result = subprocess.run([sys.executable, "-c", WITHOUT_EXTRAS], capture_output=True, text=True, timeout=120)
    last_line = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0
    assert last_line == (
        "fastmaml.rl._optional.MissingExtraError: mujoco is needed for the RL environments; "
        "install with pip install 'fastmaml[rl]'"
    )


def sample(seed, tasks=3, trajectories=4):
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2)
    params = dict(policy.named_parameters())
    g = torch.Generator().manual_seed(seed)
    env = Nav2dBatch()
    goals = env.sample_goals(tasks, g)
    return goals, sample_trajectories(env, lambda o: action_distribution(policy, params, o), goals, trajectories, g)


def test_sampler_shapes_mask_and_seed():
    goals, traj = sample(seed=3)
    assert traj.observations.shape == (3, 4, 100, 2) and traj.actions.shape == (3, 4, 100, 2)
    assert traj.rewards.shape == traj.mask.shape == (3, 4, 100)
    assert torch.equal(traj.observations[:, :, 0], torch.zeros(3, 4, 2))
    # Replaying the sampled actions in a fresh env gives the recorded rewards and next observations.
    env = Nav2dBatch()
    env.reset(goals.repeat_interleave(4, dim=0))
    for t in range(99):
        obs, reward, _ = env.step(traj.actions[:, :, t].reshape(12, 2))
        assert torch.equal(reward.reshape(3, 4), traj.rewards[:, :, t])
        assert torch.equal(obs.reshape(3, 4, 2), traj.observations[:, :, t + 1])
    _, again = sample(seed=3)
    assert all(torch.equal(a, b) for a, b in zip(traj, again))
    _, other = sample(seed=4)
    assert not torch.equal(traj.actions, other.actions)


def test_sampler_with_per_task_parameters_under_vmap():
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2)
    params = {k: p.detach() for k, p in policy.named_parameters()}
    per_task = {k: p.expand(3, *p.shape) for k, p in params.items()}  # e.g. adapted parameters, one set per task
    goals = Nav2dBatch.sample_goals(3, torch.Generator().manual_seed(1))
    shared = sample_trajectories(
        Nav2dBatch(), lambda o: action_distribution(policy, params, o), goals, 4, torch.Generator().manual_seed(2)
    )
    batched = torch.vmap(lambda p, o: action_distribution(policy, p, o))
    vmapped = sample_trajectories(
        Nav2dBatch(), lambda o: batched(per_task, o), goals, 4, torch.Generator().manual_seed(2)
    )
    for a, b in zip(shared, vmapped):
        torch.testing.assert_close(a, b)


def test_mask_covers_the_terminal_step_and_nothing_after():
    env = Nav2dBatch()
    goals = torch.tensor([[0.1, 0.0], [0.5, 0.5]])
    # A deterministic policy (σ = 1e-6 floor) heading +x at full speed reaches (0.1, 0) in one step.
    distribution = lambda o: (torch.tensor([1.0, 0.0]).expand_as(o), torch.full_like(o, -20.0))  # noqa: E731
    traj = sample_trajectories(env, distribution, goals, 1, torch.Generator().manual_seed(0), horizon=5)
    assert traj.mask[0, 0].tolist() == [1, 0, 0, 0, 0]
    assert traj.mask[1, 0].tolist() == [1, 1, 1, 1, 1]
    assert traj.rewards[0, 0, 1:].abs().sum() == 0


@pytest.mark.filterwarnings("ignore:.*Box observation space:UserWarning")  # unbounded positions, on purpose
def test_gymnasium_env_sets_tasks_and_limits_the_horizon():
    gymnasium = pytest.importorskip("gymnasium", reason="gymnasium is the optional 'rl' extra")
    from gymnasium.utils.env_checker import check_env

    env = gymnasium.make("fastmaml/Nav2d-v0")
    obs, info = env.reset(seed=0, options={"goal": [0.2, -0.3]})
    assert obs.tolist() == [0.0, 0.0] and info["goal"].tolist() == pytest.approx([0.2, -0.3])
    _, reward, terminated, truncated, _ = env.step(np.array([1.0, -1.0], dtype=np.float32))
    assert reward == pytest.approx(-math.hypot(0.1, 0.2), rel=1e-6) and not terminated and not truncated
    env.unwrapped.set_task([0.0, 0.4])
    env.reset()
    steps, truncated = 0, False
    while not truncated:
        _, _, terminated, truncated, _ = env.step(np.zeros(2, dtype=np.float32))
        steps += 1
    assert steps == 100 and not terminated
    with pytest.raises(ValueError, match=r"goal must have shape \(2,\)"):
        env.unwrapped.set_task(0.3)
    check_env(gymnasium.make("fastmaml/Nav2d-v0").unwrapped)
