"""rllab's linear feature baseline, fitted per task by batched ridge regression.

    φ(s, t) = [clip(s, −10, 10), clip(s, −10, 10)², t, t², t³, 1],   t = step / 100
    w = argmin ‖Φ w − R‖² + c ‖w‖²,   i.e.   (ΦᵀΦ + c I) w = Φᵀ R

with c = 1e-5, multiplied by 10 and retried (5 tries in all) for a task whose system is singular in
floating point, as rllab's ``LinearFeatureBaseline.fit``. rllab solved with numpy's ``lstsq`` and
retried on NaN coefficients (which lstsq practically never returns); here a batched Cholesky
factorisation solves and retries when it fails, i.e. when the system is numerically singular. The
solutions agree otherwise (the unit tests compare with rllab's code). Only steps inside an episode
enter the fit. It runs in float64, as rllab's numpy code did, for all tasks at once.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastmaml.errors import NonFiniteLossError

REG_COEFF = 1e-5
REG_TRIES = 5
OBS_CLIP = 10.0
TIME_SCALE = 100.0


def baseline_features(observations: Tensor) -> Tensor:
    """φ for observations (..., H, obs_dim): (..., H, 2 obs_dim + 4), float64."""
    obs = observations.to(torch.float64).clamp(-OBS_CLIP, OBS_CLIP)
    t = torch.arange(obs.shape[-2], dtype=torch.float64, device=obs.device) / TIME_SCALE
    t = t[:, None].expand(*obs.shape[:-1], 1)
    return torch.cat([obs, obs.square(), t, t.square(), t.pow(3), torch.ones_like(t)], dim=-1)


def fit_linear_baseline(observations: Tensor, returns: Tensor, mask: Tensor, reg_coeff: float = REG_COEFF) -> Tensor:
    """Coefficients w, one row per task: (T, 2 obs_dim + 4), from (T, N, H, obs_dim) data."""
    valid = mask.to(torch.bool)
    features = torch.where(valid[..., None], baseline_features(observations), 0.0).flatten(1, -2)  # (T, NH, F)
    targets = torch.where(valid, returns.to(torch.float64), 0.0).flatten(1)[..., None]  # (T, NH, 1)
    if not (torch.isfinite(features).all() and torch.isfinite(targets).all()):
        raise NonFiniteLossError(
            "the linear baseline cannot be fitted: observations or returns contain NaN or inf inside an "
            "episode: the policy diverged (an inner learning rate, init_std or goal far too large: lower it, "
            "e.g. --set inner_lr=...), or the simulation blew up without ending its episode"
        )
    gram, rhs = features.mT @ features, features.mT @ targets
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    coeffs = torch.empty_like(rhs[..., 0])
    pending = torch.arange(len(gram), device=gram.device)
    for _ in range(REG_TRIES):
        factor, info = torch.linalg.cholesky_ex(gram[pending] + reg_coeff * eye)
        solved = info == 0
        coeffs[pending[solved]] = torch.cholesky_solve(rhs[pending[solved]], factor[solved])[..., 0]
        pending = pending[~solved]
        if len(pending) == 0:
            return coeffs
        reg_coeff *= 10
    raise ValueError(
        f"the linear baseline system of task(s) {pending.tolist()} is singular even with regularisation "
        f"{reg_coeff / 10:g}; pass a larger reg_coeff"
    )


def predict_linear_baseline(coeffs: Tensor, observations: Tensor) -> Tensor:
    """V(s_t) = φ(s, t) · w for (T, N, H, obs_dim) observations: (T, N, H), in their dtype."""
    values = baseline_features(observations) @ coeffs[:, None, :, None]
    return values[..., 0].to(observations.dtype)
