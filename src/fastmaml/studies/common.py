"""What every study shares: training through the engine, scoring with 95% CIs, timing, the machine, tables.

A study trains with the engine's :class:`~fastmaml.engine.trainer.Trainer` (the same loop as
``fastmaml train``) and scores with the engine's evaluation, so its numbers are the numbers a user
gets from the CLI. Sinusoid studies write ordinary run folders that ``fastmaml eval`` can read.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fastmaml.algorithms import MAML
from fastmaml.engine.evaluate import adaptation_curves, load_trained, mean_ci95
from fastmaml.engine.experiment import Experiment, get_preset
from fastmaml.engine.run_dir import write_config
from fastmaml.engine.trainer import Trainer, train
from fastmaml.errors import CheckpointError

SCORE_SEED = 20_170_703  # the engine's meta-test seed: every method is scored on the same tasks


@dataclass
class Table:
    """A printed table: a title, column names and rows of already formatted cells."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def add(self, *cells: Any) -> None:
        self.rows.append([fmt(c) for c in cells])

    def render(self) -> str:
        widths = [max(len(str(c)) for c in col) for col in zip(self.columns, *self.rows)]
        line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))  # noqa: E731
        return "\n".join([self.title, line(self.columns), line(["-" * w for w in widths]), *map(line, self.rows)])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Report:
    """What a study returns: tables to print, numbers for the JSON, notes, and the figure it drew."""

    tables: list[Table]
    results: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    figure: Path | None = None


@dataclass(frozen=True)
class Budget:
    """How much a study trains and scores: ``--quick`` (tests, seconds) or full (README numbers)."""

    iterations: int
    tasks: int  # meta-test tasks per score
    meta_batch_size: int = 25
    outer_lr: float = 0.0  # β; 0: the experiment's default
    timing_iterations: int = 200  # meta-updates per timing round (time_meta_steps)
    timing_rounds: int = 5


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def pm(mean: float, ci: float) -> str:
    """``mean ± ci`` with four significant digits."""
    return f"{mean:.4g} ± {ci:.2g}"


def machine() -> dict[str, Any]:
    """The machine a study ran on, for the JSON and the README."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def fresh_dir(path: Path) -> Path:
    """``path`` created empty; a non-empty one is an error, so a study never mixes two runs."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise CheckpointError(f"{path} already holds a study run; choose another --out folder or delete it")
    path.mkdir(parents=True, exist_ok=True)
    return path


def train_sinusoid(run_dir: Path, budget: Budget, **changes: Any) -> tuple[float, float]:
    """Meta-train the sinusoid preset into ``run_dir``; (training seconds, wall seconds incl. set-up).

    ``changes`` are sinusoid config keys (``shots``, ``activation``, ``first_order``, ``seed``, ...).
    The baseline is off unless asked for: it would add its own time to every wall time.
    """
    start = time.perf_counter()
    summary = train(get_preset("sinusoid"), sinusoid_config(budget, **changes), fresh_dir(run_dir), progress=False)
    return summary["elapsed_s"], time.perf_counter() - start


def sinusoid_config(budget: Budget, **changes: Any):
    """The sinusoid preset's config at ``budget`` with ``changes`` (see :func:`train_sinusoid`)."""
    shots = changes.pop("shots", 10)
    changes.setdefault("baseline", False)
    if budget.outer_lr:
        changes.setdefault("outer_lr", budget.outer_lr)
    return get_preset("sinusoid").make_config(
        shots=shots,
        iterations=budget.iterations,
        meta_batch_size=budget.meta_batch_size,
        checkpoint_every=budget.iterations,
        log_every=min(100, budget.iterations),
        **changes,
    )


def fit(experiment: Experiment, run_dir: Path) -> tuple[Trainer, float]:
    """Meta-train a study's own (unregistered) experiment with the engine's loop; (trainer, seconds).

    Build ``experiment`` after ``torch.manual_seed(config.seed)`` so its initial weights are seeded.
    """
    run_dir = fresh_dir(run_dir)
    write_config(run_dir, experiment.name, experiment.config)
    if experiment.config.threads:
        torch.set_num_threads(experiment.config.threads)
    trainer = Trainer(experiment, run_dir)
    start = time.perf_counter()
    trainer.fit(progress=False)
    return trainer, time.perf_counter() - start


def load(run_dir: Path) -> tuple[Experiment, MAML]:
    experiment, maml, _ = load_trained(run_dir)
    return experiment, maml


