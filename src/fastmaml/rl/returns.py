"""Discounted returns, generalised advantage estimation and advantage standardisation, batched.

Tensors are (..., H) over time steps with a ``mask`` that is 1 inside an episode and 0 after it ended
(``fastmaml.rl.sampler.Trajectories``). As in rllab, an episode ends without bootstrapping: the value
after its last step is 0, whether it terminated or reached the horizon.
"""

from __future__ import annotations

import torch
from torch import Tensor

GAMMA = 0.99
GAE_LAMBDA = 1.0
ADVANTAGE_EPS = 1e-8


def discount_cumsum(x: Tensor, discount: float) -> Tensor:
    """y_t = Σ_{k ≥ t} discount^(k − t) x_k along the last dimension (a matrix product, no loop)."""
    steps = torch.arange(x.shape[-1], device=x.device)
    lag = steps[None, :] - steps[:, None]  # lag[t, k] = k - t
    weights = torch.where(lag >= 0, torch.tensor(discount, dtype=torch.float64).pow(lag.clamp_min(0)), 0.0)
    return x @ weights.to(x.dtype).T


def discounted_returns(rewards: Tensor, mask: Tensor, discount: float = GAMMA) -> Tensor:
    """R_t = Σ_k γ^k r_{t+k} within each episode; 0 after it ended."""
    return discount_cumsum(rewards * mask, discount) * mask


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, discount: float = GAMMA, gae_lambda: float = GAE_LAMBDA
) -> Tensor:
    """Generalised advantage estimation (Schulman et al., 2016):

    δ_t = r_t + γ V(s_{t+1}) − V(s_t),   A_t = Σ_k (γλ)^k δ_{t+k},   V = 0 after the last step.

    With λ = 1 this is R_t − V(s_t), the paper's REINFORCE advantage with a baseline.
    """
    values = values * mask
    next_values = torch.cat([values[..., 1:], torch.zeros_like(values[..., :1])], dim=-1)
    deltas = (rewards + discount * next_values - values) * mask
    return discount_cumsum(deltas, discount * gae_lambda) * mask


def standardize_advantages(advantages: Tensor, mask: Tensor, eps: float = ADVANTAGE_EPS) -> Tensor:
    """(A − mean) / (std + eps) over the valid steps of each task (every dim but the first), as
    rllab's ``center_adv`` does over one task's samples; 0 where ``mask`` is 0."""
    dims = tuple(range(1, advantages.dim()))
    count = mask.sum(dims, keepdim=True)
    mean = (advantages * mask).sum(dims, keepdim=True) / count
    std = (((advantages - mean) * mask).square().sum(dims, keepdim=True) / count).sqrt()
    return (advantages - mean) / (std + eps) * mask
