"""MAML for reinforcement learning (Finn et al., 2017, Algorithm 3): a REINFORCE inner step and a
TRPO meta-update, as pure functions of the policy's parameter dict, batched over tasks.

For every task i of a meta-batch (goals drawn from the environment's task distribution):

    D_i   ~ π_θ                                         K trajectories before adaptation (line 5)
    θ'_i  = θ − α ∇θ L_i(θ),  L_i(θ) = −(1/|D_i|) Σ_{D_i} log π_θ(a|s) Â(s, a)     (lines 6-7)
    D'_i  ~ π_θ'_i                                      K trajectories after adaptation (line 8)

    meta-loss  L(θ)  = mean_i −(1/|D'_i|) Σ_{D'_i} π_θ'_i(θ)(a|s) / π_old(a|s) · Â'(s, a)
    KL         KL(θ) = mean over every step of every D'_i of KL(π_old(·|s) ‖ π_θ'_i(θ)(·|s))
    θ ← TRPO step: minimise L subject to KL ≤ max_kl                                 (line 10)

where π_old is the adapted policy that collected D'_i, |D| counts the steps inside episodes and Â
are GAE advantages (λ = 1: return minus the linear feature baseline fitted to that task's own
samples), standardised per task. θ'_i(θ) stays in the graph, so the gradient and the KL's
Hessian-vector products differentiate through the inner policy-gradient step (second order);
``first_order=True`` treats the inner gradient as a constant. ``inner_steps = 0`` is plain TRPO on
the pre-update samples: the paper's "pretrained" baseline and the oracle.

``adapt_keys`` names the parameters the inner step adapts (default: all). The paper's context-vector
baseline (appendix) is ``adapt_keys=("context",)`` with a policy that reads a context vector c
(``GaussianMLPPolicy(context_dim=d)``): c'_i = c − α ∇c L_i(θ), the network weights and log σ stay
at θ inside every task, and the TRPO meta-update changes all of θ (weights and c's start) through
the same objective. The inner gradient is taken with respect to those keys only, the other
parameters enter it as constants of the inner ``torch.func.grad`` and still receive the second-order
meta-gradient through it.

Conventions checked against cbfinn/maml_rl (``sandbox/rocky/tf/algos/maml_npo.py``,
``policies/maml_minimal_gauss_mlp_policy.py``, ``rllab/sampler/base.py``,
``maml_examples/maml_trpo_point.py``, ``cluster_maml_trpo_cheetah.py``, ``test_maml_*.py``); the same
here: per-task mean inner and outer surrogates, mean over tasks, KL(old ‖ new) of the post-update
policies averaged over all their samples (the original concatenates the tasks' KL terms), every
parameter (log σ included) adapted, one inner lr for all of them, and each task's linear baseline
fitted to its own samples before predicting them (the MAML loop, ``batch_maml_polopt.py``, calls
``process_samples(itr, paths, prefix=..., log=...)``, and of the two versions of
``rllab/sampler/base.py`` in cbfinn/maml_rl's history only the fit-first one takes ``prefix``).
Different:

- An option, ``baseline_fit="rllab"``: the other, older ``process_samples`` (upstream rllab's)
  predicted with the coefficients of its *previous* fit and fitted afterwards: at meta-train the
  task processed just before (for the first task of a round, the fit on all tasks of the round
  before), at meta-test (one fresh baseline per task) the unfitted zero baseline at the first step
  and the same task's previous step after. :func:`rllab_baseline_coeffs` reproduces that order,
  except that the first task of an iteration's first round gets the zero baseline where rllab had
  the previous iteration's fit, and that the trained baselines (TRPO without adaptation) get the
  same previous-task order where rllab's joint TRPO predicted all tasks with the previous
  iteration's fit. Measured on half-cheetah direction, it made MAML worse (46 against 86 after one
  meta-test step, ``benchmarks/results/rl_cpu.md``).
- By default (``sampling="trajectories"``) exactly K trajectories per task. The original's sampler
  stepped every task's environment in lockstep until K x horizon x meta-batch completed steps were
  collected in all, resetting an environment whose episode ended and dropping unfinished paths, so a
  task whose episodes end early got more, shorter ones: in 2D navigation (episodes end at the goal)
  and the ant (it ends when the torso leaves [0.2, 1.0]; with N(0, 1) actions, the initial policy's
  noise, 8 of 16 episodes ended early, mean length 160 of 200: about 20% fewer steps per task here at
  initialisation; a review's measurement, 2026-12-07). The half-cheetah's episodes never end early.
  ``sampling="steps"`` samples as the original did (``fastmaml.rl.sampler``), with the budget per
  task (K x horizon completed steps) rather than over the meta-batch, so that it does not depend on
  how tasks are split over processes; the original's meta-test scripts (VPG, batch_size 4000 = 20 x
  200 steps) sampled the same way, and ``fastmaml eval`` / ``adapt`` follow the run's setting. At
  ant-dir's preset (40 tasks x 40) and initialisation it collected 52.5 paths and 8093 steps per
  task (K trajectories: 40 and 6195) and a sampling round took 33 s against 18 s (2-core AMD EPYC
  VM, torch 2.13 CPU, one thread, ``python benchmarks/rl_sampling_bench.py``,
  ``benchmarks/results/rl_sampling_cpu.md``). The K slots of a task run in parallel, but the kept
  paths are those of a (round, slot) order fixed in advance, the shortest prefix reaching the
  budget, so they are distributed as the original's one environment per task running episodes one
  after another: 154 steps per kept path there, the episodes' 155 (keeping paths as they complete,
  each slot dropping its unfinished last one, kept 58 paths of 139 steps).
- Tasks are batched (``torch.vmap`` for sampling, a loop in the meta-objective: measured faster, see
  :func:`split_strategy`) and H v is exact double backprop by default; the original used
  ``FiniteDifferenceHvp`` (``hvp="finite_difference"`` here) with ε = 1 / ‖θ‖: its optimizer passed
  ``num_slices = 1`` positionally into ``base_eps`` (:func:`fastmaml.rl.trpo.finite_difference_hvp`).
  That large ε matters: at the class default 1e-8 / ‖θ‖, 2D navigation's initialisation (every
  episode starts at s = 0 and the biases at 0, so every ReLU sits on its kink and θ ± εv lands on
  different linear pieces) gives garbage products: the line search rejected the first two steps
  and the third moved the policy by a KL of 5e-6; at 1 / ‖θ‖ every step was accepted and the
  post-adaptation return rose from -64 to -26 in 5 iterations (``--set fd_base_eps=1e-8`` / ``1.0``,
  float32). Exact products use ReLU's one-sided derivative and are unaffected. On half-cheetah the
  original's products are within about 1% of the exact ones (the same TRPO direction, fresh and
  trained policies; ``benchmarks/rl_hvp_probe.py``), and a full run with them met the same plateau
  (``benchmarks/results/rl_cpu.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from fastmaml.core.functional import Params, inner_loss_grads, sgd_step
from fastmaml.rl.baseline import fit_linear_baseline, predict_linear_baseline
from fastmaml.rl.policy import action_distribution, gaussian_kl, gaussian_log_prob, policy_log_prob
from fastmaml.rl.returns import GAE_LAMBDA, GAMMA, discounted_returns, gae, standardize_advantages
from fastmaml.rl.sampler import SAMPLINGS, Trajectories, sample_trajectories
from fastmaml.rl.trpo import CG_ITERS, DAMPING, MAX_KL, ORIGINAL_FD_BASE_EPS, TRPOStats, trpo_step

STRATEGIES = ("auto", "vmap", "loop")
BASELINE_FITS = ("own", "rllab")  # which linear-baseline fit predicts a task's values (module docstring)


def split_strategy(strategy: str, update_device: str | torch.device = "cpu") -> tuple[str, str]:
    """(sampling and no-graph adaptation, differentiated meta-objective) for a ``strategy`` name.

    ``"auto"`` vectorises sampling (one policy call per time step for all tasks: 2-4x faster than a
    loop in 2D navigation) and, on the CPU, loops over tasks in the second-order meta-objective,
    where vmap's batched weights made the TRPO update slower: 1.2-1.5x in 2D navigation, 1.5-2.3x in
    half-cheetah at paper settings (``benchmarks/results/rl_cpu.md``). With the meta-update on a GPU
    ``"auto"`` vectorises it too: a loop there is 40 tasks x hundreds of tiny kernel launches per
    Hessian-vector product. That choice is not measured yet (no session so far had a GPU for it);
    ``benchmarks/gpu_check.sh`` times both."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if strategy != "auto":
        return strategy, strategy
    return ("vmap", "loop") if torch.device(update_device).type == "cpu" else ("vmap", "vmap")


