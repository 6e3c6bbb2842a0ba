"""Sinusoid regression as in the paper (section 5.1) and its pretrained-then-fine-tuned baseline.

MLP 1-40-40-1 ReLU, K = 5 or 10 support points and K query points per task (as the original
code), MSE, α = 0.01, one inner step at meta-train, Adam β = 0.001, meta-batch 25, 70,000
iterations. The baseline network is trained on the same tasks jointly (support and query points,
no adaptation) for the same number of iterations and fine-tuned with SGD at meta-test time with
step 0.02 for K = 10 and 0.01 for K = 5, the values the paper reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from fastmaml.config import TrainConfig, check_hidden
from fastmaml.engine.experiment import Experiment, Preset, register
from fastmaml.errors import ConfigError, DataError
from fastmaml.models.mlp import MLP, check_activation
from fastmaml.tasks.sinusoid import SinusoidTasks, evaluate


@dataclass
class SinusoidConfig(TrainConfig):
    shots: int = 10
    queries: int = 10  # query points per task at meta-train (K, as the original code)
    eval_queries: int = 100  # query points per task at evaluation: a less noisy MSE per task
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, 3.141592653589793)
    x_range: tuple[float, float] = (-5.0, 5.0)
    hidden: tuple[int, ...] = (40, 40)
    activation: str = "relu"
    baseline: bool = True
    baseline_lr: float = 0.02
    threads: int = 1  # a 40-40 MLP is too small for intra-op threads: 1 thread measured 1.3x-9x faster

    EVAL_KEYS: ClassVar[tuple[str, ...]] = TrainConfig.EVAL_KEYS + ("eval_queries", "baseline_lr")

    def validate(self, data: bool = True) -> None:
        super().validate(data)
        check_hidden(self.hidden)
        check_activation(self.activation)
        for key in ("shots", "queries", "eval_queries"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("amplitude", "phase", "x_range"):
            low, high = getattr(self, key)
            if not low < high:
                raise ConfigError(f"{key} must be an interval low,high with low < high, got {low},{high}")
        if self.baseline and not self.baseline_lr > 0:
            raise ConfigError(f"baseline_lr must be > 0, got {self.baseline_lr}")


FLOAT32_MAX = torch.finfo(torch.float32).max


def make_config(shots: int = 10, **changes) -> SinusoidConfig:
    """The paper's settings for K = ``shots``: K query points, the baseline's fine-tuning step 0.02
    (K >= 10) or 0.01; ``changes`` (``queries`` too) on top."""
    changes.setdefault("queries", shots)
    changes.setdefault("baseline_lr", 0.02 if shots >= 10 else 0.01)
    return SinusoidConfig(shots=shots, **changes)


def build(config: SinusoidConfig) -> Experiment:
    tasks = SinusoidTasks(config.amplitude, config.phase, config.x_range)

    def sample(generator: torch.Generator, split: str, num_tasks: int):
        queries = config.queries if split == "train" else config.eval_queries
        return tasks.sample(generator, num_tasks, config.shots, queries)[0]

    model = MLP(1, 1, config.hidden, config.activation)
    baseline = MLP(1, 1, config.hidden, config.activation) if config.baseline else None
    return Experiment(
        name="sinusoid",
        config=config,
        model=model,
        loss_fn=F.mse_loss,
        sample=sample,
        metrics={"mse": F.mse_loss},
        baseline=baseline,
        baseline_lr=config.baseline_lr,
        extras={"tasks": tasks, "figures": adaptation_figure,
                # what draws the meta-test tasks: compare pairs only runs that agree on it
                "task_set": {"shots": config.shots, "eval_queries": config.eval_queries,
                             "amplitude": config.amplitude, "phase": config.phase, "x_range": config.x_range}},
    )


PRESET = register(
    Preset(
        name="sinusoid",
        config_cls=SinusoidConfig,
        make_config=make_config,
        build=build,
        description="sinusoid regression, K=5 or 10 (paper section 5.1)",
    )
)


def adaptation_figure(experiment: Experiment, methods: dict, out: Path, seed: int = 3) -> list[Path]:
    """The paper's Figure 2 for one meta-test task: fits after 0, 1 and 10 steps, per method."""
    from fastmaml import plotting

    config = experiment.config
    tasks: SinusoidTasks = experiment.extras["tasks"]
    generator = torch.Generator().manual_seed(seed)
    candidates, amps, phases = tasks.sample(generator, 20, config.shots, 1)
    pick = (amps - 0.75 * config.amplitude[1]).abs().argmin()  # a task with a clearly visible amplitude
    batch, amp, phase = candidates.slice(pick, pick + 1), amps[pick : pick + 1], phases[pick : pick + 1]
    grid = torch.linspace(*config.x_range, 200).view(1, -1, 1)
    curves = {}
    for method, maml in methods.items():
        device = next(maml.parameters()).device
        sx, sy = batch.support_x[0].to(device), batch.support_y[0].to(device)
        predictions = {}
        for steps in (0, 1, 10):
            with torch.no_grad():
                adapted = maml.adapt(sx, sy, steps=steps, first_order=True)
                predictions[steps] = maml(grid[0].to(device), adapted).cpu().view(-1)
        curves[method] = {
            "x": grid.view(-1),
            "truth": evaluate(grid, amp, phase).view(-1),
            "support_x": batch.support_x.view(-1),
            "support_y": batch.support_y.view(-1),
            "predictions": predictions,
        }
    return [plotting.sinusoid_adaptation(curves, out / "adaptation.png")]


