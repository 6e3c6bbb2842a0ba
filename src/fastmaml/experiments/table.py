"""Few-shot regression on a user's table (``fastmaml train table --csv FILE --task-column COL --target COL``).

Each value of the task column is a task; tasks are split into meta-train / (val) / meta-test by a
seeded shuffle; features and target are standardised with meta-train statistics (see
:mod:`fastmaml.tasks.table`). The model is an MLP. Evaluation on held-out tasks with K support rows
compares three methods after 0..N SGD steps on the support rows:

- ``maml``: the meta-learned initialisation, adapted with α = ``inner_lr``;
- ``pretrained``: one network trained on all meta-training rows jointly (the engine's baseline),
  fine-tuned with SGD at ``baseline_lr``;
- ``scratch``: the same MLP from a fresh random initialisation, trained on the K rows alone with
  SGD at ``scratch_lr`` (a per-task model).

The MSE is in standardised target units (divide by 1 for "as good as predicting the meta-train
mean"; multiply by ``target_std``² for the target's own units). ``fastmaml adapt RUN_DIR --support
FILE --predict FILE`` adapts the meta-trained model to a new task and writes predictions in the
target's units. The run rebuilds its encoding from the training CSV, so keep that file in place.
"""

from __future__ import annotations

import csv
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from fastmaml.algorithms import MAML
from fastmaml.config import TrainConfig
from fastmaml.engine.experiment import Experiment, Preset, register
from fastmaml.errors import ConfigError, DataError
from fastmaml.models.mlp import MLP
from fastmaml.tasks.table import TableSplit, load_table, read_csv


