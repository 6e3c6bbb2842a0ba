"""Meta-SGD (Li et al., 2017) vs MAML on sinusoid regression, 5 and 10 shots: MSE after one step.

Meta-SGD learns one inner learning rate per weight, initialised to α = 0.01; the table of learned
α per layer shows how far it moves from that initial value, and where it turns negative.
"""

from __future__ import annotations

import math
from pathlib import Path

from fastmaml.engine.evaluate import evaluate
from fastmaml.studies.common import Budget, Report, Table, load, per_layer_stats, pm, time_meta_steps, train_sinusoid

FULL = Budget(iterations=15_000, tasks=600)
QUICK = Budget(iterations=150, tasks=50, timing_iterations=20, timing_rounds=5)
SHOTS = (5, 10)


def run(out: Path, budget: Budget, seed: int = 0) -> Report:
    results, alphas = {}, {}
    for shots in SHOTS:
        for meta_sgd in (False, True):
            key = f"k{shots}-{'meta-sgd' if meta_sgd else 'maml'}"
            run_dir = out / "meta-sgd" / key
            # wall time: not compared
            train_s, _ = train_sinusoid(run_dir, budget, shots=shots, meta_sgd=meta_sgd, seed=seed)
            mse = evaluate(run_dir, tasks=budget.tasks, steps=10)["metrics"]["maml"]["mse"]
            results[key] = {
                "shots": shots, "meta_sgd": meta_sgd,
                "mse_0": mse["mean"][0], "mse_1": mse["mean"][1], "ci_1": mse["ci95"][1],
                "mse_10": mse["mean"][10], "ci_10": mse["ci95"][10], "curve": mse["mean"],
                "train_s": train_s, "run_dir": str(run_dir),
            }
            if meta_sgd:
                _, maml = load(run_dir)
                alphas[key] = per_layer_stats(maml.lr())
                results[key]["alpha"] = alphas[key]
    timing = time_meta_steps({k: Path(r["run_dir"]) for k, r in results.items()}, budget.timing_iterations,
                             budget.timing_rounds)  # interleaved: train wall times one after another are not
    for key, ms in timing.items():
        results[key]["ms_per_iteration"] = ms
    for shots in SHOTS:  # how many MAML steps reach Meta-SGD's one-step MSE (its "faster")
        m, target = results[f"k{shots}-maml"], results[f"k{shots}-meta-sgd"]["mse_1"]
        m["maml_steps_to_meta_sgd_1"] = next((s for s, v in enumerate(m["curve"]) if v <= target), None)
    table = Table(
        f"MSE on {budget.tasks} meta-test tasks (mean ± 95% CI), {budget.iterations} iterations, α init 0.01, "
        f"training seed {seed}",
        ["K", "method", "MSE 0 steps", "MSE 1 step", "MSE 10 steps", "ms/iter"],
    )
    for r in results.values():
        table.add(r["shots"], "Meta-SGD" if r["meta_sgd"] else "MAML", r["mse_0"], pm(r["mse_1"], r["ci_1"]),
                  pm(r["mse_10"], r["ci_10"]), f"{r['ms_per_iteration']:.2f}")
    alpha_table = Table("Meta-SGD's learned α per parameter tensor",
                        ["K", "tensor", "numel", "mean", "std", "min", "max", "share < 0"])
    for key, stats in alphas.items():
        for name, s in stats.items():
            alpha_table.add(results[key]["shots"], name, s["numel"], s["mean"], s["std"], s["min"], s["max"],
                            f"{100 * s['negative']:.1f}%")
    notes = []
    for shots in SHOTS:
        m, s = results[f"k{shots}-maml"], results[f"k{shots}-meta-sgd"]
        steps = m["maml_steps_to_meta_sgd_1"]
        reach = ("Meta-SGD's one step diverged on some tasks" if not math.isfinite(s["mse_1"]) else
                 f"MAML reaches it after {steps} steps" if steps is not None else "MAML does not reach it in 10 steps")
        notes.append(f"K={shots}: Meta-SGD MSE after 1 step {s['mse_1']:.4g} vs MAML {m['mse_1']:.4g} "
                     f"({100 * (s['mse_1'] / m['mse_1'] - 1):+.1f}%); {reach} (MAML after 10: {m['mse_10']:.4g})")
    if any(r["meta_sgd"] and not r["mse_10"] < float("inf") for r in results.values()):
        notes.append("Meta-SGD's α is learned for the one step it was meta-trained with: repeating it 10 times "
                     "diverges on some tasks (NaN); use as many steps at meta-test as at meta-train")
    return Report([table, alpha_table], results, notes, _plot(results, alphas, out / "meta-sgd.png"))


def headlines(results: dict) -> dict[str, float]:
    """The numbers the notes conclude from, for ``--seeds``: one value per training seed (a MAML run
    that never reaches Meta-SGD's one-step MSE in 10 steps counts as inf steps)."""
    out = {}
    for shots in SHOTS:
        m, s = results[f"k{shots}-maml"], results[f"k{shots}-meta-sgd"]
        out[f"K={shots}: Meta-SGD MSE after 1 step"] = s["mse_1"]
        out[f"K={shots}: MAML MSE after 1 step"] = m["mse_1"]
        out[f"K={shots}: MAML MSE after 10 steps"] = m["mse_10"]
        steps = m["maml_steps_to_meta_sgd_1"]
        out[f"K={shots}: MAML steps to Meta-SGD's one-step MSE"] = float("inf") if steps is None else float(steps)
    return out


def _plot(results: dict, alphas: dict, path: Path) -> Path:
    from fastmaml.plotting import plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    keys = list(results)
    axes[0].bar(range(len(keys)), [results[k]["mse_1"] for k in keys], yerr=[results[k]["ci_1"] for k in keys],
                capsize=4)
    axes[0].set_xticks(range(len(keys)), keys)
    axes[0].set_title("MSE after 1 inner step (95% CI)")
    axes[0].set_ylabel("MSE")
    width = 0.8 / max(1, len(alphas))
    for i, (key, stats) in enumerate(alphas.items()):
        names = list(stats)
        xs = [j + i * width for j in range(len(names))]
        axes[1].bar(xs, [stats[n]["mean"] for n in names], width, yerr=[stats[n]["std"] for n in names],
                    capsize=3, label=key)
        axes[1].set_xticks([j + width / 2 for j in range(len(names))], names, rotation=20)
    axes[1].axhline(0.01, color="k", linestyle=":", label="init α = 0.01")
    axes[1].set_title("learned α per tensor (mean ± std)")
    axes[1].set_ylabel("α")
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
