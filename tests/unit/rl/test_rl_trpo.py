"""TRPO pieces alone (float64): conjugate gradient on a known system, KL Hessian-vector products
against the explicit Hessian and finite differences (also through a MAML inner step), the line
search's KL bound, and one full step on a small policy-gradient surrogate."""

import pytest
import torch

from fastmaml.core import adapt
from fastmaml.rl import (
    GaussianMLPPolicy,
    action_distribution,
    conjugate_gradient,
    exact_hvp,
    finite_difference_hvp,
    gaussian_kl,
    line_search,
    policy_log_prob,
    trpo_step,
)
from fastmaml.rl.trpo import flatten, unflatten

MAX_KL = 0.01


def setup(seed=0):
    """A small policy, data sampled from it, and the TRPO surrogate: (policy, θ_old, objective)."""
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(3, 2, hidden_sizes=(6, 6)).double()
    old = {k: p.detach() for k, p in policy.named_parameters()}
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(256, 3, generator=g, dtype=torch.float64)
    with torch.no_grad():
        old_mean, old_log_std = action_distribution(policy, old, obs)
        actions = old_mean + old_log_std.exp() * torch.randn(256, 2, generator=g, dtype=torch.float64)
        old_log_prob = policy_log_prob(policy, old, obs, actions)
    advantages = torch.randn(256, generator=g, dtype=torch.float64)

    def objective(params):
        ratio = torch.exp(policy_log_prob(policy, params, obs, actions) - old_log_prob)
        kl = gaussian_kl(old_mean, old_log_std, *action_distribution(policy, params, obs)).mean()
        return -(ratio * advantages).mean(), kl

    return policy, old, objective


def moved(params, scale=0.05, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {k: p + scale * torch.randn(p.shape, generator=g, dtype=p.dtype) for k, p in params.items()}


def kl_fn(objective):
    return lambda p: objective(p)[1]


def test_conjugate_gradient_solves_a_known_spd_system():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(8, 8, generator=g, dtype=torch.float64)
    a, b = m @ m.T + torch.eye(8, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iters=10)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-8, atol=1e-10)
    calls = []
    conjugate_gradient(lambda v: calls.append(1) or 2 * v, b)  # solved in one step: residual 0 < 1e-10
    assert len(calls) == 1


def test_hvp_equals_the_explicit_hessian_plus_damping():
    _, old, objective = setup()
    theta = moved(old)  # away from θ_old, where the KL Hessian is not just the Fisher matrix
    flat = flatten(theta)
    hessian = torch.autograd.functional.hessian(lambda x: objective(unflatten(x, theta))[1], flat)
    v = torch.randn(flat.numel(), dtype=torch.float64)
    torch.testing.assert_close(exact_hvp(kl_fn(objective), theta, 1e-5)(v), hessian @ v + 1e-5 * v)


def test_hvp_equals_finite_differences_of_the_kl_gradient():
    _, old, objective = setup(seed=2)
    theta = moved(old, seed=3)
    v = torch.randn(flatten(theta).numel(), dtype=torch.float64)

    def kl_grad(x):
        leaves = {k: p.requires_grad_() for k, p in unflatten(x.clone(), theta).items()}
        return flatten(torch.autograd.grad(objective(leaves)[1], list(leaves.values())))

    eps, flat = 1e-5, flatten(theta)
    expected = (kl_grad(flat + eps * v) - kl_grad(flat - eps * v)) / (2 * eps)
    torch.testing.assert_close(exact_hvp(kl_fn(objective), theta, 0.0)(v), expected, rtol=1e-6, atol=1e-8)
    # The original code's variant (ε = 1e-8 / ‖θ‖), which is accurate in float64.
    library_fd = finite_difference_hvp(kl_fn(objective), theta, damping=0.0)(v)
    torch.testing.assert_close(library_fd, expected, rtol=1e-5, atol=1e-6)