@dataclass
class TableConfig(TrainConfig):
    csv: str = ""
    task_column: str = ""
    target: str = ""
    features: tuple[str, ...] = ()  # empty: every column except the task and target columns
    categorical: tuple[str, ...] = ()  # one-hot even if the values look numeric
    shots: int = 5
    queries: int = 10
    eval_queries: int = 20  # query rows per held-out task at evaluation (drawn with replacement if fewer)
    test_fraction: float = 0.2
    val_fraction: float = 0.0
    hidden: tuple[int, ...] = (40, 40)
    activation: str = "relu"
    inner_lr: float = 0.1
    meta_batch_size: int = 10
    iterations: int = 5_000
    checkpoint_every: int = 1_000
    baseline: bool = True
    baseline_lr: float = 0.1
    scratch_lr: float = 0.1
    threads: int = 1  # small MLPs: one thread is fastest

    def validate(self) -> None:
        super().validate()
        if not (self.csv and self.task_column and self.target):
            raise ConfigError("the table preset needs --csv FILE --task-column COL --target COL")
        for key in ("shots", "queries", "eval_queries"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not 0 < self.test_fraction < 1 or not 0 <= self.val_fraction < 1 - self.test_fraction:
            raise ConfigError("test_fraction must be in (0, 1) and val_fraction in [0, 1 - test_fraction)")
        if self.val_every > 0 and self.val_fraction == 0:
            raise ConfigError("val_every needs validation tasks: set val_fraction, e.g. --set val_fraction=0.1")
        for key in ("baseline_lr", "scratch_lr"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key} must be > 0, got {getattr(self, key)}")
        load_split(self)  # a bad CSV fails here, before a run folder is created


def _names(value) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(value)


def make_config(**changes) -> TableConfig:
    """CLI shorthand: ``csv`` becomes an absolute path (eval and adapt may run elsewhere)."""
    if changes.get("csv"):
        changes["csv"] = os.path.abspath(changes["csv"])
    for key in ("features", "categorical"):
        if key in changes:
            changes[key] = _names(changes[key])
    return TableConfig(**changes)


def load_split(config: TableConfig) -> TableSplit:
    """The run's table, split and encoded (cached while the file is unchanged: validate and build share it)."""
    path = Path(config.csv)
    if not path.is_file():
        raise DataError(f"CSV file {config.csv} not found; pass the path of an existing file (a trained run needs "
                        "its training CSV in place to rebuild its feature encoding)")
    stat = path.stat()
    return _load_split(config.csv, stat.st_mtime_ns, stat.st_size, config.task_column, config.target,
                       config.features, config.categorical, config.shots, config.test_fraction,
                       config.val_fraction, config.seed)


@functools.lru_cache(maxsize=4)
def _load_split(csv_path, _mtime, _size, task_column, target, features, categorical, shots, test_fraction,
                val_fraction, seed) -> TableSplit:
    return load_table(csv_path, task_column, target, features, categorical, shots=shots,
                      test_fraction=test_fraction, val_fraction=val_fraction, seed=seed)


def build(config: TableConfig) -> Experiment:
    config.validate()
    split = load_split(config)
    width = split.encoder.width

    def sample(generator: torch.Generator, name: str, num_tasks: int):
        queries = config.queries if name == "train" else config.eval_queries
        return split.tasks[name].sample(generator, num_tasks, config.shots, queries)

    def scratch(experiment: Experiment, maml: MAML) -> dict[str, MAML]:
        """A per-task model: the same MLP from a fresh (seeded) initialisation, trained on K rows alone."""
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(config.seed + 1)
        model = MLP(width, 1, config.hidden, config.activation).to(next(maml.parameters()).device)
        torch.random.set_rng_state(generator_state)
        return {"scratch": MAML(model, F.mse_loss, inner_lr=config.scratch_lr, strategy=maml.strategy)}

    return Experiment(
        name="table",
        config=config,
        model=MLP(width, 1, config.hidden, config.activation),
        loss_fn=F.mse_loss,
        sample=sample,
        metrics={"mse": F.mse_loss},
        baseline=MLP(width, 1, config.hidden, config.activation) if config.baseline else None,
        baseline_lr=config.baseline_lr,
        extras={"table": split, "methods": scratch},
    )


PRESET = register(
    Preset(
        name="table",
        config_cls=TableConfig,
        make_config=make_config,
        build=build,
        description="few-shot regression on your CSV: --csv FILE --task-column COL --target COL [--features A,B]",
    )
)


def adapt_csv(run_dir: str | Path, support: str | Path, predict: str | Path, out: str | Path,
              steps: int | None = None) -> str:
    """Adapt a table run to a new task's ``support`` rows, predict the ``predict`` rows, write ``out``.

    ``out`` gets the predict rows with a ``prediction`` column (the target's units). Returns a
    one-line summary; with the target present in ``predict`` it includes the MSE before and after.
    """
    from fastmaml.engine.evaluate import load_trained
    from fastmaml.engine.run_dir import read_config

    preset, config = read_config(Path(run_dir))
    if preset.name != "table":
        raise ConfigError(f"adapt reads CSV rows, so it needs a table run; {run_dir} is a {preset.name!r} run")
    steps = config.eval_steps if steps is None else steps
    if steps < 0:
        raise ConfigError(f"--steps must be >= 0, got {steps}")
    experiment, maml, _ = load_trained(Path(run_dir))
    encoder = experiment.extras["table"].encoder
    support_table, predict_table = read_csv(support), read_csv(predict)
    support_table.require([encoder.target])
    sx, sy, px = encoder.encode_x(support_table), encoder.encode_y(support_table), encoder.encode_x(predict_table)
    adapted = maml.adapt(sx, sy, steps=steps, first_order=True)
    with torch.no_grad():
        prediction = encoder.decode_y(maml(px, adapted)).view(-1)
        before = encoder.decode_y(maml(px)).view(-1)
    column = "prediction" if "prediction" not in predict_table.header else f"{encoder.target}_prediction"
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([*predict_table.header, column])
            for row, value in zip(predict_table.rows, prediction.tolist()):
                writer.writerow([*row, f"{value:.6g}"])
    except OSError as error:
        raise DataError(f"cannot write {out} ({error.strerror}); choose a writable --out") from None
    summary = (f"adapted to {len(support_table.rows)} support rows with {steps} steps; wrote "
               f"{len(predict_table.rows)} predictions to {out}")
    if encoder.target in predict_table.header:
        truth = encoder.decode_y(encoder.encode_y(predict_table)).view(-1)
        mse = lambda p: ((p - truth) ** 2).mean().item()  # noqa: E731
        summary += f"; MSE on those rows {mse(prediction):.4g} ({mse(before):.4g} before adapting)"
    return summary