class Samples(NamedTuple):
    """Trajectories ready for a loss. With a leading task dimension: (T, N, H, ...); for one task
    (N, H, ...). ``advantages`` are standardised per task and 0 where ``mask`` is 0."""

    observations: Tensor
    actions: Tensor
    advantages: Tensor
    mask: Tensor


def process_samples(
    traj: Trajectories, discount: float = GAMMA, gae_lambda: float = GAE_LAMBDA, coeffs: Tensor | None = None
) -> Samples:
    """Advantages for every task of ``traj``: GAE against the linear feature baseline, standardised
    over the task's steps (rllab's ``center_adv``). The baseline's coefficients (T, F) are ``coeffs``
    where given, else fitted to each task's own discounted returns."""
    if coeffs is None:
        coeffs = own_baseline_fits(traj, discount)
    values = predict_linear_baseline(coeffs, traj.observations)
    advantages = standardize_advantages(gae(traj.rewards, values, traj.mask, discount, gae_lambda), traj.mask)
    return Samples(traj.observations, traj.actions, advantages, traj.mask)


def own_baseline_fits(traj: Trajectories, discount: float = GAMMA, returns: Tensor | None = None) -> Tensor:
    """Each task's linear-baseline coefficients (T, F), fitted to its own discounted returns."""
    if returns is None:
        returns = discounted_returns(traj.rewards, traj.mask, discount)
    return fit_linear_baseline(traj.observations, returns, traj.mask)


