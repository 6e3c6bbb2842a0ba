"""The context-vector baseline (paper appendix), float64: the policy reads its context vector, the inner
step moves only that vector, the second-order meta-gradient still reaches the network through it, and
the TRPO meta-update trains the network."""

import pytest
import torch

from fastmaml.errors import ConfigError
from fastmaml.rl import GaussianMLPPolicy, action_distribution
from fastmaml.rl.envs import Nav2dBatch
from fastmaml.rl.maml_trpo import (
    Samples,
    adapt,
    distribution_fn,
    maml_trpo_step,
    meta_objective,
    reinforce_loss,
    sample_and_adapt,
)
from fastmaml.rl.policy import CONTEXT_KEYS
from fastmaml.rl.trainer import RLConfig
from fastmaml.rl.trpo import flatten, unflatten

F64 = torch.float64
LR = 0.5
CONTEXT_DIM = 3


def context_problem(tasks=3, trajectories=4, horizon=12, seed=0):
    """A small nav2d meta-batch for a context policy, sampled and adapted on the context only:
    (policy, θ, inner samples, outer samples, old (μ, log σ), adapted).

    Biases and c start non-zero so that no ReLU sits exactly at its kink in the start state s = 0
    (finite differences would see a jump there)."""
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(8,), context_dim=CONTEXT_DIM).double()
    theta = {k: p.detach() + (0.1 * torch.randn_like(p) if "bias" in k or k == "context" else 0)
             for k, p in policy.named_parameters()}
    env = Nav2dBatch(dtype=F64)
    g = torch.Generator().manual_seed(seed)
    goals = env.sample_goals(tasks, g).double()
    _, samples, adapted = sample_and_adapt(env, policy, theta, goals, g, trajectories=trajectories, lrs=[LR],
                                           horizon=horizon, adapt_keys=CONTEXT_KEYS)
    with torch.no_grad():
        old = distribution_fn(policy, adapted, batched=True)(samples[1].observations)
    return policy, theta, samples[:1], samples[1], old, adapted


def test_policy_reads_a_zero_initialised_context_vector():
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(8,), context_dim=CONTEXT_DIM).double()
    params = {k: p.detach() for k, p in policy.named_parameters()}
    assert params["context"].shape == (CONTEXT_DIM,) and params["context"].abs().max() == 0
    assert params["mean.0.weight"].shape == (8, 2 + CONTEXT_DIM)
    assert params["mean.0.weight"][:, 2:].abs().min() > 0  # so the context gets a non-zero gradient
    # μ([s, c]) is the plain MLP on the concatenated input, for per-task contexts under vmap
    plain = GaussianMLPPolicy(2 + CONTEXT_DIM, 2, hidden_sizes=(8,)).double()
    contexts, obs = torch.randn(4, CONTEXT_DIM, dtype=F64), torch.randn(4, 5, 2, dtype=F64)
    per_task = lambda c, o: action_distribution(policy, {**params, "context": c}, o)[0]  # noqa: E731
    expected = torch.stack([
        action_distribution(plain, {k: v for k, v in params.items() if k != "context"},
                            torch.cat([obs[i], contexts[i].expand(5, -1)], -1))[0]
        for i in range(4)
    ])
    torch.testing.assert_close(torch.vmap(per_task)(contexts, obs), expected)
    assert set(dict(GaussianMLPPolicy(2, 2).named_parameters())) == {  # context_dim=0: the paper's policy
        "mean.0.weight", "mean.0.bias", "mean.2.weight", "mean.2.bias", "mean.4.weight", "mean.4.bias", "log_std"}


def test_inner_step_changes_only_the_context_vector():
    policy, theta, inner, _, _, adapted = context_problem()
    one_task = Samples(*(t[0] for t in inner[0]))
    full_grads = torch.func.grad(lambda p: reinforce_loss(policy, p, one_task))(theta)
    assert all(g.abs().max() > 0 for g in full_grads.values())  # MAML would move every parameter
    stepped = adapt(policy, theta, [one_task], [LR], adapt_keys=CONTEXT_KEYS)
    assert list(stepped) == list(theta)
    torch.testing.assert_close(stepped["context"], theta["context"] - LR * full_grads["context"])
    for k in theta:
        if k != "context":
            assert torch.equal(stepped[k], theta[k]), k
    # the sampler's no-graph adaptation of every task: a per-task context, shared network
    for k, v in adapted.items():
        assert v.shape == (3, *theta[k].shape)
        if k == "context":
            assert (v[0] - v[1]).abs().max() > 1e-6 and (v - theta[k]).abs().min() > 0
        else:
            assert all(torch.equal(v[i], theta[k]) for i in range(3)), k
    with pytest.raises(ValueError, match="adapt_keys names 'gamma'"):
        adapt(policy, theta, [one_task], [LR], adapt_keys=("gamma",))


def test_meta_gradient_reaches_the_network_through_the_context_step():
    """Second order: d/dθ of L(θ, c − α ∇c L_inner(θ, c)) against finite differences, on every parameter;
    the inner step's second-derivative term must reach the network weights (it differs from first order)."""
    policy, theta, inner, outer, old, _ = context_problem()

    def loss(p, first_order=False):
        return meta_objective(policy, inner, outer, old, [LR], first_order=first_order, adapt_keys=CONTEXT_KEYS)(p)[0]

    leaves = {k: v.clone().requires_grad_() for k, v in theta.items()}
    second = flatten(torch.autograd.grad(loss(leaves), list(leaves.values())))
    first = flatten(torch.autograd.grad(loss(leaves, True), list(leaves.values())))
    g = torch.Generator().manual_seed(5)
    flat, eps = flatten(theta), 1e-6
    for _ in range(3):
        v = torch.randn(flat.numel(), generator=g, dtype=F64)
        fd = (loss(unflatten(flat + eps * v, theta)) - loss(unflatten(flat - eps * v, theta))) / (2 * eps)
        torch.testing.assert_close(second @ v, fd, rtol=1e-6, atol=1e-9)
    weights = unflatten(second - first, theta)["mean.0.weight"]
    assert weights.norm() > 1e-2 * unflatten(second, theta)["mean.0.weight"].norm()


def test_outer_trpo_step_changes_the_network():
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(16,), context_dim=CONTEXT_DIM).double()
    theta = {k: p.detach() for k, p in policy.named_parameters()}
    new, stats = maml_trpo_step(Nav2dBatch(dtype=F64), policy, theta, torch.Generator().manual_seed(0),
                                meta_batch_size=4, trajectories=5, inner_lr=LR, horizon=20, adapt_keys=CONTEXT_KEYS)
    assert stats.trpo.accepted and stats.trpo.loss_after < stats.trpo.loss_before
    assert 0 < stats.trpo.kl_after <= 0.01 and len(stats.returns) == 2
    assert list(new) == list(theta) and all(new[k].shape == theta[k].shape for k in theta)  # not per task
    for k in ("mean.0.weight", "mean.0.bias", "mean.2.weight", "mean.2.bias", "log_std"):
        assert (new[k] - theta[k]).abs().max() > 1e-6, k


@pytest.mark.parametrize(
    "change, message",
    [({"method": "reptile"}, "unknown method 'reptile'"),
     ({"method": "context", "context_dim": 0}, "context_dim must be >= 1")],
)
def test_config_errors(change, message):
    with pytest.raises(ConfigError, match=message):
        RLConfig(**change).validate()
