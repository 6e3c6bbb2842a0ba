"""Runs evaluated alike, side by side: one table, paired differences, one figure (``fastmaml compare``).

    fastmaml eval RUN_A && fastmaml eval RUN_B
    fastmaml compare RUN_A RUN_B [--figure out.png]
    fastmaml compare RUN_A RUN_B --iteration 5000     # their snapshots (fastmaml eval RUN --iteration 5000)
    fastmaml compare A_SEED0,A_SEED1,A_SEED2 B_SEED0,B_SEED1,B_SEED2   # settings over training seeds

Each run's ``eval.json`` must come from the same experiment, meta-test seed, task count, steps (and,
for meta-RL, trajectories): ``fastmaml eval`` then draws the same tasks for every method of every
run, so the rows compare like with like. A method that several runs report with the same numbers
(the meta-RL runs' random initialisation, for one) is shown once; with different numbers (MAML in a
first-order and a second-order run) it is shown once per run, labelled ``method [run folder]``.
The paired differences are the first row minus each other one, task by task on the same tasks:
what is hard or easy about a task is shared by both sides of a pair and cancels, so this interval,
not the two separate ones, says whether one beats the other on these tasks (it says nothing about
other training seeds).

Comma-separated groups compare settings over training seeds (:func:`merge_seeds`): each group is one
setting's runs, one per seed, every group in the same seed order. A row's cell is the mean over the
seeds of each seed's meta-test mean, with a 95% interval over the seeds (Student's t), and the
differences are taken seed by seed (the first row minus each other one, at each seed) before they
are averaged: that interval, not one run's, says whether a setting wins beyond the luck of one seed.
Runs are evaluated alike as above, except that the meta-test seed may change from one place in the
groups to the next (a meta-RL seed draws its own tasks); at one place it must be the same.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from fastmaml.engine.evaluate import mean_ci95_t, metric_names, paired_by_metric, shown_steps
from fastmaml.engine.run_dir import CONFIG, eval_path, is_run_folder
from fastmaml.errors import ConfigError

SAME = ("experiment", "tasks", "steps", "seed", "trajectories", "sampling", "split")
ABSENT = {"sampling": "trajectories"}  # what a report without the key means (written before it existed)


def setting(report: dict[str, Any], key: str) -> Any:
    """``report``'s value of the SAME key ``key``, its meaning where an older report lacks it."""
    return report.get(key, ABSENT.get(key))


def check_same_tasks(run: Path, report: dict[str, Any], first_run: Path, first: dict[str, Any]) -> None:
    """ConfigError where two reports say their tasks were drawn differently (``task_set``: a sinusoid's
    K and ranges, a table's CSV and split, an image run's tree): the same seed then draws other tasks,
    and differences paired task by task would mean nothing. Reports of older versions lack it: not checked."""
    ours, theirs = report.get("task_set"), first.get("task_set")
    if not isinstance(ours, dict) or not isinstance(theirs, dict):
        return
    # keys both record (a key added since, e.g. test_images_sha1, is not held against an older report)
    differ = [key for key in sorted(set(ours) & set(theirs)) if ours.get(key) != theirs.get(key)]
    if differ:
        shown = "; ".join(f"{key} {json.dumps(ours.get(key))} against {json.dumps(theirs.get(key))}"
                          for key in differ[:3])
        more = "; ..." if len(differ) > 3 else ""
        raise ConfigError(f"{run} and {first_run} were meta-tested on different tasks ({shown}{more}): their "
                          "differences cannot be paired task by task; compare runs of one task distribution")


def read_report(run: Path, iteration: int | None = None) -> dict[str, Any]:
    """``run``'s eval report: of its checkpoint, or of the snapshot kept at ``iteration``."""
    path = eval_path(run, "checkpoint" if iteration is None else iteration)
    command = f"fastmaml eval {run}" + ("" if iteration is None else f" --iteration {iteration}")
    if not path.is_file():
        if not Path(run).is_dir() or not (is_run_folder(run) or eval_path(run, "checkpoint").is_file()):
            # a typo or another folder: `fastmaml eval` there would not help
            what = ("does not exist" if not Path(run).exists() else
                    "is not a fastmaml run folder (no config.json of a run)")
            raise ConfigError(f"{run} {what}; name the folders of trained runs")
        raise ConfigError(f"{run} has no {path.relative_to(run)}; run `{command}` first")
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path} is not a readable eval report ({error}); run `{command}` again") from None
    if not isinstance(report, dict) or not isinstance(report.get("metrics"), dict) or not report["metrics"]:
        raise ConfigError(f"{path} is not an eval report (no metrics); run `{command}` again")
    damage = report_damage(report)
    if damage:  # an edit by hand: a KeyError traceback in compare and plot before
        raise ConfigError(f"{path} is not a readable eval report ({damage}); run `{command}` again")
    return report


