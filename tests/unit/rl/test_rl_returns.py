"""Returns, GAE, advantage standardisation and the linear feature baseline against rllab's per-path
numpy code (float64), on batches with episodes of different lengths."""

import numpy as np
import pytest
import torch

from fastmaml.errors import NonFiniteLossError
from fastmaml.rl import (
    baseline_features,
    discount_cumsum,
    discounted_returns,
    fit_linear_baseline,
    gae,
    predict_linear_baseline,
    standardize_advantages,
)


def np_discount_cumsum(x, discount):
    """rllab.misc.special.discount_cumsum (scipy lfilter on the reversed sequence), as a loop."""
    out, running = np.zeros(len(x)), 0.0
    for t in reversed(range(len(x))):
        running = x[t] + discount * running
        out[t] = running
    return out


def rllab_features(obs):
    o = np.clip(obs, -10, 10)
    al = np.arange(len(obs)).reshape(-1, 1) / 100.0
    return np.concatenate([o, o**2, al, al**2, al**3, np.ones((len(obs), 1))], axis=1)


def rllab_fit(paths, reg_coeff=1e-5):
    """rllab's LinearFeatureBaseline.fit on one task's paths."""
    featmat = np.concatenate([rllab_features(p["observations"]) for p in paths])
    returns = np.concatenate([p["returns"] for p in paths])
    for _ in range(5):
        coeffs = np.linalg.lstsq(
            featmat.T.dot(featmat) + reg_coeff * np.identity(featmat.shape[1]), featmat.T.dot(returns), rcond=None
        )[0]
        if not np.any(np.isnan(coeffs)):
            break
        reg_coeff *= 10
    return coeffs


