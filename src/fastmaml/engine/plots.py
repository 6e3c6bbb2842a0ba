"""``fastmaml plot``: the figures of a run folder, from its metrics, its eval and its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from fastmaml import plotting
from fastmaml.engine.evaluate import evaluate, load_trained, methods_for
from fastmaml.engine.run_dir import EVAL, PLOTS, read_metrics
from fastmaml.errors import CheckpointError


def plot_run(run_dir: str | Path, tasks: int = 100) -> list[Path]:
    """Write the run's PNG figures under ``RUN_DIR/plots`` and return their paths.

    The metric-vs-steps figure uses ``eval.json`` when ``fastmaml eval`` has written one, and
    otherwise evaluates ``tasks`` meta-test tasks (without saving them as the run's eval).
    """
    run_dir = Path(run_dir)
    out = run_dir / PLOTS
    out.mkdir(exist_ok=True)
    paths = []
    rows = read_metrics(run_dir)
    if not rows:
        raise CheckpointError(f"{run_dir} has no metrics yet; train it first (fastmaml train ... --out {run_dir})")
    paths.append(plotting.learning_curve(rows, out / "learning_curve.png"))
    eval_path = run_dir / EVAL
    report = json.loads(eval_path.read_text()) if eval_path.is_file() else evaluate(run_dir, tasks=tasks, save=False)
    paths.append(plotting.metric_vs_steps(report, out / "metric_vs_steps.png"))
    experiment, maml, _ = load_trained(run_dir)
    figures = experiment.extras.get("figures")
    if figures is not None:
        paths.extend(figures(experiment, methods_for(experiment, maml), out))
    return paths