def rllab_baseline_coeffs(
    traj: Trajectories, previous: Tensor | None, *, meta_test: bool, discount: float = GAMMA
) -> tuple[Tensor, Tensor]:
    """Upstream rllab's order of baseline fits (predict, then fit; module docstring): the
    coefficients (T, F) that predict the values of ``traj``'s T tasks, and the ``previous`` to pass
    with the next sampling round.

    Meta-train (one baseline object shared by the tasks, processed one after another, then once
    more on all of them for logging): task i uses task i-1's fit, task 0 the fit on every task of
    the round before. Meta-test (a fresh baseline per task): each task uses its own fit from the
    round before. ``previous=None`` (a first round) is rllab's unfitted baseline, which predicts 0."""
    returns = discounted_returns(traj.rewards, traj.mask, discount)
    own = own_baseline_fits(traj, returns=returns)
    if meta_test:
        return (torch.zeros_like(own) if previous is None else previous), own
    first = own.new_zeros(1, own.shape[1]) if previous is None else previous
    pooled = fit_linear_baseline(*(x.flatten(0, 1)[None] for x in (traj.observations, returns, traj.mask)))
    return torch.cat([first, own[:-1]]), pooled


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return (x * mask).sum() / mask.sum()


def reinforce_loss(policy: nn.Module, params: Params, samples: Samples) -> Tensor:
    """One task's inner loss (Algorithm 3, line 6), whose gradient is the REINFORCE estimate:
    L(θ) = −(1/n) Σ_t log π_θ(a_t | s_t) Â_t over the n steps inside episodes."""
    log_prob = policy_log_prob(policy, params, samples.observations, samples.actions)  # (N, H)
    return -masked_mean(log_prob * samples.advantages, samples.mask)