def test_hvp_through_a_maml_inner_step_batched_over_tasks():
    """MAML's TRPO differentiates the mean KL of the adapted policies of all tasks (vmap over tasks):
    third derivatives of the inner loss."""
    policy, old, _ = setup(seed=4)
    g = torch.Generator().manual_seed(5)
    support_obs, support_actions = (torch.randn(2, 32, d, generator=g, dtype=torch.float64) for d in (3, 2))
    query_obs = torch.randn(2, 32, 3, generator=g, dtype=torch.float64)
    with torch.no_grad():
        old_mean, old_log_std = action_distribution(policy, old, query_obs)

    def inner_loss(params, obs, actions):
        return -policy_log_prob(policy, params, obs, actions).mean()

    def task_kl(params, obs, actions, query, mean, log_std):
        adapted = adapt(inner_loss, params, obs, actions, lr=0.1, steps=1)
        return gaussian_kl(mean, log_std, *action_distribution(policy, adapted, query)).mean()

    def mean_kl(params):
        per_task = torch.vmap(task_kl, in_dims=(None, 0, 0, 0, 0, 0))
        return per_task(params, support_obs, support_actions, query_obs, old_mean, old_log_std).mean()

    theta = moved(old, seed=6)
    v = torch.randn(flatten(theta).numel(), generator=g, dtype=torch.float64)
    exact = exact_hvp(mean_kl, theta, 0.0)(v)
    fd = finite_difference_hvp(mean_kl, theta, damping=0.0, base_eps=1e-5)(v)
    torch.testing.assert_close(exact, fd, rtol=1e-6, atol=1e-8)


def test_line_search_respects_the_kl_bound():
    _, old, objective = setup(seed=6)
    loss_before = objective(old)[0].item()
    leaves = {k: p.clone().requires_grad_() for k, p in old.items()}
    gradient = flatten(torch.autograd.grad(objective(leaves)[0], list(leaves.values())))
    full_step = 1.5 * gradient / gradient.norm()  # too long: the first candidates break the bound
    result = line_search(objective, old, full_step, loss_before, max_kl=MAX_KL)
    assert result.accepted and result.kl <= MAX_KL and result.loss < loss_before
    assert result.step_fraction < 1
    previous = unflatten(flatten(old) - result.step_fraction / 0.8 * full_step, old)
    loss, kl = (v.item() for v in objective(previous))
    assert kl > MAX_KL or loss >= loss_before  # the previous, longer candidate was rejected
    torch.testing.assert_close(objective(result.params)[1].item(), result.kl)


def test_line_search_rejects_a_step_that_does_not_improve():
    _, old, objective = setup(seed=7)
    loss_before = objective(old)[0].item()
    leaves = {k: p.clone().requires_grad_() for k, p in old.items()}
    gradient = flatten(torch.autograd.grad(objective(leaves)[0], list(leaves.values())))
    result = line_search(objective, old, -1e-3 * gradient, loss_before)  # uphill
    assert not result.accepted and result.step_fraction == 0
    assert all(torch.equal(result.params[k], old[k]) for k in old)


@pytest.mark.parametrize("hvp", ["exact", "finite_difference"])
def test_trpo_step_improves_the_surrogate_within_the_trust_region(hvp):
    _, old, objective = setup(seed=8)
    params, stats = trpo_step(objective, old, max_kl=MAX_KL, hvp=hvp)
    loss, kl = (v.item() for v in objective(params))
    assert stats.accepted and loss < stats.loss_before and kl <= MAX_KL
    assert loss == pytest.approx(stats.loss_after) and kl == pytest.approx(stats.kl_after)
    assert kl > 0.3 * MAX_KL  # the quadratic model puts the full step near the bound
    assert all(not p.requires_grad for p in params.values())


def test_original_finite_difference_step_is_accurate_in_float32_where_the_class_default_is_not():
    """The original runs' ε = 1 / ‖θ‖ against FiniteDifferenceHvp's default 1e-8 / ‖θ‖, both in float32
    (the original's precision), on a policy of the paper's width."""
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(20, 6)  # 100-100, as the locomotion policy
    theta = {k: p.detach() for k, p in policy.named_parameters()}
    obs = torch.randn(512, 20, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        old = action_distribution(policy, theta, obs)

    def mean_kl(params):
        return gaussian_kl(*old, *action_distribution(policy, params, obs)).mean()

    v = 0.1 * torch.randn(flatten(theta).numel(), generator=torch.Generator().manual_seed(2))
    exact = exact_hvp(mean_kl, theta, 0.0)(v)
    error = {eps: ((finite_difference_hvp(mean_kl, theta, 0.0, base_eps=eps)(v) - exact).norm() / exact.norm()).item()
             for eps in (1.0, 1e-8)}
    assert error[1.0] < 0.05 and error[1e-8] > 0.5


def test_trpo_step_uses_the_given_finite_difference_step():
    _, old, objective = setup(seed=8)
    steps = [trpo_step(objective, old, max_kl=MAX_KL, hvp="finite_difference", fd_base_eps=eps)[0] for eps in (1e-8, 30.0)]
    assert any(not torch.allclose(steps[0][k], steps[1][k], rtol=0, atol=1e-9) for k in old)


def test_trpo_step_rejects_an_unknown_hvp():
    _, old, objective = setup()
    with pytest.raises(ValueError, match="hvp must be one of exact, finite_difference, got 'fisher'"):
        trpo_step(objective, old, hvp="fisher")
