"""MAML-TRPO pieces (float64): the REINFORCE inner gradient by hand, the second-order meta-gradient
against finite differences and first order, vmap against the loop, one meta-update's KL bound, the
order of rllab's baseline fits, the oracle's observations and the meta-RL config checks."""

import pytest
import torch

from fastmaml.errors import ConfigError
from fastmaml.rl import GaussianMLPPolicy, action_distribution
from fastmaml.rl.baseline import fit_linear_baseline
from fastmaml.rl.envs import Nav2dBatch
from fastmaml.rl.maml_trpo import (
    Samples,
    adapt,
    adaptation_returns,
    distribution_fn,
    maml_trpo_step,
    meta_objective,
    process_samples,
    reinforce_loss,
    rllab_baseline_coeffs,
    sample_and_adapt,
    split_strategy,
)
from fastmaml.rl.returns import GAMMA, discounted_returns, standardize_advantages
from fastmaml.rl.sampler import Trajectories
from fastmaml.rl.trainer import OracleBatch, RLConfig, _step_kwargs, meta_test_returns
from fastmaml.rl.trpo import flatten, unflatten

F64 = torch.float64
LR = 0.5


def params_of(policy):
    return {k: p.detach().clone() for k, p in policy.named_parameters()}


def tiny_problem(tasks=3, trajectories=4, horizon=12, hidden=(8,), seed=0, strategy="vmap"):
    """A small nav2d meta-batch in float64: (policy, θ, inner samples, outer samples, old (μ, log σ)).

    Biases are made non-zero: every episode starts at s = 0, where zero biases put every ReLU exactly
    at its kink and the loss is not differentiable (finite differences would see a jump)."""
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=hidden).double()
    theta = {k: p + 0.1 * torch.randn_like(p) if "bias" in k else p for k, p in params_of(policy).items()}
    env = Nav2dBatch(dtype=F64)
    g = torch.Generator().manual_seed(seed)
    goals = env.sample_goals(tasks, g).double()
    _, samples, adapted = sample_and_adapt(
        env, policy, theta, goals, g, trajectories=trajectories, lrs=[LR], horizon=horizon, strategy=strategy
    )
    with torch.no_grad():
        old = distribution_fn(policy, adapted, batched=True)(samples[1].observations)
    return policy, theta, samples[:1], samples[1], old


def test_inner_loss_gradient_is_the_hand_computed_reinforce_gradient():
    """Linear-Gaussian policy μ = W s + b: ∇ log π has a closed form; the mask drops finished steps."""
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(3, 2, hidden_sizes=()).double()
    theta = params_of(policy)
    theta["log_std"] = torch.tensor([-0.3, 0.2], dtype=F64)
    g = torch.Generator().manual_seed(1)
    obs, actions = torch.randn(4, 5, 3, generator=g, dtype=F64), torch.randn(4, 5, 2, generator=g, dtype=F64)
    advantages = torch.randn(4, 5, generator=g, dtype=F64)
    mask = torch.ones(4, 5, dtype=F64)
    mask[1, 3:] = mask[2, 1:] = 0
    samples = Samples(obs, actions, advantages * mask, mask)

    grads = torch.func.grad(lambda p: reinforce_loss(policy, p, samples))(theta)

    w, b, log_std = theta["mean.0.weight"], theta["mean.0.bias"], theta["log_std"]
    s, a, adv = obs[mask.bool()], actions[mask.bool()], advantages[mask.bool()]  # (n, ...) valid steps
    d = (a - (s @ w.T + b)) / torch.exp(2 * log_std)  # ∂ log π / ∂μ
    dlog_std = (a - (s @ w.T + b)).square() / torch.exp(2 * log_std) - 1
    n = len(s)
    torch.testing.assert_close(grads["mean.0.weight"], -(adv[:, None, None] * d[:, :, None] * s[:, None, :]).sum(0) / n)
    torch.testing.assert_close(grads["mean.0.bias"], -(adv[:, None] * d).sum(0) / n)
    torch.testing.assert_close(grads["log_std"], -(adv[:, None] * dlog_std).sum(0) / n)
    # and the inner step is θ − α g on every parameter (log σ included), via core's sgd_step
    adapted = adapt(policy, theta, [samples], [LR])
    for k in theta:
        torch.testing.assert_close(adapted[k], theta[k] - LR * grads[k])


