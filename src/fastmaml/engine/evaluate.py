"""Meta-test evaluation: a metric after 0..N inner steps on held-out tasks, mean ± 95% CI."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from fastmaml.algorithms import MAML
from fastmaml.config import check_task_count, protocol_overrides
from fastmaml.engine import checkpoint
from fastmaml.engine.distributed import check_device, cuda_or_cpu, tf32_mode
from fastmaml.engine.experiment import Experiment, make_maml
from fastmaml.engine.run_dir import (
    build_experiment,
    check_checkpoint,
    checkpoint_file,
    checkpoint_label,
    read_config,
    write_eval,
)
from fastmaml.errors import ConfigError, NonFiniteLossError

EVAL_SEED = 20_170_703  # fixed, so every run of an experiment is scored on the same meta-test tasks
EVAL_CHUNK = 100  # tasks drawn and adapted at once by the meta-test (the task stream depends on it)
EVAL_SPLITS = ("test", "val", "train")


def mean_ci95(values: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and the half-width 1.96·std/√n of its 95% confidence interval, along dim 0."""
    n = values.shape[0]
    std = values.std(dim=0, unbiased=True) if n > 1 else torch.zeros_like(values[0])
    return values.mean(dim=0), 1.96 * std / math.sqrt(n)


# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """The two-sided 95% quantile of Student's t: the table to 30 degrees of freedom, beyond it the
    Cornish-Fisher expansion around the normal's 1.959964 (within 1e-4 of the exact value there)."""
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959964
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def mean_ci95_t(values: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and the half-width of its 95% interval along dim 0 with Student's t (n − 1 degrees of
    freedom): for a few values, one per training seed, where 1.96 would be far too narrow (with 3
    seeds the quantile is 4.30). The half-width is NaN for one value; an inf value gives an inf or
    NaN mean (a diverged seed is not averaged away)."""
    values = values.double()
    n = values.shape[0]
    if n < 2:
        return values.mean(dim=0), torch.full_like(values[0], math.nan)
    return values.mean(dim=0), t975(n - 1) * values.std(dim=0, unbiased=True) / math.sqrt(n)


def paired_differences(metrics: dict[str, Any], metric: str = "return") -> dict[str, tuple[list, list]] | None:
    """The first method minus each other one, task by task, after 0..N steps: ``{method: (mean, ci95)}``.

    ``metrics`` is a report's ``"metrics"`` whose ``metric`` keeps ``per_task`` (lists indexed by the
    number of steps, one value per task, every method on the same tasks, as the meta-RL evaluation
    writes them). What is hard or easy about a task is shared by both sides of a pair and cancels, so
    this interval, not the two separate ones, says whether one method beats the other on these tasks.
    None when a method lacks ``per_task`` (a report written before they were kept) or there is only one.
    """
    if len(metrics) < 2 or any("per_task" not in values.get(metric, {}) for values in metrics.values()):
        return None
    first, *others = metrics
    reference = torch.tensor(metrics[first][metric]["per_task"], dtype=torch.float64)
    differences = {}
    for method in others:
        mean, ci = mean_ci95((reference - torch.tensor(metrics[method][metric]["per_task"], dtype=torch.float64)).T)
        differences[method] = (mean.tolist(), ci.tolist())
    return differences


def shown_steps(steps: int, limit: int = 30) -> list[int]:
    """The numbers of steps a printed table shows out of 0..``steps``: all of them up to ``limit``, else the
    first third of ``limit`` in a row and then about logarithmically spaced ones up to ``steps`` itself
    (a report keeps every step; this only keeps ``fastmaml eval --steps 100000`` readable)."""
    if steps < limit:
        return list(range(steps + 1))
    head = limit // 3 + 1
    tail = limit - head
    spaced = {round((head - 1) * (steps / (head - 1)) ** (i / tail)) for i in range(1, tail + 1)}
    return sorted(set(range(head)) | spaced | {steps})


def metric_names(metrics: dict[str, Any]) -> list[str]:
    """Every metric of a report's ``"metrics"``, in the order its methods list them."""
    names: list[str] = []
    for values in metrics.values():
        names += [name for name in values if name not in names]
    return names


def paired_by_metric(metrics: dict[str, Any]) -> dict[str, dict[str, tuple[list, list]]]:
    """:func:`paired_differences` for every metric that every method keeps per task: ``{metric: {method: (mean, ci95)}}``."""
    return {name: differences for name in metric_names(metrics) if (differences := paired_differences(metrics, name))}


def per_task(values: Tensor) -> list[list[float]]:
    """(tasks, steps + 1) values as lists indexed by the number of steps, one value per task, to 6
    significant digits (for :func:`paired_differences` between methods or runs scored on the same tasks)."""
    return [[float(f"{v:.6g}") for v in row] for row in values.T.tolist()]