def adapt(
    policy: nn.Module,
    params: Params,
    inner: Sequence[Samples],
    lrs: Sequence[float],
    first_order: bool = False,
    adapt_keys: Sequence[str] | None = None,
) -> Params:
    """θ'_i for one task: one SGD step (``fastmaml.core.sgd_step``) per entry of ``inner``, the
    samples collected with the parameters before that step (Algorithm 3, line 7). Only the
    parameters named in ``adapt_keys`` (default: all) are stepped; the others are returned as given."""
    if adapt_keys is None:
        fast, fixed = params, {}
    else:
        missing = [k for k in adapt_keys if k not in params]
        if missing:
            raise ValueError(f"adapt_keys names {missing[0]!r}, which the policy does not have")
        fast = {k: params[k] for k in adapt_keys}
        fixed = {k: v for k, v in params.items() if k not in fast}
    loss = lambda p, samples, _: reinforce_loss(policy, {**fixed, **p}, samples)  # noqa: E731 - core's (params, x, y)
    for samples, lr in zip(inner, lrs, strict=True):
        fast = sgd_step(fast, inner_loss_grads(loss, fast, samples, None, first_order), lr)
    return {k: fast.get(k, v) for k, v in params.items()}


def map_tasks(fn: Callable[..., Any], params: Params, *task_args: Any, batched: bool, strategy: str = "vmap") -> Any:
    """``fn(params_i, *args_i)`` for every task i, stacked along a new leading task dimension.

    ``task_args`` carry a leading task dimension on every tensor; ``params`` too when ``batched``
    (per-task adapted parameters), otherwise they are shared. ``strategy`` is ``"vmap"`` (one
    vectorised call) or ``"loop"`` (a Python loop over tasks: the reference)."""
    if strategy == "vmap":
        return torch.vmap(fn, in_dims=(0 if batched else None, *[0] * len(task_args)))(params, *task_args)
    if strategy != "loop":
        raise ValueError(f"strategy must be vmap or loop, got {strategy!r}")
    tasks = pytree.tree_leaves(task_args)[0].shape[0] if task_args else len(next(iter(params.values())))
    pick = lambda tree, i: pytree.tree_map(lambda t: t[i], tree)  # noqa: E731
    outputs = [fn(pick(params, i) if batched else params, *pick(task_args, i)) for i in range(tasks)]
    flat, spec = zip(*(pytree.tree_flatten(out) for out in outputs))
    return pytree.tree_unflatten([torch.stack(column) for column in zip(*flat)], spec[0])


def distribution_fn(policy: nn.Module, params: Params, *, batched: bool, strategy: str = "vmap"):
    """obs (T, ..., obs_dim) -> (μ, log σ) of the shared policy, or of task i's own parameters."""
    if not batched:
        return partial(action_distribution, policy, params)
    one_task = lambda p, obs: action_distribution(policy, p, obs)  # noqa: E731
    return lambda obs: map_tasks(one_task, params, obs, batched=True, strategy=strategy)


def _task_surrogate(
    policy: nn.Module,
    lrs: Sequence[float],
    first_order: bool,
    adapt_keys: Sequence[str] | None,
    params: Params,
    inner: list[Samples],
    outer: Samples,
    old_mean: Tensor,
    old_log_std: Tensor,
) -> tuple[Tensor, Tensor]:
    """One task's TRPO surrogate after adaptation and the sum of its KL terms."""
    adapted = adapt(policy, params, inner, lrs, first_order, adapt_keys)
    mean, log_std = action_distribution(policy, adapted, outer.observations)
    old_log_prob = gaussian_log_prob(old_mean, old_log_std, outer.actions)
    ratio = torch.exp(gaussian_log_prob(mean, log_std, outer.actions) - old_log_prob)
    kl = gaussian_kl(old_mean, old_log_std, mean, log_std)
    return -masked_mean(ratio * outer.advantages, outer.mask), (kl * outer.mask).sum()