def adapt_points(
    run_dir: str | Path,
    support: str | Path,
    predict: str | Path,
    out: str | Path,
    steps: int | None = None,
    which: str | int = "checkpoint",
    overrides: list[str] | tuple[str, ...] = (),
) -> str:
    """``fastmaml adapt`` for a sinusoid run: adapt to the ``x,y`` rows of ``support``, predict ``predict``'s x.

    ``out`` gets ``predict``'s rows plus a ``prediction`` column; where ``predict`` has ``y`` values
    the summary gives the MSE before and after adapting on the rows that have one (a ``y`` column
    left empty scores nothing). Returns that summary.
    ``overrides``: meta-test settings changed (``key=value``, e.g. ``inner_lr=0.005``).
    """
    from fastmaml.engine.evaluate import load_trained
    from fastmaml.experiments.table import check_adapted, counted, number_text, output_columns, scored, write_csv
    from fastmaml.tasks.table import is_missing, read_csv

    experiment, maml, _ = load_trained(Path(run_dir), which, overrides)
    steps = experiment.config.eval_steps if steps is None else int(steps)
    if steps < 0:
        raise ConfigError(f"--steps must be >= 0, got {steps}")
    support_table, predict_table = read_csv(support), read_csv(predict)
    support_table.require(["x", "y"])
    predict_table.require(["x"])

    def numbers(table, column: str):
        values = []
        for row, text in enumerate(table.column(column)):
            line = table.line(row)
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise DataError(f"{table.path}, line {line}, column {column!r}: {text!r} is not a finite number; "
                                "fix or drop that row")
            if abs(value) > FLOAT32_MAX:  # inf in the float32 tensor: a NaN prediction with exit 0 before
                raise DataError(f"{table.path}, line {line}, column {column!r}: {text!r} is too large for float32 "
                                f"(|value| above {FLOAT32_MAX:.3g}); fix or drop that row")
            values.append(value)
        return torch.tensor(values).view(-1, 1)

    sx, sy, px = numbers(support_table, "x"), numbers(support_table, "y"), numbers(predict_table, "x")
    adapted = maml.adapt(sx, sy, steps=steps, first_order=True)
    check_adapted(adapted, steps, maml)
    with torch.no_grad():
        after, before = maml(px, adapted).view(-1), maml(px).view(-1)
    [column] = output_columns(predict_table, "y", ["prediction"])
    write_csv(Path(out), [*predict_table.header, column],
              [[*row, number_text(value)] for row, value in zip(predict_table.rows, after.tolist())])
    summary = (f"adapted to {counted(len(support_table.rows), 'support point')} with {counted(steps, 'step')}; wrote "
               f"{counted(len(predict_table.rows), 'prediction')} to {out}")
    # points to predict usually have y empty (or no y column): only the points with a y are scored
    known = [i for i, text in enumerate(predict_table.column("y")) if not is_missing(text, numeric=True)] \
        if "y" in predict_table.header else []
    if known:
        truth = numbers(predict_table.subset(known), "y").view(-1)
        on = scored(known, len(predict_table.rows), "point", "y")
        summary += (f"; MSE on {on} {F.mse_loss(after[known], truth).item():.4g} "
                    f"({F.mse_loss(before[known], truth).item():.4g} before adapting)")
    return summary
