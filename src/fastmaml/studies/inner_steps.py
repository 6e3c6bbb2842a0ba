"""First-order MAML with N = 1, 2, 3, 5 inner steps at meta-train: MSE after adaptation, time per iteration.

The slides (Discussion, "Update meta parameters with N-steps") ask whether N steps help and report
only learning times for first-order ReLU: 53 / 73 / 92 minutes for 1 / 2 / 3 steps. Each run is
scored after the N steps it was trained for (and after 10, the paper's meta-test budget), beside the
N = 1 run scored after the same N steps on the same tasks: more steps at meta-test help any run, so
that pair, not the MSE after N alone, says whether training with N steps helps. (The slides write the
k-th step as θ − α∇L(θ_i^(k−1)), from θ each time; this is the usual θ_i^(k−1) − α∇L(θ_i^(k−1)).)
"""

from __future__ import annotations

import math
from pathlib import Path

from fastmaml.engine.evaluate import evaluate
from fastmaml.studies.common import Budget, Report, Table, paired, pm, seconds, time_meta_steps, train_sinusoid

FULL = Budget(iterations=10_000, tasks=600)
QUICK = Budget(iterations=100, tasks=50, timing_iterations=20, timing_rounds=5)  # 5 rounds: the fastest survives a busy CI
STEPS = (1, 2, 3, 5)
SLIDES_MINUTES = {1: 53, 2: 73, 3: 92}


def run(out: Path, budget: Budget, seed: int = 0) -> Report:
    results, reports = {}, {}
    for n in STEPS:
        run_dir = out / "inner-steps" / f"steps-{n}"
        train_s, wall_s = train_sinusoid(run_dir, budget, first_order=True, inner_steps=n, seed=seed)
        reports[n] = evaluate(run_dir, tasks=budget.tasks, steps=10)
        mse = reports[n]["metrics"]["maml"]["mse"]
        results[n] = {
            "inner_steps": n,
            "mse_0": mse["mean"][0], "ci_0": mse["ci95"][0],
            "mse_1": mse["mean"][1], "ci_1": mse["ci95"][1],
            "mse_n": mse["mean"][n], "ci_n": mse["ci95"][n],
            "mse_10": mse["mean"][10], "ci_10": mse["ci95"][10],
            "curve": mse["mean"],
            "train_s": train_s, "wall_s": wall_s,
            "slides_minutes": SLIDES_MINUTES.get(n),
            "run_dir": str(run_dir),
        }
    timing = time_meta_steps({n: Path(r["run_dir"]) for n, r in results.items()}, budget.timing_iterations,
                             budget.timing_rounds)
    for n, ms in timing.items():
        results[n]["ms_per_iteration"] = ms
    for n, r in results.items():  # the N = 1 run after the same N steps, and the paired difference
        r["n1_mse_n"] = results[1]["curve"][n]
        r["paired_vs_n1"] = {str(s): paired(reports[n], reports[1], "mse", s) for s in (n, 10)}
    table = Table(
        f"First-order MAML, ReLU, K=10, {budget.iterations} iterations, training seed {seed}; "
        f"MSE on {budget.tasks} meta-test tasks "
        "(mean ± 95% CI) after the N steps it was trained with, and after 1 and 10",
        ["N", "MSE after N", "N=1 run after N", "minus N=1 run after N (paired)", "MSE after 1", "MSE after 10",
         "train wall time", "ms/iter", "time vs N=1", "slides time (min)", "slides vs N=1"],
    )
    base = results[1]["ms_per_iteration"]
    for n, r in results.items():
        slides = r["slides_minutes"]
        d = r["paired_vs_n1"][str(n)]
        table.add(n, pm(r["mse_n"], r["ci_n"]), f"{r['n1_mse_n']:.4g}", "-" if n == 1 else f"{d[0]:+.3g} ± {d[1]:.2g}",
                  pm(r["mse_1"], r["ci_1"]), pm(r["mse_10"], r["ci_10"]),
                  seconds(r["train_s"]), f"{r['ms_per_iteration']:.2f}", f"{r['ms_per_iteration'] / base:.2f}",
                  slides if slides else "-", f"{slides / 53:.2f}" if slides else "-")
    ratios = {n: r["ms_per_iteration"] / base for n, r in results.items()}
    better = [n for n in STEPS[1:] if sum(results[n]["paired_vs_n1"][str(n)]) < 0]  # CI entirely below 0
    worse = [n for n in STEPS[1:] if results[n]["paired_vs_n1"][str(n)][0] - results[n]["paired_vs_n1"][str(n)][1] > 0]
    diverged = [n for n in STEPS if not math.isfinite(results[n]["paired_vs_n1"][str(n)][0])]
    notes = [
        "time per iteration relative to N=1: " + ", ".join(f"N={n}: {q:.2f}" for n, q in ratios.items())
        + " (each step adds a forward and backward of the support set; first order keeps memory flat in N)",
        "MSE after N steps: " + ", ".join(f"N={n}: {r['mse_n']:.4g}" for n, r in results.items())
        + "; the N=1 run after the same N steps: " + ", ".join(f"{r['n1_mse_n']:.4g}" for r in results.values()),
        "against the N=1 run scored after as many steps (paired, one training seed each): training with N "
        + (f"steps did better for N = {', '.join(map(str, better))}" if better else "steps did better for no N")
        + (f", worse for N = {', '.join(map(str, worse))}" if worse else "")
        + (f", diverged (inf or NaN) for N = {', '.join(map(str, diverged))}" if diverged else "")
        + "; where none of these, the difference is inside the 95% interval",
    ]
    return Report([table], {str(n): r for n, r in results.items()}, notes, _plot(results, out / "inner-steps.png"))


def headlines(results: dict) -> dict[str, float]:
    """The numbers the notes conclude from, for ``--seeds``: one value per training seed."""
    out = {}
    for n in STEPS[1:]:
        r = results[str(n)]
        out[f"N={n} minus the N=1 run, MSE after {n} steps, paired"] = r["paired_vs_n1"][str(n)][0]
        out[f"N={n} minus the N=1 run, MSE after 10 steps, paired"] = r["paired_vs_n1"]["10"][0]
    for n in STEPS:
        out[f"N={n}: MSE after {n} step{'' if n == 1 else 's'}"] = results[str(n)]["mse_n"]
    base = results["1"]["ms_per_iteration"]
    for n in STEPS[1:]:
        out[f"N={n}: time per iteration / N=1's"] = results[str(n)]["ms_per_iteration"] / base
    return out


def _plot(results: dict, path: Path) -> Path:
    from fastmaml.plotting import plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for n, r in results.items():
        axes[0].plot(range(len(r["curve"])), r["curve"], "o-", markersize=3, label=f"trained with N={n}")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("inner steps at meta-test")
    axes[0].set_ylabel("MSE")
    axes[0].set_title("MSE vs inner steps at meta-test")
    axes[0].legend()
    ns = list(results)
    axes[1].plot(ns, [results[n]["ms_per_iteration"] for n in ns], "o-")
    axes[1].set_xticks(ns)
    axes[1].set_xlabel("inner steps N at meta-train (first order)")
    axes[1].set_ylabel("ms per meta-iteration")
    axes[1].set_title("time per iteration")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