def batch(tasks=3, trajectories=4, horizon=30, obs_dim=3, seed=0):
    """Random rewards/observations; each trajectory ends after a random number of steps."""
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(tasks, trajectories, horizon, generator=g, dtype=torch.float64)
    obs = 3 * torch.randn(tasks, trajectories, horizon, obs_dim, generator=g, dtype=torch.float64)
    lengths = torch.randint(horizon // 3, horizon + 1, (tasks, trajectories), generator=g)
    lengths[0, 0] = horizon
    mask = (torch.arange(horizon) < lengths[..., None]).double()
    return rewards * mask, obs, mask, lengths


def paths_of(task, rewards, obs, lengths, discount=0.99):
    out = []
    for n in range(rewards.shape[1]):
        length = lengths[task, n]
        r = rewards[task, n, :length].numpy()
        out.append(
            {"rewards": r, "observations": obs[task, n, :length].numpy(), "returns": np_discount_cumsum(r, discount)}
        )
    return out


def test_discount_cumsum_matches_the_loop():
    x = torch.randn(5, 40, dtype=torch.float64)
    expected = np.stack([np_discount_cumsum(row, 0.97) for row in x.numpy()])
    np.testing.assert_allclose(discount_cumsum(x, 0.97).numpy(), expected, rtol=1e-12)


def test_returns_and_gae_match_rllab_per_path():
    rewards, obs, mask, lengths = batch()
    values = torch.randn(rewards.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    returns = discounted_returns(rewards, mask)
    advantages = gae(rewards, values, mask, discount=0.99, gae_lambda=0.95)
    for t in range(3):
        for n, path in enumerate(paths_of(t, rewards, obs, lengths)):
            length = lengths[t, n]
            np.testing.assert_allclose(returns[t, n, :length].numpy(), path["returns"], rtol=1e-12, atol=1e-12)
            path_baselines = np.append(values[t, n, :length].numpy(), 0)  # rllab's process_samples
            deltas = path["rewards"] + 0.99 * path_baselines[1:] - path_baselines[:-1]
            np.testing.assert_allclose(
                advantages[t, n, :length].numpy(), np_discount_cumsum(deltas, 0.99 * 0.95), rtol=1e-10, atol=1e-12
            )
    assert (returns[mask == 0] == 0).all() and (advantages[mask == 0] == 0).all()


def test_gae_with_lambda_one_is_return_minus_baseline():
    rewards, _, mask, _ = batch(seed=2)
    values = torch.randn(rewards.shape, dtype=torch.float64)
    expected = (discounted_returns(rewards, mask) - values) * mask
    torch.testing.assert_close(gae(rewards, values, mask), expected, rtol=1e-12, atol=1e-12)


def test_standardised_per_task_over_valid_steps():
    rewards, _, mask, _ = batch(seed=3)
    advantages = 5 + 2 * rewards
    standardised = standardize_advantages(advantages, mask)
    for t in range(3):
        valid = advantages[t][mask[t] == 1].numpy()
        expected = (valid - valid.mean()) / (valid.std() + 1e-8)  # rllab's center_advantages
        np.testing.assert_allclose(standardised[t][mask[t] == 1].numpy(), expected, rtol=1e-10)
    assert (standardised[mask == 0] == 0).all()


def test_features_are_rllabs():
    obs = 8 * torch.randn(2, 1, 25, 3, dtype=torch.float64)
    np.testing.assert_allclose(baseline_features(obs)[1, 0].numpy(), rllab_features(obs[1, 0].numpy()), rtol=1e-15)


def test_baseline_fits_returns_that_are_linear_in_the_features():
    _, obs, mask, _ = batch(tasks=4, trajectories=6, horizon=50, seed=4)
    coeffs = torch.randn(4, 2 * 3 + 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    returns = predict_linear_baseline(coeffs, obs) * mask
    fitted = predict_linear_baseline(fit_linear_baseline(obs, returns, mask), obs)
    torch.testing.assert_close(fitted * mask, returns, rtol=0, atol=1e-4 * returns.abs().max().item())


def test_baseline_matches_rllab_fit_per_task():
    rewards, obs, mask, lengths = batch(tasks=3, trajectories=5, horizon=40, seed=6)
    coeffs = fit_linear_baseline(obs, discounted_returns(rewards, mask), mask)
    for t in range(3):
        expected = rllab_fit(paths_of(t, rewards, obs, lengths))
        np.testing.assert_allclose(coeffs[t].numpy(), expected, rtol=1e-6, atol=1e-8)


def test_singular_system_escalates_the_regularisation_per_task():
    # Task 0 observes a constant 1: the columns s, s² and 1 coincide and ΦᵀΦ is exactly singular.
    _, obs, mask, _ = batch(tasks=2, trajectories=5, horizon=20, obs_dim=1, seed=7)
    mask = torch.ones_like(mask)
    obs[0] = 1.0
    t = torch.arange(20, dtype=torch.float64) / 100
    returns = (3 + 2 * t - t**2 + obs[..., 0]).clone()
    features = baseline_features(obs[:1]).flatten(1, -2)
    gram = features.mT @ features
    assert torch.linalg.cholesky_ex(gram + 1e-16 * torch.eye(6, dtype=torch.float64)).info.item() > 0
    coeffs = fit_linear_baseline(obs, returns, mask, reg_coeff=1e-16)  # task 0 is solved at a larger c
    torch.testing.assert_close(predict_linear_baseline(coeffs, obs)[0], returns[0], rtol=0, atol=1e-8)
    torch.testing.assert_close(coeffs[1], fit_linear_baseline(obs[1:], returns[1:], mask[1:], reg_coeff=1e-16)[0])
    with pytest.raises(ValueError, match=r"task\(s\) \[0\] is singular even with regularisation 0; pass a larger"):
        fit_linear_baseline(obs, returns, mask, reg_coeff=0.0)


def test_baseline_on_non_finite_data_is_a_clear_error():
    rewards, obs, mask, _ = batch(seed=8)
    obs[1, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="linear baseline cannot be fitted: observations or returns contain NaN"):
        fit_linear_baseline(obs, discounted_returns(rewards, mask), mask)
