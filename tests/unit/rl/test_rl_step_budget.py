"""``sampling="steps"``, the original's step-budget sampler: K lockstep slots per task restarted as
their episodes end, keeping the shortest prefix of a task's paths in (round, slot) order that holds
K x H steps. Exact counts on an environment whose episodes last a known number of steps, exactly
which paths are kept when the slots' episodes differ, kept paths as long as the episodes on average,
the paths' structure on 2D navigation with a policy that reaches its goals, padding that no consumer
counts, and a process's share sampling what the whole batch gives its tasks."""

import math

import pytest
import torch

from fastmaml.config import from_dict, to_dict
from fastmaml.errors import ConfigError
from fastmaml.rl import GaussianMLPPolicy, action_distribution, sample_trajectories
from fastmaml.rl.envs import Nav2dBatch
from fastmaml.rl.envs.nav2d import MAX_STEP
from fastmaml.rl.maml_trpo import (
    adaptation_returns,
    maml_trpo_step,
    meta_objective,
    own_baseline_fits,
    process_samples,
    reinforce_loss,
)
from fastmaml.rl.sampler import SEED_RANGE, Trajectories
from fastmaml.rl.trainer import OracleBatch, RLConfig

F64 = torch.float64


class FixedLengthBatch:
    """Episodes of a task last ``goal`` steps (its goal is its episode length). The observation is
    (steps so far, the row's start noise); the reward 1 + 0.1 a. Start noise is drawn for the whole
    batch on reset and on every restart, as fastmaml's environments do, so a share misaligned with
    the whole batch's random numbers shows in its observations."""

    obs_dim, action_dim, goal_shape, horizon = 2, 1, (), 10

    def sample_goals(self, num_tasks, generator):
        return torch.randint(1, 13, (num_tasks,), generator=generator).to(F64)

    def reset(self, goals, generator=None, rows=None):
        self.total, self.rows = len(goals), slice(None) if rows is None else rows
        self.length = torch.as_tensor(goals, dtype=F64)[self.rows]
        self.t = torch.zeros_like(self.length)
        self.noise = torch.randn(self.total, generator=generator, dtype=F64)[self.rows]
        self.restarts = 0
        return self._obs()

    def restart(self, ended, generator=None):
        noise = torch.randn(self.total, generator=generator, dtype=F64)[self.rows]
        self.t[ended], self.noise[ended] = 0.0, noise[ended]
        self.restarts += int(ended.sum())
        return self._obs()[ended]

    def step(self, actions):
        self.t = self.t + 1
        return self._obs(), 1.0 + 0.1 * actions[:, 0].to(F64), self.t >= self.length

    def _obs(self):
        return torch.stack([self.t, self.noise], dim=1)


class NoRestartBatch(FixedLengthBatch):
    restart = None


class SlotLengthBatch(FixedLengthBatch):
    """Episode lengths by slot: a task's goal g (>= 1) gives slot 0 episodes of H steps and its other
    slots episodes of g steps. Logs every episode it starts (row, its n-th start, its start noise)
    and every ``stop`` (the lockstep step, the rows)."""

    def __init__(self, slots):
        self.slots = slots

    def reset(self, goals, generator=None, rows=None):
        goals = torch.as_tensor(goals, dtype=F64).clone()
        goals[:: self.slots] = self.horizon
        obs = super().reset(goals, generator, rows)
        self.starts = [(row, 0, self.noise[row].item()) for row in range(len(self.noise))]
        self.count, self.steps, self.stops = torch.ones(len(self.noise), dtype=torch.long), 0, []
        return obs

    def restart(self, ended, generator=None):
        obs = super().restart(ended, generator)
        for row in ended.nonzero().flatten().tolist():
            self.starts.append((row, int(self.count[row]), self.noise[row].item()))
            self.count[row] += 1
        return obs

    def step(self, actions):
        self.steps += 1
        return super().step(actions)

    def stop(self, ended):
        self.stops.append((self.steps, ended.nonzero().flatten().tolist()))


