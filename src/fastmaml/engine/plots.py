"""``fastmaml plot``: the figures of a run folder, from its metrics, its eval and its checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

from fastmaml import plotting
from fastmaml.engine.compare import read_report
from fastmaml.engine.evaluate import check_finite_report, evaluate, load_trained, methods_for
from fastmaml.engine.run_dir import (
    BEST,
    CHECKPOINT,
    EVAL,
    PLOTS,
    failed_start,
    first_checkpoint_due,
    has_checkpoint,
    read_metrics,
)
from fastmaml.errors import CheckpointError, ConfigError, DataError, NonFiniteLossError

log = logging.getLogger(__name__)


def plot_run(run_dir: str | Path, tasks: int = 100) -> list[Path]:
    """Write the run's PNG figures under ``RUN_DIR/plots`` and return their paths.

    The metric-vs-steps figure uses ``eval.json`` when ``fastmaml eval`` has written one, and
    otherwise evaluates ``tasks`` meta-test tasks (without saving them as the run's eval).
    """
    run_dir = Path(run_dir)
    paths = []
    rows = read_metrics(run_dir)
    if not rows:  # checked before plots/ is made: a failed start stays a folder that train --out reuses
        raise CheckpointError(f"{run_dir} has no metrics yet; train it first (fastmaml train ... --out {run_dir})")
    out = plots_folder(run_dir)
    if len(rows) == 1:
        log.warning("%s logged one row (iteration %d): its learning curve is a point; train with --set log_every=N "
                    "(below the iterations) for a curve", run_dir, rows[0]["step"])
    paths.append(plotting.learning_curve(rows, out / "learning_curve.png"))
    eval_path = run_dir / EVAL
    if not has_checkpoint(run_dir):
        warn_no_checkpoint(run_dir)
        if eval_path.is_file():  # the meta-test saved before the checkpoint went: it needs no model
            paths.append(plotting.metric_vs_steps(saved_report(run_dir, rows), out / "metric_vs_steps.png"))
        return paths
    if eval_path.is_file():
        report = saved_report(run_dir, rows)
    else:
        try:
            report = meta_test_report(run_dir, tasks)
        except DataError as error:  # the data set moved: the learning curve above needs none of it
            log.warning("%s: drew the learning curve; the steps figure meta-tests the run (it has no eval.json) "
                        "and needs its data: %s", run_dir, error)
            return paths
    paths.append(plotting.metric_vs_steps(report, out / "metric_vs_steps.png"))
    # the checkpoint the steps figure meta-tested (eval --best: the best one; a stale eval.json: the latest, as
    # saved_report warns); with eval.json, no data set is read
    which = "best" if report.get("checkpoint") == "best" else "checkpoint"
    if which == "best" and not (run_dir / BEST).is_file():
        log.warning("%s meta-tests the best checkpoint, and %s is missing (deleted or moved?): drew the learning "
                    "curve and the steps figure; restore it for the figures that run the model", run_dir / EVAL,
                    run_dir / BEST)
        return paths
    try:
        experiment, maml, _ = load_trained(run_dir, which, data=False)
    except DataError as error:  # a table run's CSV moved: the figures above need none of it
        log.warning("%s: drew the learning curve and the steps figure; the figures that run the model need the "
                    "run's data: %s", run_dir, error)
        return paths
    figures = experiment.extras.get("figures")
    if figures is not None:
        paths.extend(figures(experiment, methods_for(experiment, maml), out))
    return paths


def meta_test_report(run_dir: Path, tasks: int) -> dict:
    """A meta-test of ``tasks`` tasks for the steps figure of a run without eval.json (not saved),
    with a warning where a mean is not finite: ``fastmaml eval`` refuses such a report, and the figure
    would end its curve there without a word."""
    report = evaluate(run_dir, tasks=tasks, save=False)
    try:
        check_finite_report(report)
    except NonFiniteLossError as error:
        log.warning("the steps figure's meta-test (%d tasks, not saved): %s", tasks, error)
    return report


CURVES = ("meta_loss", "return_pre", "return_post")  # drawn by default, when logged, with every val_* metric
X_AXES = ("iteration", "time")


def plot_runs(run_dirs: list[Path], figure: Path, metrics: list[str] | None = None, x: str = "iteration") -> Path:
    """Several runs' learning curves on one figure at ``figure`` (PNG), for ``fastmaml plot RUN ...
    --figure``: by default the meta-loss (supervised runs), the returns before and after adaptation
    (meta-RL) and every validation metric the runs logged; ``metrics`` picks other logged keys.
    Runs of any experiments may share a figure; each is named by its folder (its path where two
    folders share a name)."""
    if figure.suffix.lower() != ".png":
        raise ConfigError(f"--figure {figure}: give a .png path")
    if x not in X_AXES:
        raise ConfigError(f"--x {x}: choose one of {', '.join(X_AXES)}")
    names = [Path(d).resolve().name or str(d) for d in run_dirs]
    runs: dict[str, list[dict]] = {}
    seen: set[Path] = set()
    for run_dir, name in zip(map(Path, run_dirs), names):
        if not run_dir.is_dir():
            raise CheckpointError(f"{run_dir} is not a folder: give run folders made by fastmaml train --out")
        if run_dir.resolve() in seen:
            raise ConfigError(f"{run_dir} is given twice; give each run folder once")
        seen.add(run_dir.resolve())
        rows = read_metrics(run_dir)
        if not rows:
            raise CheckpointError(f"{run_dir} has no metrics yet; train it first (fastmaml train ... --out {run_dir})")
        runs[name if names.count(name) == 1 else str(run_dir)] = rows
    logged = {k for rows in runs.values() for r in rows for k, v in r.items()
              if isinstance(v, (int, float)) and not isinstance(v, bool)} - {"step", "elapsed_s"}
    if metrics:
        missing = [k for k in metrics if k not in logged]
        if missing:
            raise ConfigError(f"--metric {', '.join(missing)}: no run logged it; the runs logged "
                              f"{', '.join(sorted(logged)) or 'no metrics'}")
        keys = list(dict.fromkeys(metrics))
    else:
        keys = [k for k in CURVES if k in logged] + sorted(k for k in logged if k.startswith("val_"))
        if not keys:
            raise ConfigError(f"the runs logged none of {', '.join(CURVES)} or a validation metric; choose "
                              f"with --metric KEY from {', '.join(sorted(logged))}")
    if x == "time":
        untimed = [label for label, rows in runs.items() if any("elapsed_s" not in r for r in rows)]
        if untimed:
            raise ConfigError(f"{', '.join(untimed)} logged no training time (elapsed_s) in some rows; plot them "
                              "against --x iteration")
    blocking = next((p for p in [figure.parent, *figure.parent.parents] if p.exists()), None)
    if blocking is not None and not blocking.is_dir():  # mkdir said "File exists"
        raise ConfigError(f"cannot write --figure {figure}: {blocking} is a file, not a folder; choose another path")
    try:
        figure.parent.mkdir(parents=True, exist_ok=True)
        return plotting.runs_curves(runs, keys, figure, x=x)
    except OSError as error:
        raise ConfigError(f"cannot write --figure {figure} ({error.strerror}); choose a writable folder") from None


def warn_no_checkpoint(run_dir: Path) -> None:
    """The warning of ``plot`` on a run without a checkpoint: it drew the figures that need no model."""
    drew = "the learning curve" + (" and the steps figure of its eval.json" if (run_dir / EVAL).is_file() else "")
    if failed_start(run_dir):  # a run still before its first checkpoint (or one killed there)
        due = first_checkpoint_due(run_dir)
        log.warning("%s has no checkpoint yet%s: drew %s; the figures that meta-test the model come with it", run_dir,
                    f" (the first is due at iteration {due})" if due else "", drew)
    else:
        log.warning("%s has no checkpoint (deleted or moved?): drew %s; restore its %s for the figures that "
                    "meta-test the model", run_dir, drew, CHECKPOINT)


def plots_folder(run_dir: Path) -> Path:
    """``RUN_DIR/plots``, made if absent; CheckpointError if a file has that name."""
    out = Path(run_dir) / PLOTS
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out} is a file, not a folder: fastmaml plot writes its figures into the folder "
                              f"{out}; move the file {PLOTS} away (or rename it), then plot again")
    out.mkdir(exist_ok=True)
    return out


def saved_report(run_dir: Path, rows: list[dict]) -> dict:
    """The run's eval.json (one error if it is damaged), with a warning when the run has trained past
    the iteration it meta-tested (an eval during training; the figure shows that iteration)."""
    report = read_report(run_dir)
    trained = rows[-1].get("step") if rows else None
    best = report.get("checkpoint") == "best"  # eval --best: the best validation checkpoint's, as meant
    if not best and isinstance(trained, int) and isinstance(report.get("step"), int) and report["step"] < trained:
        log.warning("%s meta-tests iteration %d and the run has trained to %d; the steps figure shows %d, a "
                    "figure that runs the model the latest checkpoint (fastmaml eval %s brings them together)",
                    run_dir / EVAL, report["step"], trained, report["step"], run_dir)
    return report