def report_damage(report: dict[str, Any]) -> str | None:
    """What is missing from an eval report's metrics (each method: metric -> {"mean": [numbers],
    "ci95": [as many numbers]}) and its ``step``, or None for a whole report."""
    def numbers(value: Any) -> bool:
        return isinstance(value, list) and bool(value) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)

    if not isinstance(report.get("step"), int) or isinstance(report.get("step"), bool):
        return "no iteration: 'step' is missing or not a whole number"
    for method, values in report["metrics"].items():
        if not isinstance(values, dict) or not values:
            return f"method {method!r} has no metrics"
        for name, value in values.items():
            if not isinstance(value, dict) or not numbers(value.get("mean")) or not numbers(value.get("ci95")):
                return f"{method} {name} lacks a list of numbers under 'mean' or 'ci95'"
            if len(value["mean"]) != len(value["ci95"]):
                return f"{method} {name} has {len(value['mean'])} means and {len(value['ci95'])} intervals"
    return None


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
            if setting(report, key) != setting(first, key):
                raise ConfigError(f"{run}'s eval has {key}={setting(report, key)!r}, {first_run}'s "
                                  f"{setting(first, key)!r}: evaluate every run alike (fastmaml eval RUN with the same "
                                  + ("--set sampling=..." if key == "sampling" else "--tasks, --steps, --seed") + ")")
        check_same_tasks(run, report, first_run, first)
    names = [run.name for run, _ in reports]
    label = {run: run.name if names.count(run.name) == 1 else str(run) for run, _ in reports}
    found: dict[str, list[tuple[Path, dict, int]]] = {}
    for run, report in reports:
        for method, values in report["metrics"].items():
            entries = found.setdefault(method, [])
            if all(values != seen for _, seen, _ in entries):
                entries.append((run, values, report["step"]))
    merged = {key: value for key, value in first.items() if key != "metrics"}
    if any(report.get("model") != first.get("model") for _, report in reports):  # e.g. conv against MLP
        merged.pop("model", None)
    merged["metrics"], merged["runs"] = {}, {}
    for method, entries in found.items():
        for run, values, step in entries:
            name = method if len(entries) == 1 else f"{method} [{label[run]}]"
            merged["metrics"][name] = values
            merged["runs"][name] = f"{run} (iteration {step})"
    return merged


def group_label(runs: list[Path], full: bool = False) -> str:
    """One name for a setting's runs: what their folder names (``full``: paths) share, the differing
    part in braces (``rl-nav2d-seed{0,1,2}``)."""
    names = [str(run) if full else run.name for run in runs]
    prefix = os.path.commonprefix(names)
    suffix = os.path.commonprefix([n[len(prefix):][::-1] for n in names])[::-1]
    middle = [n[len(prefix): len(n) - len(suffix)] for n in names]
    return f"{prefix}{{{','.join(middle)}}}{suffix}"


def split_name(report: dict[str, Any]) -> str:
    """The tasks a report was scored on, in words: meta-test, validation or meta-training."""
    return {"val": "validation", "train": "meta-training"}.get(report.get("split", "test"), "meta-test")


