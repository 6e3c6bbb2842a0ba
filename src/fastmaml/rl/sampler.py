"""Sample trajectories for each of T tasks at once: one batched environment of B = T x K agents and
one policy evaluation per time step for the whole batch.

Two ways to sample (``sampling``):

- ``"trajectories"``: exactly K episodes of up to H steps per task; one that ends early is masked
  after its end.
- ``"steps"``: the original's step budget (cbfinn/maml_rl, rllab's ``VectorizedSampler``). The K
  slots of a task are stepped in lockstep, a slot whose episode ends (``done`` or H steps) starts a
  new one at once (``env.restart``: a fresh start state, the same goal). Every path has a place
  fixed before any outcome, (round, slot), round r being the r-th path of its slot; a task keeps the
  shortest prefix of that order whose lengths reach K x H steps (the path that crosses the budget
  included, so its completed steps lie in [K H, K H + H)), and collecting for the task ends once
  that whole prefix has completed. Paths after the prefix are dropped, complete or not, and a slot
  stops (``env.stop`` where the environment has it) once none of its paths can enter the prefix.
  Since the order does not depend on the paths, the kept ones are distributed as the original's one
  environment per task would give them, episodes run one after another until the budget: a task
  whose episodes end early (2D navigation at the goal, the ant when it falls) gets more, shorter
  paths, and by Wald's identity the kept steps per kept path (expected steps over expected paths)
  are the episodes' mean length. Keeping the paths that complete first, or letting each slot drop
  its unfinished last path, would keep short ones more often. The budget is per
  task, not the original's total over the meta-batch, so that a task's paths do not depend on how
  tasks are split over torch.distributed processes. Round r's paths have all ended by lockstep step
  (r + 1) H and, with every path at least one step long, the prefix ends within H rounds, so the loop
  takes at most H x H steps; exactly H (K full paths per task) when no episode ends early, and about
  2H at the ant's initialisation (``benchmarks/results/rl_sampling_cpu.md``), where a task waits for
  the last of its prefix's second-round paths.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from fastmaml.rl.policy import sample_actions

DistributionFn = Callable[[Tensor], tuple[Tensor, Tensor]]  # obs (T, N, obs_dim) -> (μ, log σ)
SAMPLINGS = ("trajectories", "steps")  # K trajectories per task, or the original's K x H step budget
SEED_RANGE = 2**62  # the step-budget rollout's own generator is seeded with one draw below this


class Trajectories(NamedTuple):
    """N trajectories of H steps for each of T tasks.

    ``observations (T, N, H, obs_dim)`` is the state each action was taken in; ``actions
    (T, N, H, action_dim)``; ``rewards (T, N, H)``; ``mask (T, N, H)`` is 1 for steps inside the
    episode (up to and including the step that ended it) and 0 after, where rewards are 0.

    With ``sampling="steps"`` tasks get different numbers of paths: N is the most any task got, and
    a task's missing paths are padding, zero everywhere, mask included (``valid``).
    """

    observations: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor

    @property
    def returns(self) -> Tensor:
        """Undiscounted return of each trajectory: (T, N), 0 for padding."""
        return self.rewards.sum(-1)

    @property
    def valid(self) -> Tensor:
        """Which trajectories were sampled, not padding: (T, N) bool (a path's first step is always in it)."""
        return self.mask[..., 0] > 0

    @property
    def paths(self) -> Tensor:
        """Number of trajectories of each task: (T,)."""
        return self.valid.sum(-1)

    def task_returns(self) -> Tensor:
        """Mean undiscounted return of each task's trajectories, padding left out: (T,)."""
        valid = self.valid
        if bool(valid.all()):  # K trajectories each: the plain mean, bit for bit what it always was
            return self.returns.mean(-1)
        return (self.returns * valid).sum(-1) / valid.sum(-1)

    def mean_return(self) -> Tensor:
        """Mean undiscounted return over every trajectory of every task, padding left out (rllab's
        ``AverageReturn``): a scalar."""
        valid = self.valid
        if bool(valid.all()):
            return self.returns.mean()
        return (self.returns * valid).sum() / valid.sum()


@torch.no_grad()
def sample_trajectories(
    env,
    distribution: DistributionFn,
    goals: Tensor,
    num_trajectories: int,
    generator: torch.Generator,
    horizon: int | None = None,
    rows: slice | None = None,
    sampling: str = "trajectories",
) -> Trajectories:
    """Roll out ``num_trajectories`` episodes of ``horizon`` (default ``env.horizon``) steps per goal,
    or with ``sampling="steps"`` as many as a budget of ``num_trajectories`` x ``horizon`` completed
    steps per goal takes (module docstring; the environment then needs ``restart``).

    ``env`` is a batched environment (``fastmaml.rl.envs``); ``goals`` (T, ...) one per task;
    ``distribution(obs)`` maps observations (T, N, obs_dim) to the policy's (μ, log σ), e.g. with
    per-task adapted parameters under ``torch.vmap``. Actions and the environment's start noise come
    from ``generator``, so a seed fixes the whole batch.

    ``rows=slice(a, b)`` rolls out tasks a..b-1 of ``goals`` only (one process's share under
    torch.distributed; ``distribution`` then sees those tasks' observations): every random number
    is still drawn for all tasks and the share's are used, so each task's trajectories are the ones
    the whole batch would give it, and ``generator`` ends in the same state in every process. With
    ``sampling="steps"`` processes run different numbers of lockstep steps, so that rollout draws
    from a generator of its own, seeded by one draw from ``generator``.
    """
    if num_trajectories < 1:
        raise ValueError(f"num_trajectories must be >= 1, got {num_trajectories}")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
    if sampling == "steps" and not callable(getattr(env, "restart", None)):
        raise TypeError(
            f"sampling='steps' starts a new episode in a slot whose episode ended with env.restart(ended, "
            f"generator), which {type(env).__name__} lacks: add it (see fastmaml.rl.envs) or use "
            "sampling='trajectories'"
        )
    horizon = env.horizon if horizon is None else horizon
    starts = goals.repeat_interleave(num_trajectories, dim=0)
    total = len(goals)
    first, stop, stride = (slice(None) if rows is None else rows).indices(total)
    if stride != 1:
        raise ValueError(f"rows must be a contiguous slice of the tasks, got {rows}")
    tasks = max(stop - first, 0)
    if sampling == "steps":
        rollout = torch.Generator().manual_seed(int(torch.randint(SEED_RANGE, (1,), generator=generator)))
        return _sample_step_budget(env, distribution, starts, num_trajectories, rollout, horizon, rows,
                                   (first, stop, total))
    if rows is None:  # an environment of a user's own need not know rows
        obs = env.reset(starts, generator)
    else:
        obs = env.reset(starts, generator, rows=slice(first * num_trajectories, stop * num_trajectories))
    alive = torch.ones(tasks * num_trajectories, dtype=torch.bool)
    observations, actions, rewards, masks = [], [], [], []
    for _ in range(horizon):
        obs, action, reward, next_obs, done = _lockstep(env, distribution, obs, generator, (first, stop, total),
                                                        num_trajectories)
        observations.append(obs)
        actions.append(action)
        rewards.append(reward)
        masks.append(alive.reshape(tasks, num_trajectories))
        alive = ~done
        obs = next_obs
    stack = lambda xs: torch.stack(xs, dim=2)  # noqa: E731 - (T, N, H, ...)
    return Trajectories(stack(observations), stack(actions), stack(rewards), stack(masks).to(rewards[0].dtype))


def _lockstep(env, distribution: DistributionFn, obs: Tensor, generator: torch.Generator,
              share: tuple[int, int, int], slots: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One step of every agent of the share (first, stop, total tasks) of ``slots`` agents per task:
    the policy on the whole share at once, the whole batch's action noise drawn and these rows' used.
    Returns the observations (tasks, slots, obs_dim), actions, rewards (tasks, slots), the next
    observations and done flags (flat, as the environment gives them)."""
    first, stop, total = share
    tasks = max(stop - first, 0)
    obs = obs.reshape(tasks, slots, -1)
    mean, log_std = distribution(obs)
    noise = torch.randn((total, *mean.shape[1:]), generator=generator, dtype=mean.dtype, device=mean.device)
    action = sample_actions(mean, log_std, noise=noise[first:stop])  # the whole batch's noise, these rows
    next_obs, reward, done = env.step(action.reshape(tasks * slots, -1))
    return obs, action, reward.reshape(tasks, slots), next_obs, done


def _sample_step_budget(
    env,
    distribution: DistributionFn,
    starts: Tensor,
    slots: int,
    generator: torch.Generator,
    horizon: int,
    rows: slice | None,
    share: tuple[int, int, int],
) -> Trajectories:
    """``sampling="steps"`` (module docstring): K = ``slots`` lockstep slots per task, restarted as
    their episodes end; a task keeps the shortest prefix of its paths in (round, slot) order whose
    lengths reach K x H, and is done once that prefix has completed. ``starts`` (total x K, ...) are
    the whole batch's goals per slot; ``share`` = (first task, stop, total tasks)."""
    first, stop, _ = share
    tasks, budget, rounds_max = max(stop - first, 0), slots * horizon, horizon
    if rows is None:
        obs = env.reset(starts, generator)
    else:
        obs = env.reset(starts, generator, rows=slice(first * slots, stop * slots))
    halt = getattr(env, "stop", None)  # optional: an environment without it simulates dropped paths to no use
    # a path's place in the order is round x K + slot; with lengths >= 1 the prefix ends within H rounds
    positions = rounds_max * slots
    slot_index = torch.arange(slots)
    began = torch.zeros(tasks, slots, dtype=torch.long)  # lockstep step at which each slot's current path began
    done_rounds = torch.zeros(tasks, slots, dtype=torch.long)  # completed paths of each slot: its current round
    lengths = torch.zeros(tasks, positions, dtype=torch.long)  # completed paths' lengths by place (0: not yet)
    firsts = torch.zeros(tasks, positions, dtype=torch.long)  # and the lockstep step each began at
    running = torch.ones(tasks, slots, dtype=torch.bool)  # slots whose current path may still be kept
    collecting = torch.ones(tasks, dtype=torch.bool)
    last = torch.zeros(tasks, dtype=torch.long)  # place of the last path of each task's prefix, as far as known
    observations, actions, rewards = [], [], []
    for step in range(rounds_max * horizon):  # round r's paths have all ended by lockstep step (r + 1) H
        if not collecting.any():
            break
        obs, action, reward, next_obs, done = _lockstep(env, distribution, obs, generator, share, slots)
        observations.append(obs)
        actions.append(action)
        rewards.append(reward)
        length = step + 1 - began
        ended = (done.reshape(tasks, slots) | (length >= horizon)) & running
        task, slot = ended.nonzero(as_tuple=True)
        place = done_rounds[task, slot] * slots + slot
        lengths[task, place], firsts[task, place] = length[task, slot], began[task, slot]
        done_rounds = done_rounds + ended
        # the prefix's last place as far as lengths are known: completed paths count their length, a
        # running path the steps it has had plus the one it will take at least, every other path 1
        current = done_rounds * slots + slot_index  # each slot's next or current path's place
        width = min(positions, (int(done_rounds.max()) + 1) * slots)  # no path began beyond: 1 step each there
        at_least = torch.where(lengths[:, :width] > 0, lengths[:, :width], 1)
        task, slot = (running & ~ended).nonzero(as_tuple=True)
        at_least[task, current[task, slot]] = length[task, slot] + 1
        at_least = at_least.cumsum(1)
        # the first place where the lower bound meets the budget
        last = (at_least < budget).sum(1) + (budget - 1 - at_least[:, -1]).clamp(min=0)
        # a task is done once every place up to its prefix's last has completed: its first
        # uncompleted place lies beyond it (the bound is then exact)
        collecting = collecting & (current.min(1).values <= last)
        keep_running = running & collecting[:, None] & (current <= last[:, None])
        if halt is not None and (running & ~keep_running).any():  # none of their paths can be kept
            halt((running & ~keep_running).reshape(-1))
        restart = (ended & keep_running).reshape(-1)
        running = keep_running
        # called at every step, also with no row to restart: each call draws the whole batch's start
        # noise, so a process's share draws what the whole batch does whichever slots end where
        fresh = env.restart(restart, generator)
        next_obs = next_obs.clone()
        next_obs[restart] = fresh.to(next_obs.dtype)
        began = torch.where(restart.reshape(tasks, slots), step + 1, began)
        obs = next_obs
    if collecting.any():  # unreachable: every path ends within H steps, whatever the environment does
        complete = (lengths > 0).long().cumprod(1).bool()  # the completed places before the first gap
        got = torch.where(complete, lengths, 0).sum(1)[collecting].min().item()
        raise RuntimeError(f"the step-budget sampler's kept paths of a task held {got} of {budget} steps after "
                           f"{rounds_max * horizon} lockstep steps, where H rounds must have met the budget (a bug)")
    if not tasks:  # an empty share: nothing was stepped
        empty = obs.new_zeros(0, 0, horizon)
        return Trajectories(empty[..., None].expand(-1, -1, -1, obs.shape[-1]),
                            empty[..., None].expand(-1, -1, -1, env.action_dim), empty, empty)
    task, place = (torch.arange(positions) <= last[:, None]).nonzero(as_tuple=True)  # by task, then place
    kept = torch.stack([task, place % slots, firsts[task, place], lengths[task, place]])
    return _gather_paths(kept, tasks, horizon, observations, actions, rewards)


def _gather_paths(paths: Tensor, tasks: int, horizon: int, observations: list[Tensor], actions: list[Tensor],
                  rewards: list[Tensor]) -> Trajectories:
    """Trajectories (T, N, H, ...) of the kept ``paths`` (4, P: task, slot, first lockstep step,
    length; grouped by task, in the order they are to have), each starting at step 0 of its row; N =
    the most paths any task has, the rest zero padding."""
    task, slot, began, length = paths[:, torch.sort(paths[0], stable=True).indices]  # grouped by task
    counts = torch.bincount(task, minlength=tasks)
    width = int(counts.max()) if tasks else 0
    index = torch.arange(len(task)) - (counts.cumsum(0) - counts)[task]  # each path's place in its task
    offsets = torch.arange(horizon)
    inside = offsets < length[:, None]  # (P, H)
    steps = torch.where(inside, began[:, None] + offsets, 0)
    mask = inside.to(rewards[0].dtype)

    def gather(per_step: list[Tensor]) -> Tensor:
        lockstep = torch.stack(per_step, dim=2)  # (T, K, S, ...)
        picked = lockstep[task[:, None], slot[:, None], steps]  # (P, H, ...)
        picked = torch.where(inside.reshape(*inside.shape, *[1] * (picked.dim() - 2)), picked, 0)  # NaN-safe
        out = picked.new_zeros(tasks, width, *picked.shape[1:])
        out[task, index] = picked
        return out

    padded_mask = mask.new_zeros(tasks, width, horizon)
    padded_mask[task, index] = mask
    return Trajectories(gather(observations), gather(actions), gather(rewards), padded_mask)