class GeometricBatch(FixedLengthBatch):
    """Episodes end at each step with probability 0.1, whatever the goal: min(Geometric(0.1), H) steps,
    drawn when the episode starts from the generator's uniform numbers for the whole batch."""

    def _length(self, generator):
        uniform = torch.rand(self.total, generator=generator, dtype=F64)[self.rows]
        return (uniform.log() / math.log(0.9)).ceil().clamp(min=1)

    def reset(self, goals, generator=None, rows=None):
        obs = super().reset(goals, generator, rows)
        self.length = self._length(generator)
        return obs

    def restart(self, ended, generator=None):
        length = self._length(generator)
        self.length[ended] = length[ended]
        return super().restart(ended, generator)


def linear_distribution():
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 1, hidden_sizes=(8,)).double()
    params = {k: p.detach() for k, p in policy.named_parameters()}
    return lambda obs: action_distribution(policy, params, obs.double())


def check_structure(traj: Trajectories, slots: int, horizon: int, done_at=None):
    """Every task's completed steps in [K H, K H + H); each kept path a contiguous prefix ending at H or
    where ``done_at(task, path)`` says; padding zero everywhere."""
    valid = traj.valid
    steps = traj.mask.sum((1, 2))
    assert ((steps >= slots * horizon) & (steps < slots * horizon + horizon)).all(), steps
    lengths = traj.mask.sum(-1)
    prefix = torch.arange(horizon) < lengths[..., None]
    assert torch.equal(traj.mask.bool(), prefix)  # 1 up to the path's end, 0 after
    assert ((lengths >= 1) == valid).all() and (lengths <= horizon).all()
    for x in traj:  # padding and the steps after a path's end hold zeros
        outside = ~traj.mask.bool()
        assert (x[outside] == 0).all()
    if done_at is not None:
        for task, path in valid.nonzero().tolist():
            assert lengths[task, path] == min(done_at(task, path), horizon)


@pytest.mark.parametrize("slots", [1, 3])
def test_episodes_of_known_length_give_exactly_the_budget_s_paths(slots):
    env, horizon = FixedLengthBatch(), 10
    lengths = torch.tensor([1, 3, 4, 7, 10, 12], dtype=F64)  # 12 > H: cut at the horizon
    traj = sample_trajectories(env, linear_distribution(), lengths, slots, torch.Generator().manual_seed(0),
                               horizon=horizon, sampling="steps")
    cut = lengths.clamp(max=horizon)
    expected = torch.tensor([math.ceil(slots * horizon / length) for length in cut.tolist()])
    assert torch.equal(traj.paths, expected)  # a prefix reaching K x H steps: ceil(K H / L) paths of L
    assert traj.mask.shape == (6, int(expected.max()), horizon)
    assert torch.equal(traj.mask.sum((1, 2)), (expected * cut).to(traj.mask.dtype))
    check_structure(traj, slots, horizon, done_at=lambda task, path: lengths[task].item())
    assert torch.equal(traj.observations[..., 0][traj.mask.bool()],  # each path starts at its step 0
                       torch.arange(horizon, dtype=F64).expand_as(traj.mask)[traj.mask.bool()])
    torch.testing.assert_close(traj.returns[traj.valid], traj.mask.sum(-1)[traj.valid]
                               + 0.1 * traj.actions[..., 0].sum(-1)[traj.valid])