def training_seed(run: Path) -> int | None:
    """The seed ``run``'s config.json names; None where it cannot be read (an eval.json alone)."""
    try:
        seed = json.loads((Path(run) / CONFIG).read_text())["config"]["seed"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return seed if isinstance(seed, int) else None


def _check_seed_groups(groups: list[list[Path]], reports: list[list[dict[str, Any]]]) -> None:
    """ConfigError unless the groups can be paired seed by seed: equal sizes of two or more, no run
    twice, runs evaluated alike, and at each place one training seed and one set of meta-test tasks."""
    sizes = {len(group) for group in groups}
    if len(sizes) != 1 or min(sizes) < 2:
        raise ConfigError("with comma-separated run folders, each group is one setting's runs, one per training "
                          "seed: give every group the same number of runs (two or more), in the same seed order; "
                          f"got groups of {', '.join(str(len(g)) for g in groups)}")
    seen: dict[Path, Path] = {}
    for run in (run for group in groups for run in group):
        key = Path(run).resolve()
        if key in seen:
            raise ConfigError(f"{run} is named twice (as {seen[key]} before): each run is one seed of one setting")
        seen[key] = run
    seeds = {run: seed for group in groups for run in group if (seed := training_seed(run)) is not None}
    first_run, first = groups[0][0], reports[0][0]
    for group, group_reports in zip(groups, reports):
        for run, report in zip(group, group_reports):
            for key in SAME:
                if key != "seed" and setting(report, key) != setting(first, key):
                    raise ConfigError(f"{run}'s eval has {key}={setting(report, key)!r}, {first_run}'s "
                                      f"{setting(first, key)!r}: evaluate every run alike (fastmaml eval RUN with the "
                                      + ("same --set sampling=..." if key == "sampling" else "same --tasks, --steps")
                                      + ")")
        for place, (run, report) in enumerate(zip(group, group_reports)):  # a place: one seed in every group
            check_same_tasks(run, report, groups[0][place], reports[0][place])
        trained = [(run, seeds[run]) for run in group if run in seeds]
        if len({seed for _, seed in trained}) < len(trained):
            found = ", ".join(f"{run} seed {seed}" for run, seed in trained)
            raise ConfigError(f"a group holds two runs of one training seed ({found}): give each setting one run "
                              "per seed")
        for run, report in zip(group, group_reports):  # every run of a setting reports the same rows and metrics
            shape, expected = ({m: sorted(v) for m, v in report["metrics"].items()},
                               {m: sorted(v) for m, v in group_reports[0]["metrics"].items()})
            if shape != expected:
                raise ConfigError(f"{run}'s eval reports {shape}, {group[0]}'s {expected}: put runs of one setting "
                                  "(the same preset, baselines and --set changes, evaluated alike) in each group")
    for place, (runs, place_reports) in enumerate(zip(zip(*groups), zip(*reports))):
        trained = {run: seeds[run] for run in runs if run in seeds}
        if len(set(trained.values())) > 1:
            found = ", ".join(f"{run} seed {seed}" for run, seed in trained.items())
            raise ConfigError(f"the runs at place {place + 1} of their groups were trained at different seeds "
                              f"({found}): list every group's runs in the same seed order")
        tasks = {report.get("seed") for report in place_reports}
        if len(tasks) > 1:
            found = ", ".join(f"{run} --seed {report.get('seed')}" for run, report in zip(runs, place_reports))
            raise ConfigError(f"the runs at place {place + 1} of their groups were meta-tested on different tasks "
                              f"({found}): evaluate the runs of one seed with the same fastmaml eval --seed")


def merge_seeds(groups: list[list[Path]], iteration: int | None = None) -> dict[str, Any]:
    """Settings over training seeds (see the module docstring): one report whose rows are each
    setting's methods, each metric's ``mean`` and ``ci95`` over the seeds after 0..N steps, its
    ``per_seed`` means, and ``differences``: the first row minus each other one, seed by seed."""
    reports = [[read_report(run, iteration) for run in group] for group in groups]
    _check_seed_groups(groups, reports)
    seeds = len(groups[0])
    labels = [group_label(group) for group in groups]
    if len(set(labels)) < len(labels):  # runs/so/seed0 and runs/fo/seed0: the folder names alone are alike
        labels = [group_label(group, full=True) for group in groups]
    entries: list[tuple[str, int, list[dict]]] = []  # (method, group, its values at each seed)
    for g, group_reports in enumerate(reports):
        for method in group_reports[0]["metrics"]:
            values = [report["metrics"][method] for report in group_reports]
            if all(seen_method != method or seen != values for seen_method, _, seen in entries):
                entries.append((method, g, values))  # a method identical in two groups (a shared baseline): once
    first = reports[0][0]
    merged = {key: value for key, value in first.items() if key not in ("metrics", "seed")}
    merged |= {"seeds": seeds, "metrics": {}, "runs": {}, "differences": {},
               "interval": f"95% CI over {seeds} training seeds",
               "eval_seeds": [group_reports[0].get("seed") for group_reports in zip(*reports)],
               "iterations": sorted({report.get("step") for group_reports in reports for report in group_reports},
                                    key=str)}
    for method, g, values in entries:
        name = method if [m for m, _, _ in entries].count(method) == 1 else f"{method} [{labels[g]}]"
        merged["runs"][name] = labels[g]
        merged["metrics"][name] = {}
        for metric in values[0]:
            per_seed = torch.tensor([v[metric]["mean"] for v in values], dtype=torch.float64)  # (seeds, steps + 1)
            mean, ci = mean_ci95_t(per_seed)
            merged["metrics"][name][metric] = {"mean": mean.tolist(), "ci95": ci.tolist(),
                                               "per_seed": per_seed.tolist()}
    rows = merged["metrics"]
    head = next(iter(rows))
    for metric in metric_names(rows):
        for name, values in rows.items():
            if name != head and metric in values and metric in rows[head]:
                d = torch.tensor(rows[head][metric]["per_seed"]) - torch.tensor(values[metric]["per_seed"])
                mean, ci = mean_ci95_t(d)
                merged["differences"].setdefault(metric, {})[name] = {
                    "mean": mean.tolist(), "ci95": ci.tolist(), "per_seed": d.tolist()}
    return merged


def seeds_summary(report: dict[str, Any], step: int | None = None) -> str:
    """:func:`merge_seeds`' report as ``fastmaml compare`` prints it: the table over seeds and the
    differences seed by seed, with each seed's difference after ``step`` steps shown (default: the
    last step column; the paper's headlines are often after one step)."""
    seeds = report["seeds"]
    if step is not None and not 0 <= step <= report["steps"]:
        raise ConfigError(f"--per-seed-step {step}: the runs were meta-tested with 0 to {report['steps']} steps; "
                          f"give a number in that range")
    where = split_name(report)
    shared = ("every run on the same meta-test tasks" if len(set(map(str, report["eval_seeds"]))) == 1 else
              "each training seed's runs on that seed's meta-test tasks")
    head = (f"{report['experiment']}: {report['tasks']} {where} tasks per run ({shared}), {seeds} training seeds per "
            "row; each cell: the mean over the seeds of the runs' means, ± its 95% interval over the seeds (Student's "
            "t, n − 1 = " + f"{seeds - 1})")
    if len(report["iterations"]) > 1:
        head += f"; the runs were meta-tested at different iterations ({', '.join(map(str, report['iterations']))})"
    steps = step_columns(report)
    shown = steps[-1] if step is None else step
    lines = [head, table(report)]
    first = next(iter(report["metrics"]))
    for metric, differences in report["differences"].items():
        d = decimals(report, metric)
        lines += ["", f"{metric}: {first} minus each other row, seed by seed (mean ± 95% CI over the {seeds} seeds; "
                  f"the last column: each seed's difference after {shown} step{'' if shown == 1 else 's'}):", "",
                  *header(["difference"], steps, ("per seed",))]
        for name, diff in differences.items():
            cells = [f"{diff['mean'][k]:+.{d}f} ± {diff['ci95'][k]:.{d}f}" for k in steps]
            each = ", ".join(f"{row[shown]:+.{d}f}" for row in diff["per_seed"])
            lines.append(f"| {first} - {name} | " + " | ".join(cells) + f" | {each} |")
    return "\n".join(lines).rstrip()


def decimals(report: dict[str, Any], name: str) -> int:
    """Decimals for a metric's table: 4 below 10 (accuracies, most losses), 3 below 100, else 2 (returns)."""
    means = [abs(m) for values in report["metrics"].values() if name in values for m in values[name]["mean"]]
    top = max(means, default=0.0)
    return 4 if top < 10 else 3 if top < 100 else 2


MAX_STEP_COLUMNS = 12


def step_columns(report: dict[str, Any]) -> list[int]:
    """The numbers of steps the tables show (all up to MAX_STEP_COLUMNS; ``shown_steps``)."""
    return shown_steps(report["steps"], MAX_STEP_COLUMNS)


def header(columns: list[str], steps: list[int], after: tuple[str, ...] = ()) -> list[str]:
    """A markdown table's header and rule: ``columns``, one column per number of steps, then ``after``."""
    names = [*columns, *(f"{k} step{'' if k == 1 else 's'}" for k in steps), *after]
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
    where = split_name(report)
    trajectories = (f", {report['trajectories']} trajectories per task and step"
                    if "trajectories" in report else "")
    model = f", {report['model']}" if report.get("model") else ""
    head = f"{report['experiment']}{model}: {report['tasks']} {where} tasks, seed {report['seed']}{trajectories}"
    iterations = sorted({int(m.group(1)) for text in report.get("runs", {}).values()
                         if (m := re.search(r"\(iteration (\d+)\)$", text))})
    if len(iterations) > 1:  # allowed (a run against another's earlier snapshot), but say it
        head += f"; the runs were meta-tested at different iterations ({', '.join(map(str, iterations))})"
    shown = len(step_columns(report))
    if shown <= report["steps"]:
        head += (f"; {shown} of the {report['steps'] + 1} step columns shown (each run's eval.json has "
                 "every step)")
    return "\n".join([head, table(report), paired(report)]).rstrip()
