"""Meta-RL split over processes, without launching any: each "process" is a thread that runs its share
of the tasks (``rows``) and sums over the others with an in-memory ``all_sum``. The shares start and
sample their tasks as the whole batch would; one meta-update split over 2 or 3 shares equals the
single-process update (float64) and leaves every share with the same parameters and generator state.
(tests/integration/test_distributed.py runs it under torchrun.)"""

import threading

import pytest
import torch

from fastmaml.rl import GaussianMLPPolicy
from fastmaml.rl.envs import Nav2dBatch, nav2d
from fastmaml.rl.maml_trpo import maml_trpo_step, sample_and_adapt
from fastmaml.rl.policy import action_distribution
from fastmaml.rl.sampler import sample_trajectories
from fastmaml.rl.trainer import OracleBatch
from fastmaml.rl.trpo import flatten

F64 = torch.float64


def shares(total: int, world: int) -> list[slice]:
    """The rows each of ``world`` processes takes (``engine.distributed.Cluster.rows``)."""
    return [slice(r * total // world, (r + 1) * total // world) for r in range(world)]


class ThreadWorld:
    """``world`` threads as the processes of one run. torch.func transforms may not run in two threads
    at once, so a thread holds ``lock`` whenever it computes and lets go only inside ``all_sum``,
    which returns the sum of every thread's tensor in rank order (as an all-reduce does)."""

    def __init__(self, world: int) -> None:
        self.world, self.lock = world, threading.Lock()
        self.barrier, self.slots = threading.Barrier(world), [None] * world

    def all_sum_of(self, rank: int):
        def all_sum(tensor):
            self.slots[rank] = tensor.detach().clone()
            self.lock.release()
            try:
                self.barrier.wait(timeout=60)
                total = sum(self.slots[1:], self.slots[0].clone())
                self.barrier.wait(timeout=60)
            finally:
                self.lock.acquire()
            return total

        return all_sum

    def run(self, work):
        """``work(rank, all_sum)`` in every thread; their results in rank order."""
        results, errors = [None] * self.world, []

        def target(rank):
            with self.lock:
                try:
                    results[rank] = work(rank, self.all_sum_of(rank))
                except BaseException as error:  # noqa: BLE001 - re-raised in the test's thread
                    errors.append(error)
                    self.barrier.abort()

        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        if errors:
            raise errors[0]
        return results


def policy_and_params(hidden=(16,), seed=0):
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=hidden).double()
    # non-zero biases: at s = 0 zero biases put every ReLU on its kink
    params = {k: (p + 0.1 * torch.randn_like(p) if "bias" in k else p).detach()
              for k, p in policy.named_parameters()}
    return policy, params


def make_env(name):
    if name == "nav2d":
        return Nav2dBatch(dtype=F64)
    pytest.importorskip("mujoco", reason="mujoco is the optional 'rl' extra (CI installs fastmaml[rl])")
    from fastmaml.rl.envs.locomotion import LocomotionBatch

    return LocomotionBatch(name)


@pytest.mark.parametrize("name", ["nav2d", "nav2d-oracle", "cheetah-dir", "ant-vel"])
def test_a_share_of_the_rows_starts_where_the_whole_batch_would(name):
    env = OracleBatch(make_env("nav2d")) if name == "nav2d-oracle" else make_env(name)
    goals = env.sample_goals(7, torch.Generator().manual_seed(0))
    whole_generator, share_generator = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    whole = env.reset(goals, whole_generator)
    share = env.reset(goals, share_generator, rows=slice(2, 5))
    assert share.shape == (3, env.obs_dim)
    assert torch.equal(share, whole[2:5])
    assert torch.equal(share_generator.get_state(), whole_generator.get_state())


@pytest.mark.parametrize("name", ["nav2d", "cheetah-vel"])
def test_shares_sample_the_whole_batch_s_trajectories(name):
    env = make_env(name)
    policy, params = policy_and_params()
    if name != "nav2d":  # the policy's sizes for the half-cheetah
        torch.manual_seed(0)
        policy = GaussianMLPPolicy(env.obs_dim, env.action_dim, hidden_sizes=(16,)).double()
        params = {k: p.detach() for k, p in policy.named_parameters()}
    goals = env.sample_goals(5, torch.Generator().manual_seed(0)).double()
    dist = lambda obs: action_distribution(policy, params, obs.double())  # noqa: E731
    whole_generator = torch.Generator().manual_seed(3)
    whole = sample_trajectories(env, dist, goals, 3, whole_generator, horizon=15)
    for rows in shares(5, 2):
        generator = torch.Generator().manual_seed(3)
        part = sample_trajectories(env, dist, goals, 3, generator, horizon=15, rows=rows)
        for got, want in zip(part, whole):
            torch.testing.assert_close(got, want[rows].to(got.dtype), rtol=1e-12, atol=1e-12)
        assert torch.equal(generator.get_state(), whole_generator.get_state())


def split_update(world, policy, params, kwargs):
    """maml_trpo_step on 7 tasks split over ``world`` thread processes (seed 5): each process's new
    parameters, statistics and final generator state."""

    def work(rank, all_sum):
        g = torch.Generator().manual_seed(5)
        new, stats = maml_trpo_step(Nav2dBatch(dtype=F64), policy, params, g, rows=shares(7, world)[rank],
                                    all_sum=all_sum, **kwargs)
        return new, stats, g.get_state()

    return ThreadWorld(world).run(work)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("inner_steps,hvp", [(1, "exact"), (1, "finite_difference"), (0, "exact")])
def test_a_meta_update_split_over_processes_is_the_single_process_one(world, inner_steps, hvp):
    """MAML-TRPO (inner_steps=1) and the trained baselines' plain TRPO (0), 7 tasks split unevenly."""
    policy, params = policy_and_params()
    kwargs = dict(meta_batch_size=7, trajectories=4, inner_lr=0.5, inner_steps=inner_steps, horizon=20, hvp=hvp)
    generator = torch.Generator().manual_seed(5)
    single, single_stats = maml_trpo_step(Nav2dBatch(dtype=F64), policy, params, generator, **kwargs)
    assert single_stats.trpo.accepted

    results = split_update(world, policy, params, kwargs)
    step = (flatten(single) - flatten(params)).norm()
    for new, stats, state in results:
        # summation order only (the conjugate gradient amplifies it: up to 2e-8 x the step seen)
        assert (flatten(new) - flatten(single)).norm() < 1e-6 * step
        assert torch.equal(flatten(new), flatten(results[0][0]))  # every process holds the same parameters
        assert torch.equal(state, generator.get_state())
        torch.testing.assert_close(stats.task_returns, single_stats.task_returns, rtol=1e-12, atol=1e-12)
        assert stats.returns == pytest.approx(single_stats.returns, rel=1e-12)
        assert stats.trpo.step_fraction == single_stats.trpo.step_fraction
        assert stats.trpo.kl_after == pytest.approx(single_stats.trpo.kl_after, rel=1e-6)


@pytest.mark.parametrize("world", [2, 3])
def test_a_step_budget_meta_update_split_over_processes_is_the_single_process_one(world, monkeypatch):
    """sampling="steps": each share's tasks get the whole batch's paths (a share pads to its own most
    paths), the update and the logged mean over all paths are the single process's."""
    monkeypatch.setattr(nav2d, "GOAL_TOLERANCE", 0.15)  # random walks reach goals: tasks get different path counts
    policy, params = policy_and_params()
    kwargs = {"meta_batch_size": 7, "trajectories": 4, "inner_lr": 0.5, "horizon": 20, "sampling": "steps"}
    generator = torch.Generator().manual_seed(5)
    single, single_stats = maml_trpo_step(Nav2dBatch(dtype=F64), policy, params, generator, **kwargs)
    assert single_stats.trpo.accepted
    paths = sample_trajectories(Nav2dBatch(dtype=F64), lambda obs: action_distribution(policy, params, obs),
                                single_stats.goals, 4, torch.Generator().manual_seed(0), horizon=20,
                                sampling="steps").paths
    assert len(set(paths.tolist())) > 1  # padding is exercised

    results = split_update(world, policy, params, kwargs)
    step = (flatten(single) - flatten(params)).norm()
    for new, stats, state in results:
        assert (flatten(new) - flatten(single)).norm() < 1e-6 * step
        assert torch.equal(flatten(new), flatten(results[0][0]))
        assert torch.equal(state, generator.get_state())
        torch.testing.assert_close(stats.task_returns, single_stats.task_returns, rtol=1e-12, atol=1e-12)
        assert stats.returns == pytest.approx(single_stats.returns, rel=1e-12)
        assert stats.trpo.kl_after == pytest.approx(single_stats.trpo.kl_after, rel=1e-6)


def test_settings_that_need_every_task_in_one_process_say_so():
    policy, params = policy_and_params()
    g = torch.Generator().manual_seed(0)
    add = lambda t: t  # noqa: E731 - a world of one
    with pytest.raises(ValueError, match="rows and all_sum together"):
        maml_trpo_step(Nav2dBatch(dtype=F64), policy, params, g, meta_batch_size=4, horizon=5, rows=slice(0, 2))
    with pytest.raises(ValueError, match="hvp_tasks"):
        maml_trpo_step(Nav2dBatch(dtype=F64), policy, params, g, meta_batch_size=4, horizon=5, hvp_tasks=2,
                       rows=slice(0, 2), all_sum=add)
    goals = Nav2dBatch.sample_goals(4, g).double()
    with pytest.raises(ValueError, match="every task in one process"):
        sample_and_adapt(Nav2dBatch(dtype=F64), policy, params, goals, g, trajectories=2, lrs=[0.5], horizon=5,
                         baseline_fit="rllab", rows=slice(0, 2))
