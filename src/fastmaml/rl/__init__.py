"""Meta-reinforcement learning pieces (Finn et al., 2017, section 5.3), pure torch unless noted.

- ``envs``: 2D navigation and MuJoCo locomotion task distributions, batched over tasks x
  trajectories, also registered with gymnasium (MuJoCo and gymnasium: ``pip install 'fastmaml[rl]'``)
- ``sampler``: N trajectories per task for T tasks in one batched rollout, or (``sampling="steps"``)
  the original's budget of N x horizon completed steps per task, episodes restarted as they end
- ``returns`` / ``baseline``: discounted returns, GAE, advantage standardisation, rllab's linear
  feature baseline fitted per task
- ``policy``: the 100-100 ReLU Gaussian MLP policy (optionally reading a learned context vector, the
  paper's context-vector baseline); log-likelihood and KL of parameter dicts
- ``trpo``: conjugate gradient, KL Hessian-vector products, line search, one TRPO step
"""

from fastmaml.rl.baseline import baseline_features, fit_linear_baseline, predict_linear_baseline
from fastmaml.rl.policy import (
    GaussianMLPPolicy,
    action_distribution,
    gaussian_kl,
    gaussian_log_prob,
    policy_log_prob,
    sample_actions,
)
from fastmaml.rl.returns import discount_cumsum, discounted_returns, gae, standardize_advantages
from fastmaml.rl.sampler import Trajectories, sample_trajectories
from fastmaml.rl.trpo import (
    TRPOStats,
    conjugate_gradient,
    exact_hvp,
    finite_difference_hvp,
    line_search,
    trpo_step,
)

__all__ = [
    "GaussianMLPPolicy",
    "TRPOStats",
    "Trajectories",
    "action_distribution",
    "baseline_features",
    "conjugate_gradient",
    "discount_cumsum",
    "discounted_returns",
    "exact_hvp",
    "finite_difference_hvp",
    "fit_linear_baseline",
    "gae",
    "gaussian_kl",
    "gaussian_log_prob",
    "line_search",
    "policy_log_prob",
    "predict_linear_baseline",
    "sample_actions",
    "sample_trajectories",
    "standardize_advantages",
    "trpo_step",
]
