"""One table and one return-vs-steps figure for meta-RL runs trained apart (e.g. MAML, the
context-vector baseline and ``--set method=none`` for the other baselines) and evaluated alike.

    fastmaml eval RUN_A && fastmaml eval RUN_B ...
    python benchmarks/rl_compare_runs.py RUN_A RUN_B ... [--figure out.png]

Each run's ``eval.json`` must come from the same environment, meta-test seed, task count, steps and
trajectories: ``fastmaml eval`` then draws the same goals and action noise for every method of
every run, so the rows compare like with like. A method in several runs is taken from the first.
Prints a markdown table (mean ± 95% CI after 0..N steps; per direction too for direction tasks),
then the paired differences: the first method (e.g. MAML) minus each other one, task by task on the
same tasks, mean ± 95% CI over tasks. Task difficulty (e.g. the goal velocity) is shared by both
sides of a pair and cancels, so this interval is the one that says whether one method beats the
other on these tasks (it says nothing about other training seeds).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fastmaml import plotting
from fastmaml.engine.evaluate import paired_differences

SAME = ("experiment", "tasks", "steps", "seed", "trajectories")


def merge(runs: list[Path]) -> dict:
    reports = []
    for run in runs:
        path = run / "eval.json"
        if not path.is_file():
            raise SystemExit(f"{run} has no eval.json; run `fastmaml eval {run}` first")
        reports.append((run, json.loads(path.read_text())))
    first_run, merged = reports[0]
    merged = {**merged, "metrics": dict(merged["metrics"]), "runs": {}}
    for run, report in reports:
        for key in SAME:
            if report[key] != merged[key]:
                raise SystemExit(f"{run}'s eval has {key}={report[key]!r}, {first_run}'s {merged[key]!r}: "
                                 "evaluate every run alike")
        for method, values in report["metrics"].items():
            if method not in merged["runs"]:
                merged["metrics"][method] = values
                merged["runs"][method] = f"{run} (iteration {report['step']})"
    return merged


def table(report: dict) -> str:
    lines = []
    for name in next(iter(report["metrics"].values())):
        steps = range(report["steps"] + 1)
        lines += ["", f"{name}:", "", "| method | run | " + " | ".join(f"{k} steps" for k in steps) + " |",
                  "|---|---|" + "---|" * len(steps)]
        for method, values in report["metrics"].items():
            cells = [f"{m:.2f} ± {c:.2f}" for m, c in zip(values[name]["mean"], values[name]["ci95"])]
            lines.append(f"| {method} | {report['runs'][method]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired(report: dict) -> str:
    """The first method minus each other one, per task (``per_task`` in ``eval.json``)."""
    differences = paired_differences(report["metrics"])
    if differences is None:
        return ("\n(no paired differences: an eval.json without per-task returns, written before they were "
                "kept; run `fastmaml eval` on each run again)")
    first = next(iter(report["metrics"]))
    steps = range(report["steps"] + 1)
    lines = ["", f"{first} minus each method, paired over the same {report['tasks']} tasks:", "",
             "| method | " + " | ".join(f"{k} steps" for k in steps) + " |", "|---|" + "---|" * len(steps)]
    for method, (mean, ci) in differences.items():
        lines.append(f"| {first} - {method} | " + " | ".join(f"{m:+.2f} ± {c:.2f}" for m, c in zip(mean, ci)) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--figure", type=Path, help="write the return-vs-steps figure here")
    args = parser.parse_args()
    report = merge(args.runs)
    print(f"{report['experiment']}: {report['tasks']} meta-test tasks, seed {report['seed']}, "
          f"{report['trajectories']} trajectories per task and step")
    print(table(report))
    print(paired(report))
    if args.figure:
        print(plotting.metric_vs_steps(report, args.figure))


if __name__ == "__main__":
    main()
