"""The paper's Gaussian MLP policy and its log-likelihood and KL as pure functions of parameters.

    π_θ(a | s) = N(a; μ_θ(s), diag(σ²)),   μ_θ: obs -> 100 -> ReLU -> 100 -> ReLU -> actions,
    log σ a learned vector (state independent), initialised to log 1 and floored at log 1e-6

as cbfinn/maml_rl's ``MAMLGaussianMLPPolicy`` (Glorot-uniform weights, zero biases). Every function
below takes a parameter dict, so an adapted policy is just another dict, and they all work under
``torch.func.grad`` and ``torch.func.vmap`` (a leading task dimension on params and observations).

``context_dim = d > 0`` gives the paper's context-vector baseline (appendix): a parameter ``context``
(d,) is appended to every observation, μ_θ([s, c]), and only c is adapted in the inner loop
(``adapt_keys=CONTEXT_KEYS`` in :mod:`fastmaml.rl.maml_trpo`). c starts at 0, so at initialisation the
context contributes nothing to the first layer and every task starts from the same policy; the first
layer's columns that read c start Glorot-uniform, non-zero, so ∇c L = W_cᵀ ∂L/∂h₁ is non-zero and the
first inner step moves the policy. c's starting value is meta-learned by the outer update like every
other parameter (it adds nothing the first layer's bias could not express, but keeps θ "all
parameters", as in MAML).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fastmaml.core.functional import Params

MIN_LOG_STD = math.log(1e-6)
CONTEXT_KEYS = ("context",)  # the parameters the context-vector baseline adapts in the inner loop
LOG_2PI = math.log(2 * math.pi)


class GaussianMLPPolicy(nn.Module):
    """``forward(obs)`` is the action mean; ``log_std`` (action_dim,) is a parameter. With
    ``context_dim > 0`` a parameter ``context`` (context_dim,), initialised to 0, is an extra input."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_sizes: Sequence[int] = (100, 100),
        init_std: float = 1.0,
        context_dim: int = 0,
    ) -> None:
        super().__init__()
        if not init_std > 0:
            raise ValueError(f"init_std must be > 0, got {init_std}")
        if context_dim < 0:
            raise ValueError(f"context_dim must be >= 0, got {context_dim}")
        sizes = [obs_dim + context_dim, *hidden_sizes, action_dim]
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
            linear = nn.Linear(fan_in, fan_out)
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)
            layers += [linear, nn.ReLU()] if i < len(sizes) - 2 else [linear]
        self.mean = nn.Sequential(*layers)
        self.log_std = nn.Parameter(torch.full((action_dim,), math.log(init_std)))
        if context_dim:
            self.context = nn.Parameter(torch.zeros(context_dim))

    def forward(self, obs: Tensor) -> Tensor:
        if hasattr(self, "context"):  # the same c for every observation of the task: (..., obs_dim + d)
            obs = torch.cat([obs, self.context.expand(*obs.shape[:-1], -1)], dim=-1)
        return self.mean(obs)


def action_distribution(policy: nn.Module, params: Params, obs: Tensor) -> tuple[Tensor, Tensor]:
    """(μ, log σ) of π_params at ``obs`` (..., obs_dim), both shaped (..., action_dim)."""
    mean = torch.func.functional_call(policy, params, (obs,))
    log_std = params["log_std"].clamp_min(MIN_LOG_STD)
    return mean, log_std.expand_as(mean)


def gaussian_log_prob(mean: Tensor, log_std: Tensor, actions: Tensor) -> Tensor:
    """log N(a; μ, diag σ²) summed over the last (action) dimension."""
    z = (actions - mean) * torch.exp(-log_std)
    return -0.5 * (z.square() + LOG_2PI).sum(-1) - log_std.sum(-1)


def gaussian_kl(mean_p: Tensor, log_std_p: Tensor, mean_q: Tensor, log_std_q: Tensor) -> Tensor:
    """KL(p ‖ q) of diagonal Gaussians, summed over the last dimension:
    Σ log σ_q − log σ_p + (σ_p² + (μ_p − μ_q)²) / (2 σ_q²) − 1/2."""
    var_ratio_term = (torch.exp(2 * log_std_p) + (mean_p - mean_q).square()) * torch.exp(-2 * log_std_q) / 2
    return (log_std_q - log_std_p + var_ratio_term - 0.5).sum(-1)


def policy_log_prob(policy: nn.Module, params: Params, obs: Tensor, actions: Tensor) -> Tensor:
    """log π_params(a | s) for each row of ``obs`` / ``actions``."""
    return gaussian_log_prob(*action_distribution(policy, params, obs), actions)


def sample_actions(
    mean: Tensor, log_std: Tensor, generator: torch.Generator | None = None, noise: Tensor | None = None
) -> Tensor:
    """a = μ + σ ε with ε ~ N(0, I) drawn from ``generator`` (or given as ``noise``)."""
    if noise is None:
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
    return mean + torch.exp(log_std) * noise