def meta_objective(
    policy: nn.Module,
    inner: Sequence[Samples],
    outer: Samples,
    old: tuple[Tensor, Tensor],
    lrs: Sequence[float],
    *,
    first_order: bool = False,
    strategy: str = "auto",
    tasks: int | None = None,
    adapt_keys: Sequence[str] | None = None,
    totals: tuple[int, Tensor] | None = None,
) -> Callable[[Params], tuple[Tensor, Tensor]]:
    """``params -> (meta-loss, mean KL)`` for :func:`fastmaml.rl.trpo.trpo_step` (module docstring).

    ``inner`` holds one ``Samples`` (T, N, H, ...) per inner step, ``outer`` the post-update samples
    and ``old`` the (μ, log σ) at ``outer.observations`` of the policies that collected them. With
    ``tasks=k`` only the first k tasks count (e.g. a cheaper KL for the Hessian-vector products).
    ``adapt_keys``: the parameters the inner step adapts (default: all).
    ``totals=(tasks, steps)``: the meta-batch's number of tasks and of steps inside episodes in
    ``outer``, when these samples are one process's share of it (torch.distributed): the loss and KL
    are then this share's part of the meta-batch's, which sum over the processes to the whole.
    """
    inner = list(inner)
    if tasks is not None:
        inner, outer, old = pytree.tree_map(lambda t: t[:tasks], (inner, outer, old))
    task_fn = partial(_task_surrogate, policy, tuple(lrs), first_order, adapt_keys)
    strategy = split_strategy(strategy, outer.observations.device)[1]

    def objective(params: Params) -> tuple[Tensor, Tensor]:
        surrogate, kl_sum = map_tasks(task_fn, params, inner, outer, *old, batched=False, strategy=strategy)
        if totals is not None:
            return surrogate.sum() / totals[0], kl_sum.sum() / totals[1]
        return surrogate.mean(), kl_sum.sum() / outer.mask.sum()

    return objective


class StepStats(NamedTuple):
    """``returns[k]``: mean undiscounted return of the trajectories sampled after k inner steps
    (k = 0 .. inner_steps); ``trpo``: the meta-update's loss, KL and line-search outcome;
    ``task_returns`` (inner_steps + 1, T): the same per task; ``goals``: the T tasks' goals."""

    returns: list[float]
    trpo: TRPOStats
    task_returns: Tensor
    goals: Tensor


def sample_and_adapt(
    env,
    policy: nn.Module,
    params: Params,
    goals: Tensor,
    generator: torch.Generator,
    *,
    trajectories: int,
    lrs: Sequence[float],
    horizon: int | None = None,
    discount: float = GAMMA,
    gae_lambda: float = GAE_LAMBDA,
    strategy: str = "auto",
    process_last: bool = True,
    adapt_keys: Sequence[str] | None = None,
    baseline_fit: str = "own",
    meta_test: bool = False,
    rows: slice | None = None,
    sampling: str = "trajectories",
) -> tuple[list[Trajectories], list[Samples], Params | None]:
    """Sample ``trajectories`` per goal with θ, adapt (first order, no graph; only ``adapt_keys``,
    default all), sample again, ... : len(lrs) + 1 sampling rounds. Returns the trajectories and
    processed samples of every round (the last one only with ``process_last``) and the final
    per-task parameters, every one with a leading task dimension (None when ``lrs`` is empty).
    ``baseline_fit``: "own" fits each task's baseline to its samples; "rllab" keeps the original's
    order (:func:`rllab_baseline_coeffs`, at meta-test or meta-train as ``meta_test`` says).
    ``rows``: sample and adapt only those tasks of ``goals`` (one process's share under
    torch.distributed, :func:`fastmaml.rl.sampler.sample_trajectories`); everything returned then
    holds those tasks only. ``sampling``: "trajectories" (``trajectories`` per task) or "steps" (a
    budget of ``trajectories`` x horizon completed steps per task, the original's; module docstring)."""
    if baseline_fit not in BASELINE_FITS:
        raise ValueError(f"baseline_fit must be one of {', '.join(BASELINE_FITS)}, got {baseline_fit!r}")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
    if rows is not None and baseline_fit == "rllab":
        raise ValueError("baseline_fit='rllab' chains each task's baseline to the task before; it needs every "
                         "task in one process (rows=None)")
    trajs, samples, adapted, batched, previous = [], [], params, False, None
    strategy = split_strategy(strategy)[0]
    for step in range(len(lrs) + 1):
        dist = distribution_fn(policy, adapted, batched=batched, strategy=strategy)
        trajs.append(sample_trajectories(env, dist, goals, trajectories, generator, horizon, rows, sampling))
        if step < len(lrs) or process_last:
            coeffs = None
            if baseline_fit == "rllab":
                coeffs, previous = rllab_baseline_coeffs(trajs[-1], previous, meta_test=meta_test, discount=discount)
            samples.append(process_samples(trajs[-1], discount, gae_lambda, coeffs))
        if step < len(lrs):
            one_step = lambda p, s, lr=lrs[step]: adapt(policy, p, [s], [lr], True, adapt_keys)  # noqa: E731
            with torch.no_grad():
                adapted = map_tasks(one_step, adapted, samples[-1], batched=batched, strategy=strategy)
            batched = True
    return trajs, samples, adapted if batched else None


