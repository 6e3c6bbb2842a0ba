"""``fastmaml adapt`` for meta-RL runs: take a trained policy to one new task and save the result.

    fastmaml adapt RUN --goal 1.5 --out policy.safetensors     # cheetah-vel: run at 1.5 m/s
    fastmaml adapt RUN --goal -1 --out policy.safetensors      # cheetah-dir / ant-dir: run backwards
    fastmaml adapt RUN --goal 0.3,-0.2 --out policy.safetensors  # nav2d: reach (0.3, -0.2)

The new task gets the run's meta-test protocol (``fastmaml eval``'s): ``eval_trajectories`` trajectories
per step (with ``sampling=steps``, a budget of that many x horizon steps: as many paths as it takes),
the method's first-step lr and ``eval_lr_decay`` times it for later steps, ``eval_steps`` steps, one
REINFORCE step after each sampling round. The adapted parameters go to a safetensors file
(atomic write) with the goal, method, step sizes, the return after every step and the run's config in
its metadata; :func:`load_adapted` gives back the policy and its parameters, ready for
:func:`fastmaml.rl.action_distribution` (e.g. on ``gymnasium.make("fastmaml/HalfCheetahVel-v0")``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fastmaml.config import check_seed, from_dict, to_dict
from fastmaml.engine import checkpoint
from fastmaml.engine.run_dir import read_config
from fastmaml.errors import CheckpointError, ConfigError
from fastmaml.rl.maml_trpo import sample_and_adapt
from fastmaml.rl.policy import GaussianMLPPolicy
from fastmaml.rl.trainer import (
    RLConfig,
    adapt_keys,
    make_env,
    make_policy,
    meta_test_lrs,
    prepare_meta_test,
)

FORMAT = "fastmaml-adapted-policy-1"
DIRECTION_WORDS = {"forward": 1.0, "backward": -1.0}


def training_goals(env_name: str) -> str:
    """The training task distribution of ``env_name``, in words (for messages)."""
    return {
        "nav2d": "x,y in [-0.5, 0.5]^2", "cheetah-vel": "a velocity in [0, 2]", "ant-vel": "a velocity in [0, 3]",
    }.get(env_name, "+1 (forward) or -1 (backward)")


def parse_goal(env_name: str, text: str) -> tuple[Tensor, str | None]:
    """``--goal`` text as a batch of one goal, (1, *goal_shape), and a note when it lies outside the
    goals the run was meta-trained on (allowed, but adaptation was learned for that range only)."""
    words = text.strip().lower()
    if env_name in ("cheetah-dir", "ant-dir") and words in DIRECTION_WORDS:
        return torch.tensor([DIRECTION_WORDS[words]], dtype=torch.float64), None
    try:
        values = [float(part) for part in words.split(",")]
    except ValueError:
        values = []
    expected = 2 if env_name == "nav2d" else 1
    if len(values) != expected or not all(math.isfinite(v) for v in values):
        raise ConfigError(f"--goal {text!r}: a {env_name} task's goal is {training_goals(env_name)}; "
                          f"give {'two numbers as x,y' if expected == 2 else 'one number'}")
    if env_name in ("cheetah-dir", "ant-dir"):
        if values[0] not in (1.0, -1.0):
            raise ConfigError(f"--goal {text!r}: a {env_name} task's goal is +1 (forward) or -1 (backward)")
        return torch.tensor(values, dtype=torch.float64), None
    if env_name == "nav2d":
        inside = all(-0.5 <= v <= 0.5 for v in values)
        goal = torch.tensor([values], dtype=torch.float64)
    else:
        top = 2.0 if env_name == "cheetah-vel" else 3.0
        inside = 0.0 <= values[0] <= top
        goal = torch.tensor(values, dtype=torch.float64)
    shown = ",".join(f"{v:g}" for v in values)
    note = None if inside else (f"note: goal {shown} lies outside the meta-training goals "
                                f"({training_goals(env_name)}); adaptation was meta-learned for those")
    return goal, note


@dataclass
class AdaptedPolicy:
    """A policy adapted to one goal: ``params`` (no task dimension) for ``policy``; ``returns``
    (steps + 1, trajectories) are the undiscounted returns sampled before each step and after the last.
    ``valid`` (the same shape): which of them were sampled, where a step-budget sampler
    (``sampling=steps``) gave the steps different numbers of paths and the rest is padding; None: all."""

    config: RLConfig
    method: str
    goal: list[float]
    lrs: list[float]
    returns: Tensor
    policy: GaussianMLPPolicy
    params: dict[str, Tensor]
    step: int  # the run's meta-training iteration
    valid: Tensor | None = None

    def summary(self) -> dict[str, Any]:
        if self.valid is not None:  # sampling=steps: each step's own paths
            kept = [r[v].double() for r, v in zip(self.returns, self.valid, strict=True)]
            std = [r.std() if len(r) > 1 else torch.zeros((), dtype=torch.float64) for r in kept]
            return {
                "env": self.config.env, "method": self.method, "goal": self.goal, "iteration": self.step,
                "lrs": self.lrs, "sampling": "steps", "trajectories": [len(r) for r in kept],
                "return_mean": [r.mean().item() for r in kept],
                "return_ci95": [(1.96 * s / math.sqrt(len(r))).item() for r, s in zip(kept, std, strict=True)],
            }
        n = self.returns.shape[1]
        std = self.returns.double().std(1) if n > 1 else torch.zeros(len(self.returns), dtype=torch.float64)
        return {
            "env": self.config.env, "method": self.method, "goal": self.goal, "iteration": self.step,
            "lrs": self.lrs, "trajectories": n, "return_mean": self.returns.double().mean(1).tolist(),
            "return_ci95": (1.96 * std / math.sqrt(n)).tolist(),
        }


def adaptable_methods(config: RLConfig) -> list[str]:
    return [m for m in (config.method, *config.baselines, "random") if m not in ("none", "oracle")]


def adapt_policy(
    run_dir: str | Path,
    goal: str,
    *,
    method: str | None = None,
    steps: int | None = None,
    trajectories: int | None = None,
    seed: int = 0,
    which: str | int = "checkpoint",
    overrides: list[str] | tuple[str, ...] = (),
) -> tuple[AdaptedPolicy, str | None]:
    """Adapt ``method``'s policy of the run (default: the run's own learner, or the pretrained policy
    of a baselines-only run) to ``goal`` (``--goal`` text) with the run's meta-test protocol; ``seed``
    draws the action noise; ``which``: the latest checkpoint or an iteration whose snapshot the run
    kept; ``overrides``: meta-test settings changed (``key=value``, e.g. ``inner_lr=0.05``). Returns the
    result and a note when the goal lies outside the training goals."""
    _, config = read_config(Path(run_dir), overrides)
    if not isinstance(config, RLConfig):
        raise ConfigError(f"{run_dir} is not a meta-RL run")
    goals, note = parse_goal(config.env, goal)
    choices = adaptable_methods(config)
    if method is None and choices == ["random"]:
        # a run that trained only the oracle: its default would silently be an untrained policy
        raise ConfigError(
            f"this run trained no policy that adapts (method {config.method!r}, baselines "
            f"{', '.join(config.baselines) or 'none'}; the oracle observes its goal and is not adapted); "
            "--method random adapts a random initialisation"
        )
    method = method or choices[0]
    if method not in choices:
        why = " (the oracle observes its goal and is not adapted)" if method == "oracle" else ""
        raise ConfigError(f"--method {method!r}: this run can adapt {', '.join(choices)}{why}")
    check_seed(seed)  # torch's generators take [0, 2^63): a larger seed overflowed with a traceback
    if trajectories is None and config.eval_trajectories < 2:
        raise ConfigError(f"this run meta-tests with eval_trajectories={config.eval_trajectories}; adapting needs 2 "
                          "or more trajectories (the step standardises advantages): give --trajectories N")
    trajectories = config.eval_trajectories if trajectories is None else trajectories
    if trajectories < 2:
        raise ConfigError(f"--trajectories must be >= 2 (the step standardises advantages), got {trajectories}")
    steps, methods, meta = prepare_meta_test(Path(run_dir), config, steps, which)
    env, policy, params = methods[method]
    lrs = meta_test_lrs(config, method, steps)
    trajs, _, adapted = sample_and_adapt(
        env, policy, params, goals, torch.Generator().manual_seed(seed), trajectories=trajectories, lrs=lrs,
        horizon=config.horizon or None, discount=config.discount, gae_lambda=config.gae_lambda,
        strategy=config.strategy, process_last=False, adapt_keys=adapt_keys(method),
        baseline_fit=config.baseline_fit, meta_test=True, sampling=config.sampling,
    )
    final = params if adapted is None else {k: v[0] for k, v in adapted.items()}
    valid = None
    if config.sampling == "steps":  # each step got its own number of paths: pad to the most
        width = max(t.valid.shape[1] for t in trajs)
        pad = lambda x: torch.nn.functional.pad(x, (0, width - len(x)))  # noqa: E731
        returns = torch.stack([pad(t.returns[0]) for t in trajs])
        valid = torch.stack([pad(t.valid[0]) for t in trajs])
    else:
        returns = torch.stack([t.returns[0] for t in trajs])
    result = AdaptedPolicy(
        config=config, method=method, goal=goals.reshape(-1).tolist(), lrs=lrs, returns=returns, policy=policy,
        params={k: v.detach().clone() for k, v in final.items()}, step=meta["step"], valid=valid,
    )
    return result, note


def check_out_path(path: str | Path) -> Path:
    """``path`` if an adapted policy can be written there (checked before any sampling)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ConfigError(f"--out {path}: an adapted policy is written as a .safetensors file")
    if path.is_dir():
        raise ConfigError(f"--out {path} is a folder; name a .safetensors file to write (e.g. {path / 'policy.safetensors'})")
    if not path.parent.is_dir():
        raise ConfigError(f"--out {path}: the folder {path.parent} does not exist")
    return path