def score(
    maml: MAML,
    experiment: Experiment,
    tasks: int,
    steps: int,
    *,
    sample: Callable | None = None,
    metrics: dict[str, Callable[[Tensor, Tensor], Tensor]] | None = None,
    seed: int = SCORE_SEED,
    split: str = "test",
    per_task: bool = False,
) -> dict[str, dict[str, Any]]:
    """Each metric after 0..steps inner steps on ``tasks`` meta-test tasks: {metric: {mean, ci95}}
    (``per_task``: also "per_task", a (tasks, steps + 1) tensor, for intervals of other statistics).

    ``sample`` and ``metrics`` replace the experiment's own (e.g. tasks outside the training range).
    """
    changes = {k: v for k, v in (("sample", sample), ("metrics", metrics)) if v is not None}
    scored = dataclasses.replace(experiment, **changes)
    curves = adaptation_curves(maml, scored, split, tasks, steps, torch.Generator().manual_seed(seed))
    mean, ci = mean_ci95(curves)
    return {name: {"mean": mean[:, i].tolist(), "ci95": ci[:, i].tolist(),
                   **({"per_task": curves[:, :, i].double()} if per_task else {})}
            for i, name in enumerate(scored.metrics)}


def ratio_ci95(numerator: Tensor, denominator: Tensor) -> tuple[float, float]:
    """The ratio of two means over the same tasks, mean(N) / mean(D), and the half-width of its 95%
    interval by the delta method: 1.96·std(N_i − R·D_i) / (√n·mean(D)). Dividing the interval of
    mean(N) by mean(D) ignores that mean(D) is estimated too and that N and D move together."""
    n = numerator.shape[0]
    ratio = numerator.mean() / denominator.mean()
    spread = (numerator - ratio * denominator).std(unbiased=True) if n > 1 else torch.zeros(())
    return ratio.item(), (1.96 * spread / (math.sqrt(n) * denominator.mean())).item()


def time_meta_steps(run_dirs: dict[str, Path], iterations: int, rounds: int) -> dict[str, float]:
    """Milliseconds per meta-update of each run's setting, measured in interleaved rounds; the fastest round.

    Training wall times taken one run after another on a shared machine mix in whatever else ran
    meanwhile; interleaving the settings and keeping each one's least-disturbed round compares them
    fairly. A copy of each trained wrapper is updated, so the runs themselves are untouched; each copy
    first takes ``WARMUP_STEPS`` untimed steps, where a compiled meta-loss (``compile``, on for CPU runs
    of 1,000 iterations or more) compiles and checks itself: in a timed round that took 0.45 s once
    against 1.75 ms per later step.
    """
    loaded = {key: load(run_dir) for key, run_dir in run_dirs.items()}
    copies = {}
    for key, (experiment, maml) in loaded.items():
        maml = copy.deepcopy(maml)
        opt = torch.optim.Adam(maml.parameters(), lr=experiment.config.outer_lr)
        generator = torch.Generator().manual_seed(0)
        size = experiment.config.meta_batch_size
        batches = [experiment.sample(generator, "train", size) for _ in range(iterations)]
        copies[key] = (maml, opt, batches)
        _meta_steps(maml, opt, batches[:WARMUP_STEPS])
    best = {key: float("inf") for key in run_dirs}
    for _ in range(rounds):
        for key, (maml, opt, batches) in copies.items():
            start = time.perf_counter()
            _meta_steps(maml, opt, batches)
            best[key] = min(best[key], 1000 * (time.perf_counter() - start) / iterations)
    return best


WARMUP_STEPS = 3  # untimed meta-steps before time_meta_steps' rounds


def _meta_steps(maml: MAML, opt: torch.optim.Optimizer, batches: list) -> None:
    for batch in batches:  # Trainer.meta_step, without logging and checkpoints
        opt.zero_grad(set_to_none=True)
        maml.meta_loss(batch).backward()
        opt.step()


def paired(report_a: dict[str, Any], report_b: dict[str, Any], metric: str, step: int) -> tuple[float, float]:
    """A's metric minus B's after ``step`` inner steps, task by task on the same meta-test tasks (two
    ``evaluate`` reports of runs scored alike): (mean, 95% CI half-width). What makes a task hard is
    shared by both sides and cancels; the training seed's own spread is not in it."""
    a = torch.tensor(report_a["metrics"]["maml"][metric]["per_task"][step], dtype=torch.float64)
    b = torch.tensor(report_b["metrics"]["maml"][metric]["per_task"][step], dtype=torch.float64)
    mean, ci = mean_ci95(a - b)
    return mean.item(), ci.item()


def per_layer_stats(tensors: dict[str, Tensor]) -> dict[str, dict[str, float]]:
    """Mean, std, min and max of each tensor (e.g. Meta-SGD's learned α per layer)."""
    out = {}
    for name, t in tensors.items():
        t = t.detach().float().flatten()
        out[name] = {
            "mean": t.mean().item(),
            "std": t.std().item() if t.numel() > 1 else 0.0,
            "min": t.min().item(),
            "max": t.max().item(),
            "negative": (t < 0).float().mean().item(),
            "numel": t.numel(),
        }
    return out


def seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def bins(edges: Sequence[float]) -> list[tuple[float, float]]:
    return list(zip(edges[:-1], edges[1:]))
