"""One MAML-TRPO meta-update computed with each Hessian-vector product: how far the original code's
finite differences (ε = base_eps / ‖θ‖, base_eps 1.0 as its runs had it) move the step away from
exact TRPO, and where the step goes (the mean network or log σ).

    python benchmarks/rl_hvp_probe.py --env cheetah-dir                 # the preset's initial policy
    python benchmarks/rl_hvp_probe.py --run runs/rl-cheetah-dir-fd1     # a run's latest policy

One meta-batch is sampled (seeded) and adapted as in training; then for each product the conjugate
gradient direction d, TRPO's step β d and the line search are computed on the same samples. Printed:
the cosine of d with the exact direction, the step's norm, its change of log σ, the KL and loss at
the full step, and the accepted fraction.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fastmaml.engine.run_dir import read_config
from fastmaml.experiments.rl import make_config
from fastmaml.rl.maml_trpo import (
    distribution_fn,
    meta_objective,
    sample_and_adapt,
    split_strategy,
)
from fastmaml.rl.trainer import load_policies, make_env, make_policy
from fastmaml.rl.trpo import (
    HVPS,
    _leaves,
    conjugate_gradient,
    flatten,
    line_search,
    unflatten,
)

VARIANTS = {"exact": ("exact", {}), "fd 1.0 (original runs)": ("finite_difference", {"base_eps": 1.0}),
            "fd 1e-8 (class default)": ("finite_difference", {"base_eps": 1e-8})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a run folder (default: a fresh policy of --env's preset)")
    parser.add_argument("--env", default="cheetah-dir")
    parser.add_argument("--seed", type=int, default=0, help="samples' seed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.run:
        _, config = read_config(args.run)
        methods, meta = load_policies(args.run, config)
        env, policy, params = methods[config.method]
        where = f"{args.run} at iteration {meta['step']}"
    else:
        config = make_config(args.env)
        env = make_env(config)
        policy, params = make_policy(config, env, config.seed)
        where = f"a fresh {args.env} policy"
    generator = torch.Generator().manual_seed(args.seed)
    goals = env.sample_goals(config.meta_batch_size, generator)
    lrs = [config.inner_lr] * config.inner_steps
    _, samples, adapted = sample_and_adapt(env, policy, params, goals, generator, trajectories=config.trajectories,
                                           lrs=lrs, horizon=config.horizon or None, discount=config.discount,
                                           gae_lambda=config.gae_lambda)
    with torch.no_grad():
        old = distribution_fn(policy, adapted, batched=True, strategy=split_strategy("auto")[0])(
            samples[-1].observations)
    objective = meta_objective(policy, samples[:-1], samples[-1], old, lrs)
    kl_fn = lambda p: objective(p)[1]
    leaves = _leaves(params)
    loss = objective(leaves)[0]
    g = flatten(torch.autograd.grad(loss, list(leaves.values())))
    theta = flatten(params)
    is_log_std = flatten({k: torch.full_like(p, float(k == "log_std")) for k, p in params.items()}).bool()
    print(f"{where}: {config.meta_batch_size} tasks, max KL {config.max_kl}; ‖θ‖ = {theta.norm():.2f}, "
          f"‖g‖ = {g.norm():.3g}, log σ = {params['log_std'].mean():.3f} (mean)")
    exact_at_g = HVPS["exact"](kl_fn, leaves, 0.0)(g)
    directions = {}
    print("| H v | rel. error of H g | cos(d, d_exact) | ‖β d‖ | Δ log σ (mean) | KL at β d | accepted fraction | loss after |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (kind, options) in VARIANTS.items():
        fisher = HVPS[kind](kl_fn, leaves, config.cg_damping, **options)
        error = ((fisher(g) - config.cg_damping * g - exact_at_g).norm() / exact_at_g.norm()).item()
        d = conjugate_gradient(fisher, g, config.cg_iters).detach()
        directions[name] = d
        beta = torch.sqrt(2 * config.max_kl / (d @ fisher(d).detach() + 1e-8))
        step = beta * d
        with torch.no_grad():
            kl_full = objective(unflatten(theta - step, params))[1].item()
        result = line_search(objective, leaves, step, loss.item(), config.max_kl)
        cos = torch.nn.functional.cosine_similarity(d, directions["exact"], dim=0).item()
        print(f"| {name} | {error:.3g} | {cos:.3f} | {step.norm():.3g} | {-step[is_log_std].mean():+.4f} | "
              f"{kl_full:.4g} | {result.step_fraction:.3g} | {result.loss:.4g} (before {loss.item():.4g}) |")


if __name__ == "__main__":
    main()