def test_full_length_episodes_give_exactly_k_paths_in_h_lockstep_steps():
    env, horizon, slots = FixedLengthBatch(), 10, 4
    goals = torch.tensor([10.0, 15.0, 40.0])
    generator = torch.Generator().manual_seed(5)
    steps = sample_trajectories(env, linear_distribution(), goals, slots, generator, horizon=horizon,
                                sampling="steps")
    assert torch.equal(steps.paths, torch.full((3,), slots)) and steps.mask.shape == (3, slots, horizon)
    assert steps.mask.all() and env.restarts == 0 and env.t.max() == horizon  # stopped at H, nothing restarted
    # 2D navigation with goals too far for 4 steps (no start noise): the trajectories mode's rollout,
    # drawn from the step budget's own generator (one draw seeds it)
    env, horizon = Nav2dBatch(dtype=F64), 4
    goals = torch.tensor([[0.5, 0.5], [-0.5, 0.45], [0.45, -0.5]], dtype=F64)
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(8,)).double()
    params = {k: p.detach() for k, p in policy.named_parameters()}
    dist = lambda obs: action_distribution(policy, params, obs)  # noqa: E731
    steps = sample_trajectories(env, dist, goals, slots, torch.Generator().manual_seed(5), horizon=horizon,
                                sampling="steps")
    seed = int(torch.randint(SEED_RANGE, (1,), generator=torch.Generator().manual_seed(5)))
    plain = sample_trajectories(env, dist, goals, slots, torch.Generator().manual_seed(seed), horizon=horizon)
    for got, want in zip(steps, plain, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_nav2d_paths_that_reach_the_goal_restart_and_the_budget_holds():
    env, horizon, slots = Nav2dBatch(dtype=F64), 20, 3
    goals = env.sample_goals(6, torch.Generator().manual_seed(0)).double()

    def towards_goal(obs):  # a policy that walks to the goal with a little noise: episodes of 3-20 steps
        mean = ((goals[:, None] - obs) / MAX_STEP).clamp(-1, 1)
        return mean, torch.full_like(mean, math.log(0.05))

    traj = sample_trajectories(env, towards_goal, goals, slots, torch.Generator().manual_seed(1), horizon=horizon,
                               sampling="steps")
    check_structure(traj, slots, horizon)
    assert (traj.paths > slots).all(), traj.paths  # more, shorter paths than K
    lengths = traj.mask.sum(-1).long()
    for task, path in traj.valid.nonzero().tolist():  # a path ends at its goal, or at the horizon
        n = lengths[task, path]
        last = traj.observations[task, path, n - 1] + MAX_STEP * traj.actions[task, path, n - 1].clamp(-1, 1)
        reached = ((last - goals[task]).abs() < 0.01).all()
        assert reached or n == horizon
        assert torch.equal(traj.observations[task, path, 0], torch.zeros(2, dtype=F64))  # restarted at the origin
        # rewards are minus the distance after each step, within the path
        position = traj.observations[task, path, 1:n]
        torch.testing.assert_close(traj.rewards[task, path, : n - 1], -(position - goals[task]).norm(dim=-1))
    # the trajectories mode of the same policy: K paths, masked after the goal: fewer steps per task
    plain = sample_trajectories(env, towards_goal, goals, slots, torch.Generator().manual_seed(1), horizon=horizon)
    assert (plain.mask.sum((1, 2)) < traj.mask.sum((1, 2))).all()


def test_padding_counts_nowhere():
    """Extra all-zero paths change no task's return, baseline, advantages, losses or KL."""
    env, horizon, slots = FixedLengthBatch(), 10, 2
    goals = torch.tensor([3.0, 10.0, 7.0])
    traj = sample_trajectories(env, linear_distribution(), goals, slots, torch.Generator().manual_seed(0),
                               horizon=horizon, sampling="steps")
    assert not traj.valid.all()  # tasks of different path counts: padded
    padded = Trajectories(*(torch.cat([x, torch.zeros_like(x[:, :3])], dim=1) for x in traj))
    for t in (traj, padded):
        manual = torch.stack([t.returns[i][t.valid[i]].mean() for i in range(3)])
        torch.testing.assert_close(t.task_returns(), manual, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(t.mean_return(), t.returns[t.valid].mean(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(padded.task_returns(), traj.task_returns(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(own_baseline_fits(padded), own_baseline_fits(traj), rtol=1e-9, atol=1e-9)
    samples, more = process_samples(traj), process_samples(padded)
    n = traj.mask.shape[1]
    torch.testing.assert_close(more.advantages[:, :n], samples.advantages, rtol=1e-9, atol=1e-9)
    assert (more.advantages[:, n:] == 0).all()
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 1, hidden_sizes=(8,)).double()
    params = {k: p.detach() for k, p in policy.named_parameters()}
    for task in range(3):
        one, other = (type(s)(*(x[task] for x in s)) for s in (more, samples))
        torch.testing.assert_close(reinforce_loss(policy, params, one), reinforce_loss(policy, params, other))
    old = lambda s: action_distribution(policy, params, s.observations)  # noqa: E731
    for strategy in ("loop", "vmap"):
        got = meta_objective(policy, [more], more, old(more), [0.1], strategy=strategy)(params)
        want = meta_objective(policy, [samples], samples, old(samples), [0.1], strategy=strategy)(params)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def shares(total, world):
    return [slice(r * total // world, (r + 1) * total // world) for r in range(world)]


@pytest.mark.parametrize("name", ["fixed", "nav2d", "nav2d-oracle"])
def test_a_share_samples_the_whole_batch_s_paths_of_its_tasks(name):
    horizon, slots = 12, 3
    if name == "fixed":
        env, dist = FixedLengthBatch(), linear_distribution()
        goals = env.sample_goals(5, torch.Generator().manual_seed(0))
    else:
        env = Nav2dBatch(dtype=F64) if name == "nav2d" else OracleBatch(Nav2dBatch(dtype=F64))
        goals = Nav2dBatch.sample_goals(5, torch.Generator().manual_seed(0)).double()
        state = {}

        def dist(obs):  # towards the goals of the tasks sampled (a share's, or all)
            mine = goals[state["rows"]]
            mean = ((mine[:, None] - obs[..., :2]) / MAX_STEP).clamp(-1, 1)
            return mean, torch.full_like(mean, math.log(0.3))

        state["rows"] = slice(None)
    whole_generator = torch.Generator().manual_seed(3)
    whole = sample_trajectories(env, dist, goals, slots, whole_generator, horizon=horizon, sampling="steps")
    assert len(set(whole.paths.tolist())) > 1  # tasks got different numbers of paths: padding is exercised
    for rows in [*shares(5, 2), slice(1, 4), slice(4, 5)]:
        if name != "fixed":
            state["rows"] = rows
        generator = torch.Generator().manual_seed(3)
        part = sample_trajectories(env, dist, goals, slots, generator, horizon=horizon, rows=rows, sampling="steps")
        width = part.mask.shape[1]
        assert width == whole.paths[rows].max()
        for got, want in zip(part, whole, strict=True):
            torch.testing.assert_close(got, want[rows][:, :width].to(got.dtype), rtol=1e-12, atol=1e-12)
            assert (want[rows][:, width:] == 0).all()
        assert torch.equal(generator.get_state(), whole_generator.get_state())


def test_the_generator_ends_alike_whatever_the_number_of_lockstep_steps():
    """One draw from the main generator seeds the rollout: the same end state after a short and a long one."""
    env, dist = FixedLengthBatch(), linear_distribution()
    ends = []
    for lengths in ([10.0, 10.0], [1.0, 3.0]):  # H lockstep steps, then 12 (7 paths of 3: slot 0's fourth)
        generator = torch.Generator().manual_seed(9)
        sample_trajectories(env, dist, torch.tensor(lengths), 2, generator, horizon=10, sampling="steps")
        ends.append(generator.get_state())
    assert torch.equal(ends[0], ends[1])
    reference = torch.Generator().manual_seed(9)
    torch.randint(SEED_RANGE, (1,), generator=reference)
    assert torch.equal(ends[0], reference.get_state())


def test_an_environment_without_restart_and_an_unknown_mode_are_clear_errors():
    env, dist = NoRestartBatch(), linear_distribution()
    with pytest.raises(TypeError, match=r"NoRestartBatch lacks: add it .* or use sampling='trajectories'"):
        sample_trajectories(env, dist, torch.tensor([3.0]), 2, torch.Generator(), sampling="steps")
    with pytest.raises(ValueError, match="sampling must be one of trajectories, steps, got 'episodes'"):
        sample_trajectories(env, dist, torch.tensor([3.0]), 2, torch.Generator(), sampling="episodes")


def test_nav2d_restart_puts_the_ended_agents_back_at_the_origin():
    env = Nav2dBatch()
    env.reset(torch.tensor([[0.05, 0.0], [0.3, 0.3], [0.0, 0.05]]))
    env.step(torch.tensor([[0.5, 0.0], [1.0, 1.0], [0.0, 0.5]]))  # rows 0 and 2 reach their goals
    _, _, done = env.step(torch.zeros(3, 2))
    assert done.tolist() == [True, False, True]
    obs = env.restart(done)
    assert torch.equal(obs, torch.zeros(2, 2)) and env.done.tolist() == [False] * 3
    assert torch.equal(env.position[1], torch.tensor([0.1, 0.1]))  # the others keep going
    with pytest.raises(ValueError, match=r"bool mask of shape \(3,\)"):
        env.restart(torch.ones(2, dtype=torch.bool))


@pytest.mark.parametrize("name", ["ant-dir", "cheetah-vel"])
def test_locomotion_restart_draws_reset_s_noise_for_the_whole_batch(name):
    pytest.importorskip("mujoco", reason="mujoco is the optional 'rl' extra (CI installs fastmaml[rl])")
    from fastmaml.rl.envs.locomotion import LocomotionBatch

    env = LocomotionBatch(name)
    goals = env.sample_goals(6, torch.Generator().manual_seed(0))
    fresh = env.reset(goals, torch.Generator().manual_seed(1))
    env.reset(goals, torch.Generator().manual_seed(2))
    for _ in range(3):
        moved, _, _ = env.step(torch.ones(6, env.action_dim))
    ended = torch.tensor([True, False, True, False, False, True])
    restarted = env.restart(ended, torch.Generator().manual_seed(1))  # reset's noise: reset's start states
    assert torch.equal(restarted, fresh[ended])
    assert not env.done.any()
    after, _, _ = env.step(torch.zeros(6, env.action_dim))
    assert not torch.equal(after[~ended], moved[~ended])  # the others went on from where they were
    # a share restarts where the whole batch would
    env.reset(goals, torch.Generator().manual_seed(2), rows=slice(2, 5))
    share = env.restart(ended[2:5], torch.Generator().manual_seed(1))
    assert torch.equal(share, fresh[ended][1:2])


def test_the_ant_at_initialisation_gets_more_than_k_paths(name="ant-dir"):
    pytest.importorskip("mujoco", reason="mujoco is the optional 'rl' extra (CI installs fastmaml[rl])")
    from fastmaml.rl.envs.locomotion import LocomotionBatch

    env, slots = LocomotionBatch(name), 4
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(env.obs_dim, env.action_dim)  # the paper's policy at its initialisation
    params = {k: p.detach() for k, p in policy.named_parameters()}
    goals = env.sample_goals(3, torch.Generator().manual_seed(0))
    traj = sample_trajectories(env, lambda o: action_distribution(policy, params, o), goals, slots,
                               torch.Generator().manual_seed(0), sampling="steps")
    print(f"{name}: paths per task {traj.paths.tolist()}, steps {traj.mask.sum((1, 2)).tolist()}")
    check_structure(traj, slots, env.horizon)
    assert traj.paths.sum() > slots * len(goals)  # the torso leaves [0.2, 1.0]: shorter, more paths

    class SimulatesToTheEnd(LocomotionBatch):
        stop = None  # finished tasks' robots are stepped on: the same paths, more work

    again = sample_trajectories(SimulatesToTheEnd(name), lambda o: action_distribution(policy, params, o), goals,
                                slots, torch.Generator().manual_seed(0), sampling="steps")
    for got, want in zip(again, traj, strict=True):
        assert torch.equal(got, want)


def test_locomotion_stop_freezes_the_robots_it_names():
    pytest.importorskip("mujoco", reason="mujoco is the optional 'rl' extra (CI installs fastmaml[rl])")
    from fastmaml.rl.envs.locomotion import LocomotionBatch

    env = LocomotionBatch("ant-vel")
    env.reset(env.sample_goals(3, torch.Generator().manual_seed(0)), torch.Generator().manual_seed(1))
    before, _, _ = env.step(torch.zeros(3, env.action_dim))
    env.stop(torch.tensor([False, True, False]))
    after, reward, done = env.step(torch.ones(3, env.action_dim))
    assert torch.equal(after[1], before[1]) and reward[1] == 0 and done.tolist() == [False, True, False]
    assert not torch.equal(after[0], before[0])


def test_maml_step_and_meta_test_with_the_step_budget():
    env = FixedLengthBatch()
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 1, hidden_sizes=(8,)).double()
    params = {k: p.detach() for k, p in policy.named_parameters()}
    kwargs = {"meta_batch_size": 4, "trajectories": 2, "horizon": 10, "inner_lr": 0.1, "sampling": "steps"}
    _, stats = maml_trpo_step(env, policy, params, torch.Generator().manual_seed(0), **kwargs)
    assert stats.trpo.accepted and math.isfinite(stats.trpo.kl_after)
    # returns: the reward is 1 + 0.1 a per step, so a path's return is about its length
    assert stats.task_returns.shape == (2, 4)
    lengths = stats.goals.clamp(max=10)
    torch.testing.assert_close(stats.task_returns[0], lengths.to(stats.task_returns.dtype), rtol=0.3, atol=0)
    returns, paths = adaptation_returns(env, policy, params, stats.goals, torch.Generator().manual_seed(1),
                                        trajectories=2, lrs=[0.1], horizon=10, sampling="steps", with_paths=True)
    assert returns.shape == paths.shape == (2, 4)
    assert torch.equal(paths[0], torch.tensor([math.ceil(20 / n) for n in lengths.tolist()]))


def test_sampling_in_the_config_round_trips_and_old_configs_load():
    config = RLConfig(sampling="steps")
    config.validate()
    saved = to_dict(config)
    assert saved["sampling"] == "steps" and from_dict(RLConfig, saved).sampling == "steps"
    del saved["sampling"]  # a run made before the option
    assert from_dict(RLConfig, saved).sampling == "trajectories"
    assert "sampling" in RLConfig.EVAL_KEYS  # fastmaml eval --set sampling=steps
    with pytest.raises(ConfigError, match="sampling must be one of trajectories, steps, got 'paths'"):
        RLConfig(sampling="paths").validate()


def test_a_task_keeps_the_round_slot_prefix_of_its_paths_not_the_first_to_complete():
    """Slot 0's episodes last H = 10 steps, the other slots' g: the kept paths are the shortest prefix
    in (round, slot) order reaching K H = 30 steps, whichever completed first. Keeping paths as they
    complete (the rule before) kept task 0's six 3-step paths of slots 1-2 and then slot 0's and one
    more: 8 paths, 31 steps, biased short; here 6 paths, two of them slot 0's."""
    slots, horizon = 3, 10
    env = SlotLengthBatch(slots)
    goals = torch.tensor([3.0, 1.0, 10.0, 4.0])
    traj = sample_trajectories(env, linear_distribution(), goals, slots, torch.Generator().manual_seed(0),
                               horizon=horizon, sampling="steps")
    expected = {  # (round, slot) of each kept path, in order; slot 0's paths last 10 steps
        0: [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)],  # 10 3 3 10 3 3
        1: [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0)],  # 10 1 1 10 1 1 10
        2: [(0, 0), (0, 1), (0, 2)],  # 10 10 10
        3: [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)],  # 10 4 4 10 4
    }
    assert traj.paths.tolist() == [len(expected[task]) for task in range(4)]
    check_structure(traj, slots, horizon)
    starts = {(row, n): noise for row, n, noise in env.starts}
    for task, paths in expected.items():
        for path, (round_, slot) in enumerate(paths):
            length = horizon if slot == 0 else goals[task].item()
            assert traj.mask[task, path].sum() == length
            # the path began with the start noise of the slot's round-th episode
            assert traj.observations[task, path, 0, 1].item() == starts[(task * slots + slot, round_)]
    # the task done last waited for slot 0's third path: 30 lockstep steps. A slot stops once none of
    # its paths can be kept (task 1's slots 2 and 1 at steps 7 and 8, once slot 0's path has 8 and 9
    # steps: the lower bound then puts the prefix's end at places 22 and 21), a task when its prefix is
    # complete
    assert env.steps == 30
    assert env.stops == [(7, [5]), (8, [4]), (9, [1, 2, 11]), (10, [6, 7, 8]), (12, [10]), (20, [0, 9]), (30, [3])]

    class NoStop(SlotLengthBatch):
        stop = None  # stopped slots are stepped on: the same kept paths

    again = sample_trajectories(NoStop(slots), linear_distribution(), goals, slots, torch.Generator().manual_seed(0),
                                horizon=horizon, sampling="steps")
    for got, want in zip(again, traj, strict=True):
        assert torch.equal(got, want)


def test_kept_paths_are_as_long_as_the_episodes_on_average():
    """Episodes of min(Geometric(0.1), H) steps: the kept paths' steps per path match the episodes'
    mean length (Wald's identity for a prefix in an order fixed in advance). Keeping paths as they
    complete, each slot dropping its unfinished last path, gave 7.56 here (7.58 +- 0.08 over
    20 seeds) against 8.78; this rule 8.83 (8.77 +- 0.09)."""
    slots, horizon, tasks = 4, 20, 400
    traj = sample_trajectories(GeometricBatch(), linear_distribution(), torch.ones(tasks), slots,
                               torch.Generator().manual_seed(0), horizon=horizon, sampling="steps")
    check_structure(traj, slots, horizon)
    mean = (1 - 0.9**horizon) / 0.1  # E min(G, H) = sum over k < H of P(G > k)
    per_path = (traj.mask.sum() / traj.paths.sum()).item()
    assert abs(per_path - mean) < 0.3, (per_path, mean)