def test_second_order_meta_gradient_matches_finite_differences_and_differs_from_first_order():
    policy, theta, inner, outer, old = tiny_problem()
    def loss(p, first_order=False):
        return meta_objective(policy, inner, outer, old, [LR], first_order=first_order)(p)[0]

    leaves = {k: v.clone().requires_grad_() for k, v in theta.items()}
    second = flatten(torch.autograd.grad(loss(leaves), list(leaves.values())))
    first = flatten(torch.autograd.grad(loss(leaves, True), list(leaves.values())))

    g = torch.Generator().manual_seed(5)
    flat, eps = flatten(theta), 1e-6
    for _ in range(4):
        v = torch.randn(flat.numel(), generator=g, dtype=F64)
        fd = (loss(unflatten(flat + eps * v, theta)) - loss(unflatten(flat - eps * v, theta))) / (2 * eps)
        torch.testing.assert_close(second @ v, fd, rtol=1e-6, atol=1e-9)
    assert (second - first).norm() > 1e-2 * second.norm()  # the inner step's Hessian term matters

    # first order = the outer gradient at the adapted parameters, summed back onto θ (dθ'/dθ = I)
    per_task = []
    for i in range(len(outer.mask)):
        adapted = adapt(policy, theta, [Samples(*(t[i] for t in inner[0]))], [LR])
        adapted = {k: v.requires_grad_() for k, v in adapted.items()}
        one = Samples(*(t[i : i + 1] for t in outer))
        objective = meta_objective(policy, [], one, (old[0][i : i + 1], old[1][i : i + 1]), [])
        per_task.append(flatten(torch.autograd.grad(objective(adapted)[0], list(adapted.values()))))
    torch.testing.assert_close(first, torch.stack(per_task).mean(0))


def test_objective_at_the_sampling_policy_has_zero_kl_and_unit_ratio():
    policy, theta, inner, outer, old = tiny_problem()
    loss, kl = meta_objective(policy, inner, outer, old, [LR])(theta)
    assert abs(kl.item()) < 1e-12
    assert abs(loss.item()) < 1e-10  # mean of standardised advantages, ratio 1


def test_vmap_equals_loop_for_the_objective_its_gradient_and_sampling():
    problems = {s: tiny_problem(strategy=s) for s in ("vmap", "loop")}  # sampled with vmap / loop
    policy, theta, inner, outer, old = problems["vmap"]
    torch.testing.assert_close(flatten(outer), flatten(problems["loop"][3]), rtol=1e-10, atol=1e-12)
    results = {}
    for strategy in ("vmap", "loop"):
        leaves = {k: v.clone().requires_grad_() for k, v in theta.items()}
        loss, kl = meta_objective(policy, inner, outer, old, [LR], strategy=strategy)(leaves)
        results[strategy] = (loss, kl, flatten(torch.autograd.grad(loss, list(leaves.values()))))
    for x, y in zip(results["vmap"], results["loop"]):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "options",
    [{}, {"first_order": True}, {"hvp_tasks": 2}, {"strategy": "loop"}, {"strategy": "vmap"},
     {"hvp": "finite_difference"}, {"inner_steps": 0}, {"inner_steps": 2}],
)
def test_one_meta_update_lowers_the_surrogate_within_the_kl_bound(options):
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(16,)).double()
    # non-zero biases: at zero biases every ReLU sits at its kink in the start state s = 0, where the
    # finite-difference Hessian-vector product is garbage (exact double backprop is not affected)
    theta = {k: p + 0.1 * torch.randn_like(p) if "bias" in k else p for k, p in params_of(policy).items()}
    g = torch.Generator().manual_seed(0)
    new, stats = maml_trpo_step(Nav2dBatch(dtype=F64), policy, theta, g, meta_batch_size=4, trajectories=5,
                                inner_lr=LR, horizon=20, **options)
    assert stats.trpo.accepted and stats.trpo.loss_after < stats.trpo.loss_before
    assert 0 < stats.trpo.kl_after <= 0.01
    assert len(stats.returns) == 1 + options.get("inner_steps", 1)
    assert all(not torch.equal(new[k], theta[k]) for k in theta)