def maml_trpo_step(
    env,
    policy: nn.Module,
    params: Params,
    generator: torch.Generator,
    *,
    meta_batch_size: int,
    trajectories: int = 20,
    inner_lr: float = 0.1,
    inner_steps: int = 1,
    first_order: bool = False,
    horizon: int | None = None,
    discount: float = GAMMA,
    gae_lambda: float = GAE_LAMBDA,
    max_kl: float = MAX_KL,
    damping: float = DAMPING,
    cg_iters: int = CG_ITERS,
    hvp: str = "exact",
    hvp_tasks: int = 0,
    strategy: str = "auto",
    adapt_keys: Sequence[str] | None = None,
    update_device: str | torch.device | None = None,
    baseline_fit: str = "own",
    fd_base_eps: float = ORIGINAL_FD_BASE_EPS,
    rows: slice | None = None,
    all_sum: Callable[[Tensor], Tensor] | None = None,
    sampling: str = "trajectories",
) -> tuple[Params, StepStats]:
    """One meta-iteration of Algorithm 3: draw ``meta_batch_size`` goals, sample, adapt, sample,
    TRPO-update θ through the adaptation. ``inner_steps=0``: TRPO on all tasks jointly (no adaptation).

    ``hvp_tasks=k`` computes the KL's Hessian-vector products on the first k tasks only (0: all).
    ``adapt_keys``: the parameters the inner step adapts (default all; the context-vector baseline's
    ``("context",)``); the TRPO step updates every parameter either way.
    ``update_device``: where the TRPO meta-update runs (e.g. ``"cuda"``); sampling and the no-graph
    adaptation stay where ``params`` are (the CPU, beside MuJoCo), the samples are copied over once
    per iteration and the new parameters come back on ``params``' device. ``None``: ``params``' device.
    ``baseline_fit``: "own" or "rllab" (upstream rllab's predict-then-fit order, module docstring).
    ``fd_base_eps``: the finite-difference step of ``hvp="finite_difference"`` (default: the
    original runs' 1.0, :func:`fastmaml.rl.trpo.finite_difference_hvp`).
    ``sampling``: "trajectories" (``trajectories`` per task) or "steps" (the original's budget of
    ``trajectories`` x horizon completed steps per task; module docstring). The returned ``returns``
    are then the mean over all completed paths, rllab's ``AverageReturn``.
    Randomness (goals, action noise, start states) comes from ``generator``.

    Split over processes (torch.distributed): every process passes the same ``params`` and
    ``generator`` state, its share of the tasks as ``rows`` and ``all_sum`` (a tensor -> its sum
    over the processes, the same on each). Each samples and adapts its tasks only, with the random
    numbers the whole batch would give them; the gradient, the Hessian-vector products and the line
    search's loss and KL are summed (:func:`fastmaml.rl.trpo.trpo_step`), so every process takes the
    single-process update, up to floating-point summation order, and ends with the same parameters
    and generator state. The returned statistics cover the whole meta-batch.
    """
    if (rows is None) != (all_sum is None):
        raise ValueError("give rows and all_sum together (a process's share of the tasks and the sum over "
                         "processes)")
    if rows is not None and 0 < hvp_tasks < meta_batch_size:
        raise ValueError("hvp_tasks (the KL of the first tasks only) needs every task in one process (rows=None)")
    params = {k: p.detach() for k, p in params.items()}
    home = next(iter(params.values())).device
    update_device = torch.device(home if update_device is None else update_device)
    goals = env.sample_goals(meta_batch_size, generator)
    lrs = [inner_lr] * inner_steps
    trajs, samples, adapted = sample_and_adapt(
        env, policy, params, goals, generator, trajectories=trajectories, lrs=lrs, horizon=horizon,
        discount=discount, gae_lambda=gae_lambda, strategy=strategy, adapt_keys=adapt_keys, baseline_fit=baseline_fit,
        rows=rows, sampling=sampling,
    )
    with torch.no_grad():
        old = distribution_fn(policy, params if adapted is None else adapted, batched=adapted is not None,
                              strategy=split_strategy(strategy)[0])(samples[-1].observations)
    update_params = params
    if update_device != home:  # one copy of everything the update reads; the policy module holds no tensors it uses
        samples, old, update_params = pytree.tree_map(lambda t: t.to(update_device), (samples, old, params))
    outer = samples[-1]
    common = {"first_order": first_order, "strategy": strategy, "adapt_keys": adapt_keys}
    if all_sum is not None:  # this process's share of the meta-batch's loss and KL
        common["totals"] = (meta_batch_size, all_sum(outer.mask.sum()))
    objective = meta_objective(policy, samples[:-1], outer, old, lrs, **common)
    kl_fn = None
    if 0 < hvp_tasks < meta_batch_size:  # the KL (and its Hessian) of the first hvp_tasks tasks only
        kl_objective = meta_objective(policy, samples[:-1], outer, old, lrs, tasks=hvp_tasks, **common)
        kl_fn = lambda p: kl_objective(p)[1]  # noqa: E731
    new_params, stats = trpo_step(objective, update_params, max_kl=max_kl, damping=damping, cg_iters=cg_iters,
                                  hvp=hvp, kl_fn=kl_fn, fd_base_eps=fd_base_eps, all_sum=all_sum)
    new_params = {k: v.to(home) for k, v in new_params.items()}
    task_returns = torch.stack([t.task_returns() for t in trajs])  # padding left out
    if all_sum is None:
        returns = [t.mean_return().item() for t in trajs]
    else:  # every process's tasks in their places; the others' entries are 0 before the sum
        whole = task_returns.new_zeros(len(trajs), meta_batch_size)
        whole[:, rows] = task_returns
        task_returns = all_sum(whole)
        if sampling == "steps":  # the mean over all paths: each task weighs as many paths as it got
            paths = task_returns.new_zeros(len(trajs), meta_batch_size)
            paths[:, rows] = torch.stack([t.paths for t in trajs]).to(paths.dtype)
            paths = all_sum(paths)
            returns = ((task_returns * paths).sum(1) / paths.sum(1)).tolist()
        else:
            returns = task_returns.mean(1).tolist()
    return new_params, StepStats(returns, stats, task_returns, goals)