def adaptation_curves(
    maml: MAML,
    experiment: Experiment,
    split: str,
    num_tasks: int,
    steps: int,
    generator: torch.Generator,
    chunk: int = EVAL_CHUNK,
    bar: tqdm | None = None,
) -> Tensor:
    """Every metric after 0..steps inner steps on ``num_tasks`` tasks: (num_tasks, steps + 1, metrics).

    ``bar``, a progress bar, advances by the tasks of each chunk."""
    metrics = list(experiment.metrics.values())
    stacked: Callable[[Tensor, Tensor], Tensor] = lambda pred, y: torch.stack([m(pred, y) for m in metrics])  # noqa: E731
    device = next(maml.parameters()).device
    out = []
    done = 0
    with torch.no_grad():
        while done < num_tasks:
            n = min(chunk, num_tasks - done)
            batch = experiment.sample(generator, split, n).to(device)
            out.append(maml.adaptation_curve(batch, steps, stacked).float().cpu())
            done += n
            if bar is not None:
                bar.update(n)
    return torch.cat(out)


def methods_for(experiment: Experiment, maml: MAML) -> dict[str, MAML]:
    """MAML itself, and the pretrained baseline fine-tuned with plain SGD, where the run has one.

    ``experiment.extras["methods"]``, a callable ``(experiment, maml) -> {name: MAML}``, adds an
    experiment's own comparisons (e.g. the table preset's per-task model from scratch).
    """
    methods = {"maml": maml}
    if experiment.baseline is not None:
        methods["pretrained"] = MAML(
            experiment.baseline, experiment.loss_fn, inner_lr=experiment.baseline_lr, strategy=maml.strategy,
            workers=maml.workers,
        )
    if "methods" in experiment.extras:
        methods.update(experiment.extras["methods"](experiment, maml))
    return methods


def load_trained(
    run_dir: Path,
    which: str | int = "checkpoint",
    overrides: list[str] | tuple[str, ...] = (),
    device: str | torch.device = "cpu",
    data: bool = True,
) -> tuple[Experiment, MAML, dict[str, Any]]:
    """Rebuild a run's experiment and MAML wrapper with the weights of its latest (or best) checkpoint,
    or of the snapshot it kept at iteration ``which``
    (``overrides``: meta-test settings changed, as ``fastmaml eval --set``), the model and baseline on
    ``device`` (the CPU unless asked: ``adapt`` feeds them CPU tensors; ``evaluate`` passes
    :func:`eval_device`; ``data=False``: without checking the data set, as ``adapt`` needs none of it)."""
    experiment = build_experiment(run_dir, overrides, data)
    tensors, meta, path = checkpoint.load_latest(checkpoint_file(run_dir, which))
    check_checkpoint(run_dir, meta, path, experiment.name)
    maml = make_maml(experiment)
    checkpoint.load_weights(maml, checkpoint.part(tensors, "maml/"), path)
    maml.to(device)
    if experiment.baseline is not None:
        checkpoint.load_weights(experiment.baseline, checkpoint.part(tensors, "baseline/"), path)
        experiment.baseline.to(device)
    return experiment, maml, meta


def eval_device(config: Any, overrides: list[str] | tuple[str, ...] = ()) -> str:
    """Where ``fastmaml eval`` meta-tests a run: the run's CUDA device (or ``--set device=...``'s)
    where this machine has one, else the CPU, so a run meta-trained on a GPU can be scored on a
    machine without one. A CUDA device asked for with ``--set device=cuda`` on such a machine is an
    error, not a silent fall-back."""
    device = str(getattr(config, "device", "cpu"))
    if any(item.partition("=")[0].strip() == "device" for item in overrides):
        check_device(device)
    return cuda_or_cpu(device)


