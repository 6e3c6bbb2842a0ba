"""Runs evaluated alike, side by side: one table, paired differences, one figure (``fastmaml compare``).

    fastmaml eval RUN_A && fastmaml eval RUN_B
    fastmaml compare RUN_A RUN_B [--figure out.png]
    fastmaml compare RUN_A RUN_B --iteration 5000     # their snapshots (fastmaml eval RUN --iteration 5000)

Each run's ``eval.json`` must come from the same experiment, meta-test seed, task count, steps (and,
for meta-RL, trajectories): ``fastmaml eval`` then draws the same tasks for every method of every
run, so the rows compare like with like. A method that several runs report with the same numbers
(the meta-RL runs' random initialisation, for one) is shown once; with different numbers (MAML in a
first-order and a second-order run) it is shown once per run, labelled ``method [run folder]``.
The paired differences are the first row minus each other one, task by task on the same tasks:
what is hard or easy about a task is shared by both sides of a pair and cancels, so this interval,
not the two separate ones, says whether one beats the other on these tasks (it says nothing about
other training seeds).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fastmaml.engine.evaluate import metric_names, paired_by_metric, shown_steps
from fastmaml.engine.run_dir import eval_path
from fastmaml.errors import ConfigError

SAME = ("experiment", "tasks", "steps", "seed", "trajectories", "split")


def read_report(run: Path, iteration: int | None = None) -> dict[str, Any]:
    """``run``'s eval report: of its checkpoint, or of the snapshot kept at ``iteration``."""
    path = eval_path(run, "checkpoint" if iteration is None else iteration)
    command = f"fastmaml eval {run}" + ("" if iteration is None else f" --iteration {iteration}")
    if not path.is_file():
        raise ConfigError(f"{run} has no {path.relative_to(run)}; run `{command}` first")
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path} is not a readable eval report ({error}); run `{command}` again") from None
    if not isinstance(report, dict) or not isinstance(report.get("metrics"), dict) or not report["metrics"]:
        raise ConfigError(f"{path} is not an eval report (no metrics); run `{command}` again")
    return report


def merge(runs: list[Path], iteration: int | None = None) -> dict[str, Any]:
    """One report holding every run's methods (see the module docstring), with ``runs``: the run and
    iteration each row comes from. ``iteration``: every run's report of its snapshot at that
    iteration (``fastmaml eval RUN --iteration N``) instead of its checkpoint's."""
    if not runs:
        raise ConfigError("name at least one run folder")
    reports = [(Path(run), read_report(run, iteration)) for run in runs]
    first_run, first = reports[0]
    for run, report in reports[1:]:
        for key in SAME:
            if report.get(key) != first.get(key):
                raise ConfigError(f"{run}'s eval has {key}={report.get(key)!r}, {first_run}'s {first.get(key)!r}: "
                                  f"evaluate every run alike (fastmaml eval RUN with the same --tasks, --steps, --seed)")
    names = [run.name for run, _ in reports]
    label = {run: run.name if names.count(run.name) == 1 else str(run) for run, _ in reports}
    found: dict[str, list[tuple[Path, dict, int]]] = {}
    for run, report in reports:
        for method, values in report["metrics"].items():
            entries = found.setdefault(method, [])
            if all(values != seen for _, seen, _ in entries):
                entries.append((run, values, report["step"]))
    merged = {key: value for key, value in first.items() if key != "metrics"}
    merged["metrics"], merged["runs"] = {}, {}
    for method, entries in found.items():
        for run, values, step in entries:
            name = method if len(entries) == 1 else f"{method} [{label[run]}]"
            merged["metrics"][name] = values
            merged["runs"][name] = f"{run} (iteration {step})"
    return merged


def decimals(report: dict[str, Any], name: str) -> int:
    """Decimals for a metric's table: 4 below 10 (accuracies, most losses), 3 below 100, else 2 (returns)."""
    means = [abs(m) for values in report["metrics"].values() if name in values for m in values[name]["mean"]]
    top = max(means, default=0.0)
    return 4 if top < 10 else 3 if top < 100 else 2


MAX_STEP_COLUMNS = 12


def step_columns(report: dict[str, Any]) -> list[int]:
    """The numbers of steps the tables show (all up to MAX_STEP_COLUMNS; ``shown_steps``)."""
    return shown_steps(report["steps"], MAX_STEP_COLUMNS)


def header(columns: list[str], steps: list[int]) -> list[str]:
    """A markdown table's header and rule: ``columns``, then one column per number of steps."""
    names = [*columns, *(f"{k} step{'' if k == 1 else 's'}" for k in steps)]
    return ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]


def table(report: dict[str, Any]) -> str:
    """Mean ± 95% CI after 0..N steps, one markdown table per metric."""
    lines = []
    steps = step_columns(report)
    for name in metric_names(report["metrics"]):
        d = decimals(report, name)
        lines += ["", f"{name}:", "", *header(["method", "run"], steps)]
        for method, values in report["metrics"].items():
            if name in values:
                cells = [f"{values[name]['mean'][k]:.{d}f} ± {values[name]['ci95'][k]:.{d}f}" for k in steps]
                lines.append(f"| {method} | {report['runs'][method]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired(report: dict[str, Any]) -> str:
    """The first row minus each other one, task by task, for every metric all rows keep per task."""
    methods = report["metrics"]
    first = next(iter(methods))
    steps = step_columns(report)
    lines = []
    for name, differences in paired_by_metric(methods).items():
        d = decimals(report, name)
        lines += ["", f"{name}: {first} minus each other row, paired over the same {report['tasks']} tasks:", "",
                  *header(["difference"], steps)]
        for method, (mean, ci) in differences.items():
            lines.append(f"| {first} - {method} | " + " | ".join(f"{mean[k]:+.{d}f} ± {ci[k]:.{d}f}" for k in steps) + " |")
    if not lines and len(methods) > 1:
        return ("\n(no paired differences: an eval.json without per-task values, written before they were kept; "
                "run `fastmaml eval` on each run again)")
    return "\n".join(lines)


def summary(report: dict[str, Any]) -> str:
    """The header line, the table and the paired differences, as ``fastmaml compare`` prints them."""
    where = {"val": "validation", "train": "meta-training"}.get(report.get("split", "test"), "meta-test")
    trajectories = (f", {report['trajectories']} trajectories per task and step"
                    if "trajectories" in report else "")
    head = f"{report['experiment']}: {report['tasks']} {where} tasks, seed {report['seed']}{trajectories}"
    iterations = sorted({int(m.group(1)) for text in report.get("runs", {}).values()
                         if (m := re.search(r"\(iteration (\d+)\)$", text))})
    if len(iterations) > 1:  # allowed (a run against another's earlier snapshot), but say it
        head += f"; the runs were meta-tested at different iterations ({', '.join(map(str, iterations))})"
    shown = len(step_columns(report))
    if shown <= report["steps"]:
        head += (f"; {shown} of the {report['steps'] + 1} step columns shown (each run's eval.json has "
                 "every step)")
    return "\n".join([head, table(report), paired(report)]).rstrip()