@torch.no_grad()
def adaptation_returns(
    env,
    policy: nn.Module,
    params: Params,
    goals: Tensor,
    generator: torch.Generator,
    *,
    trajectories: int,
    lrs: Sequence[float],
    horizon: int | None = None,
    discount: float = GAMMA,
    gae_lambda: float = GAE_LAMBDA,
    strategy: str = "auto",
    adapt_keys: Sequence[str] | None = None,
    baseline_fit: str = "own",
    sampling: str = "trajectories",
    with_paths: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Meta-test: the mean undiscounted return per task after 0, 1, ..., len(lrs) inner steps, each
    step a REINFORCE step at ``lrs[k]`` on the trajectories just sampled (on ``adapt_keys`` only,
    default all): shape (len(lrs) + 1, T). ``baseline_fit="rllab"``: the original meta-test's
    baselines (zero at the first step, then the task's fit from the step before). ``sampling``:
    "trajectories" or "steps" (:func:`sample_and_adapt`); ``with_paths``: also return how many
    trajectories each task got at each step, (len(lrs) + 1, T)."""
    trajs, _, _ = sample_and_adapt(
        env, policy, params, goals, generator, trajectories=trajectories, lrs=lrs, horizon=horizon,
        discount=discount, gae_lambda=gae_lambda, strategy=strategy, process_last=False, adapt_keys=adapt_keys,
        baseline_fit=baseline_fit, meta_test=True, sampling=sampling,
    )
    returns = torch.stack([t.task_returns() for t in trajs])
    return (returns, torch.stack([t.paths for t in trajs])) if with_paths else returns