def save_adapted(path: str | Path, adapted: AdaptedPolicy) -> None:
    """Write the adapted parameters atomically (safetensors) with what :func:`load_adapted` needs."""
    path = check_out_path(path)
    meta = {"kind": FORMAT, **adapted.summary(), "config": to_dict(adapted.config)}
    checkpoint.save(path, adapted.params, meta, keep_previous=False)


def load_adapted(path: str | Path) -> tuple[GaussianMLPPolicy, dict[str, Tensor], dict[str, Any]]:
    """The policy, its adapted parameters and the metadata (goal, method, returns, config) of a file
    written by ``fastmaml adapt``: ``action_distribution(policy, params, obs)`` gives (μ, log σ)."""
    tensors, meta = checkpoint.load(path)
    if meta.get("kind") != FORMAT:
        raise CheckpointError(f"{path} is a fastmaml checkpoint but not an adapted policy (fastmaml adapt --out)")
    config = from_dict(RLConfig, meta["config"])
    policy, params = make_policy(config, make_env(config), seed=0, context=meta["method"] == "context")
    if set(tensors) != set(params) or any(tensors[k].shape != v.shape for k, v in params.items()):
        raise CheckpointError(f"{path}: its tensors do not fit the {config.env} policy it names")
    return policy, tensors, meta


def report(adapted: AdaptedPolicy, note: str | None = None) -> str:
    summary = adapted.summary()
    goal = ",".join(f"{g:g}" for g in adapted.goal)
    counts = summary["trajectories"]
    over = (f"{counts} trajectories" if isinstance(counts, int) else
            f"{', '.join(map(str, counts))} trajectories at steps 0..{len(counts) - 1}: sampling=steps")
    lines = [(f"rl {adapted.config.env}, {adapted.method} at iteration {adapted.step}, adapted to goal {goal}: "
              f"return (mean ± 95% CI over {over}) after N inner steps")]
    if note:
        lines.append(note)
    lines.append(f"{'steps':>5}  {'lr':>8}  return")
    for k, (mean, ci) in enumerate(zip(summary["return_mean"], summary["return_ci95"], strict=True)):
        lr = f"{adapted.lrs[k - 1]:g}" if k else "-"
        lines.append(f"{k:>5}  {lr:>8}  {mean:.2f} ± {ci:.2f}")
    return "\n".join(lines)
