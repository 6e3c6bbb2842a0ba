"""The Gaussian MLP policy: initialisation as maml_rl, log-likelihood and KL against torch.distributions,
and the pure functions under vmap with per-task parameters."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from fastmaml.rl import GaussianMLPPolicy, action_distribution, gaussian_kl, gaussian_log_prob, policy_log_prob


def test_architecture_and_initialisation():
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(20, 6)
    shapes = {k: tuple(p.shape) for k, p in policy.named_parameters()}
    assert shapes == {
        "mean.0.weight": (100, 20),
        "mean.0.bias": (100,),
        "mean.2.weight": (100, 100),
        "mean.2.bias": (100,),
        "mean.4.weight": (6, 100),
        "mean.4.bias": (6,),
        "log_std": (6,),
    }
    assert all(policy.get_parameter(k).abs().max() == 0 for k in shapes if k.endswith("bias"))
    assert policy.log_std.abs().max() == 0  # init_std 1
    bound = math.sqrt(6 / (100 + 100))  # Glorot uniform
    assert policy.mean[2].weight.abs().max() <= bound and policy.mean[2].weight.abs().max() > 0.9 * bound
    assert isinstance(policy.mean[1], torch.nn.ReLU)
    with pytest.raises(ValueError, match="init_std must be > 0"):
        GaussianMLPPolicy(2, 2, init_std=0.0)


def test_log_prob_and_kl_match_torch_distributions():
    g = torch.Generator().manual_seed(1)
    mean_p, mean_q, actions = (torch.randn(7, 3, generator=g, dtype=torch.float64) for _ in range(3))
    log_std_p, log_std_q = (0.5 * torch.randn(7, 3, generator=g, dtype=torch.float64) for _ in range(2))
    p, q = Normal(mean_p, log_std_p.exp()), Normal(mean_q, log_std_q.exp())
    torch.testing.assert_close(gaussian_log_prob(mean_p, log_std_p, actions), p.log_prob(actions).sum(-1))
    torch.testing.assert_close(gaussian_kl(mean_p, log_std_p, mean_q, log_std_q), kl_divergence(p, q).sum(-1))
    assert gaussian_kl(mean_p, log_std_p, mean_p, log_std_p).abs().max() < 1e-12


def test_std_is_floored_at_1e6():
    policy = GaussianMLPPolicy(2, 2)
    params = {**dict(policy.named_parameters()), "log_std": torch.full((2,), -30.0)}
    _, log_std = action_distribution(policy, params, torch.zeros(4, 2))
    assert log_std.shape == (4, 2) and torch.allclose(log_std, torch.full((4, 2), math.log(1e-6)))


def test_per_task_params_under_vmap_equal_a_loop():
    torch.manual_seed(2)
    policy = GaussianMLPPolicy(4, 2, hidden_sizes=(8, 8)).double()
    per_task = {k: p.detach() + 0.1 * torch.randn(3, *p.shape, dtype=p.dtype) for k, p in policy.named_parameters()}
    obs, actions = torch.randn(3, 10, 4, dtype=torch.float64), torch.randn(3, 10, 2, dtype=torch.float64)
    batched = torch.vmap(lambda p, o, a: policy_log_prob(policy, p, o, a))(per_task, obs, actions)
    looped = torch.stack(
        [policy_log_prob(policy, {k: v[i] for k, v in per_task.items()}, obs[i], actions[i]) for i in range(3)]
    )
    torch.testing.assert_close(batched, looped)
    grads = torch.func.grad(lambda p: policy_log_prob(policy, p, obs[0], actions[0]).mean())(
        dict(policy.named_parameters())
    )
    assert set(grads) == set(dict(policy.named_parameters()))