def test_auto_strategy_loops_in_a_cpu_meta_update_and_vectorises_a_gpu_one():
    assert split_strategy("auto") == split_strategy("auto", "cpu") == ("vmap", "loop")
    assert split_strategy("auto", "cuda:1") == ("vmap", "vmap")  # a device name needs no GPU to parse
    assert split_strategy("loop", "cuda") == ("loop", "loop")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the meta-update's device)")
@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_meta_update_on_the_gpu_equals_the_cpu_one_and_returns_cpu_parameters(strategy):
    """Sampling stays on the CPU; only the TRPO update moves (float64, so the two agree closely)."""
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(16,)).double()
    theta = {k: p + 0.1 * torch.randn_like(p) if "bias" in k else p for k, p in params_of(policy).items()}
    step = lambda device: maml_trpo_step(  # noqa: E731
        Nav2dBatch(dtype=F64), policy, theta, torch.Generator().manual_seed(0), meta_batch_size=4, trajectories=5,
        inner_lr=LR, horizon=20, strategy=strategy, update_device=device)
    on_cpu, stats_cpu = step(None)
    on_gpu, stats_gpu = step("cuda")
    assert all(v.device.type == "cpu" for v in on_gpu.values())
    assert stats_gpu.returns == stats_cpu.returns  # same samples: sampling did not move
    for k in theta:
        torch.testing.assert_close(on_gpu[k], on_cpu[k], rtol=1e-7, atol=1e-9)


def test_meta_test_returns_have_one_row_per_step_and_repeat_with_the_seed():
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(16,))
    theta = params_of(policy)
    env = Nav2dBatch()
    goals = env.sample_goals(6, torch.Generator().manual_seed(0))
    run = lambda: adaptation_returns(env, policy, theta, goals, torch.Generator().manual_seed(1),  # noqa: E731
                                     trajectories=4, lrs=[LR, LR / 2], horizon=30)
    returns = run()
    assert returns.shape == (3, 6) and torch.isfinite(returns).all() and (returns <= 0).all()
    assert torch.equal(returns, run())