def evaluate(
    run_dir: str | Path,
    *,
    tasks: int = 600,
    steps: int | None = None,
    seed: int = EVAL_SEED,
    which: str | int = "checkpoint",
    save: bool = True,
    overrides: list[str] | tuple[str, ...] = (),
    split: str = "test",
    progress: bool = False,
    finite: bool = False,
) -> dict[str, Any]:
    """Score a run on ``tasks`` meta-test tasks after 0..steps inner steps, for each method.

    Returns ``{"experiment", "step", "tasks", "steps", "metrics": {method: {metric: {"mean": [...],
    "ci95": [...], "per_task": [[...], ...]}}}}`` with lists indexed by the number of inner steps
    (``per_task``: one list of the tasks' values per step, for paired comparisons); saved to ``RUN_DIR/eval.json``
    unless ``overrides`` (``key=value``, meta-test settings as ``fastmaml eval --set``) changed the
    run's protocol; the report then lists them under ``"overrides"``. ``config.EXECUTION_KEYS``
    (threads, workers, strategy, chunk_size, device, cache_dir; a few-shot run's ``root`` where its loader
    checks the data) change how or where it runs, not the protocol.

    ``split`` picks the tasks: "test" (meta-test, the default), or "val" / "train" to score the
    run on its validation or meta-training tasks (e.g. while a dataset's test images are missing);
    such a report says so under ``"split"`` and is not saved. ``progress`` shows a bar over the tasks
    of every method (on stderr). ``finite`` (the CLI's ``eval``): a NaN or infinite mean is a
    NonFiniteLossError, before anything is saved; studies keep such a result (a divergence they measure).
    """
    run_dir = Path(run_dir)
    check_task_count(tasks)
    if split not in EVAL_SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")
    _, config = read_config(run_dir, overrides)
    if config.threads:
        torch.set_num_threads(config.threads)  # as in training: small models run faster on one thread
    steps = config.eval_steps if steps is None else steps
    if steps < 0:
        raise ConfigError(f"--steps must be >= 0, got {steps}")
    device = eval_device(config, overrides)
    experiment, maml, meta = load_trained(run_dir, which, overrides, device=device)
    results: dict[str, Any] = {}
    methods = methods_for(experiment, maml)
    # on a GPU, the run's TF32 setting (off unless trained or meta-tested with tf32=true), as in training
    with tf32_mode(device, getattr(config, "tf32", False)), tqdm(
            total=tasks * len(methods), disable=not progress, unit="task",
            desc=f"eval {experiment.name}: {tasks} tasks x {len(methods)} methods") as bar:
        for method, wrapper in methods.items():
            generator = torch.Generator().manual_seed(seed)  # the same tasks for every method
            curves = adaptation_curves(wrapper, experiment, split, tasks, steps, generator, bar=bar)
            mean, ci = mean_ci95(curves)
            results[method] = {
                name: {"mean": mean[:, i].tolist(), "ci95": ci[:, i].tolist(), "per_task": per_task(curves[:, :, i])}
                for i, name in enumerate(experiment.metrics)
            }
    report = {
        "experiment": experiment.name,
        **({"model": experiment.extras["model"]} if "model" in experiment.extras else {}),
        "checkpoint": checkpoint_label(which),
        "step": meta["step"],
        "tasks": tasks,
        "steps": steps,
        "seed": seed,
        **({"overrides": changed} if (changed := protocol_overrides(overrides, config)) else {}),
        **({"split": split} if split != "test" else {}),
        **({"source": text} if (text := experiment.extras.get("source", lambda _: "")(split)) else {}),
        # what draws the tasks (tuples as JSON lists): compare pairs only runs whose reports agree on it
        # (a callable where it reads the data: an image-folder run hashes its test images only here)
        **({"task_set": json.loads(json.dumps(drawn() if callable(drawn) else drawn))}
           if (drawn := experiment.extras.get("task_set")) else {}),
        "metrics": results,
    }
    if finite:
        check_finite_report(report, learned_lr=getattr(config, "meta_sgd", False))
    if save and not changed and split == "test":
        write_eval(run_dir, report, which)
    return report


def check_finite_report(report: dict[str, Any], learned_lr: bool = False) -> None:
    """NonFiniteLossError where a meta-test mean is NaN or infinite (an inner learning rate far too
    large): a table of nan, and NaN tokens that are not JSON, would otherwise print and be saved.
    ``learned_lr``: a Meta-SGD run, whose inner learning rates cannot be changed, only the steps."""
    for method, metrics in report["metrics"].items():
        for name, values in metrics.items():
            bad = [(step, v) for step, v in enumerate(values["mean"]) if not math.isfinite(v)]
            if bad:
                step, value = bad[0]
                changed = f" with {', '.join(report['overrides'])}" if report.get("overrides") else ""
                fix = "lower the inner learning rate (e.g. fastmaml eval RUN --set inner_lr=...) or the steps (--steps)"
                if step == 0:  # before any inner step: the weights themselves
                    fix = "the run's weights give it before adapting: meta-test an earlier snapshot or train again"
                elif learned_lr and method == "maml":  # Meta-SGD: its rates are learned, for the training steps
                    fix = (f"meta-test with fewer steps (--steps {step - 1}); this Meta-SGD run's learned inner "
                           "learning rates hold for about as many steps as it trained with" if step > 1 else
                           "this Meta-SGD run's learned inner learning rates diverge in one step: meta-test an "
                           "earlier snapshot (--iteration N) or train again")
                raise NonFiniteLossError(
                    f"meta-testing{changed}, {method}'s {name} became {value} after {step} inner step"
                    f"{'' if step == 1 else 's'}; {fix}")