def random_trajectories(tasks=4, n=3, horizon=10, seed=0):
    """Trajectories with random observations and rewards; task 1's first episode ends at step 7."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(tasks, n, horizon, dtype=F64)
    mask[1, 0, 7:] = 0
    obs = torch.randn(tasks, n, horizon, 2, generator=g, dtype=F64)
    rewards = torch.randn(tasks, n, horizon, generator=g, dtype=F64) * mask
    return Trajectories(obs, torch.zeros(tasks, n, horizon, 2, dtype=F64), rewards, mask)


def own_fits(traj):
    return fit_linear_baseline(traj.observations, discounted_returns(traj.rewards, traj.mask, GAMMA), traj.mask)


def test_rllab_baseline_order_at_meta_train_predicts_each_task_with_the_task_processed_before():
    traj = random_trajectories()
    own = own_fits(traj)
    coeffs, pooled = rllab_baseline_coeffs(traj, None, meta_test=False)
    assert (coeffs[0] == 0).all() and torch.equal(coeffs[1:], own[:-1])  # the first round: rllab's unfitted baseline
    # what is carried to the next round is the fit on every task's trajectories together (rllab's logging call)
    pooled_traj = Trajectories(*(x.flatten(0, 1)[None] for x in traj))
    torch.testing.assert_close(pooled, own_fits(pooled_traj))
    assert not torch.allclose(pooled[0], own[-1])
    coeffs, _ = rllab_baseline_coeffs(random_trajectories(seed=1), pooled, meta_test=False)
    assert torch.equal(coeffs[0], pooled[0])


def test_rllab_baseline_order_at_meta_test_is_zero_first_then_the_tasks_own_previous_fit():
    first, second = random_trajectories(), random_trajectories(seed=1)
    coeffs, carried = rllab_baseline_coeffs(first, None, meta_test=True)
    assert (coeffs == 0).all() and torch.equal(carried, own_fits(first))
    coeffs, _ = rllab_baseline_coeffs(second, carried, meta_test=True)
    assert torch.equal(coeffs, own_fits(first))
    # with the zero baseline and λ = 1 the advantages are the standardised discounted returns
    samples = process_samples(first, coeffs=torch.zeros_like(carried))
    expected = standardize_advantages(discounted_returns(first.rewards, first.mask, GAMMA), first.mask)
    torch.testing.assert_close(samples.advantages, expected)


def test_sample_and_adapt_follows_the_chosen_baseline_order():
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(8,)).double()
    env = Nav2dBatch(dtype=F64)
    goals = env.sample_goals(3, torch.Generator().manual_seed(0)).double()
    run = lambda fit: sample_and_adapt(env, policy, params_of(policy), goals, torch.Generator().manual_seed(1),  # noqa: E731
                                       trajectories=4, lrs=[LR], horizon=12, baseline_fit=fit, meta_test=True)
    own, rllab = run("own"), run("rllab")
    # the same first round (the baseline changes the step, so the second round's samples differ)
    assert torch.equal(own[0][0].observations, rllab[0][0].observations)
    assert not torch.equal(own[0][1].observations, rllab[0][1].observations)
    expected = standardize_advantages(discounted_returns(own[0][0].rewards, own[0][0].mask, GAMMA), own[0][0].mask)
    torch.testing.assert_close(rllab[1][0].advantages, expected)
    assert not torch.allclose(own[1][0].advantages, rllab[1][0].advantages)
    with pytest.raises(ValueError, match="baseline_fit must be"):
        run("mine")


def test_a_runs_baseline_fit_reaches_its_meta_updates_and_its_meta_test():
    assert _step_kwargs(RLConfig(baseline_fit="rllab"))["baseline_fit"] == "rllab"
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(8,))
    env = Nav2dBatch()
    goals = env.sample_goals(3, torch.Generator().manual_seed(0))
    run = lambda fit: meta_test_returns(RLConfig(baseline_fit=fit, eval_trajectories=4, horizon=12), "maml",  # noqa: E731
                                        env, policy, params_of(policy), goals, [LR], seed=1)
    expected = adaptation_returns(env, policy, params_of(policy), goals, torch.Generator().manual_seed(1),
                                  trajectories=4, lrs=[LR], horizon=12, baseline_fit="rllab")
    assert torch.equal(run("rllab"), expected) and not torch.equal(run("own"), expected)


def test_oracle_observations_carry_the_goal():
    env = OracleBatch(Nav2dBatch())
    goals = torch.tensor([[0.3, -0.2], [-0.1, 0.4]])
    obs = env.reset(goals)
    assert env.obs_dim == 4 and torch.equal(obs, torch.cat([torch.zeros(2, 2), goals], 1))
    obs, _, _ = env.step(torch.ones(2, 2))
    torch.testing.assert_close(obs, torch.cat([torch.full((2, 2), 0.1), goals], 1))
    policy = GaussianMLPPolicy(env.obs_dim, 2)
    assert action_distribution(policy, params_of(policy), obs)[0].shape == (2, 2)


@pytest.mark.parametrize(
    "change, message",
    [({"env": "pong"}, "unknown environment"), ({"baselines": ("random",)}, "unknown baselines"),
     ({"hvp": "magic"}, "hvp must be"), ({"inner_lr": 0.0}, "inner_lr must be > 0"),
     ({"strategy": "pmap"}, "strategy must be"), ({"device": "gpu0"}, "device must be cpu, cuda"),
     ({"baseline_fit": "mine"}, "baseline_fit must be")],
)
def test_config_errors_say_what_is_wrong(change, message):
    with pytest.raises(ConfigError, match=message):
        RLConfig(**change).validate()
