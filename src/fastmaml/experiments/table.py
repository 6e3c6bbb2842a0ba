"""Few-shot regression or classification on a user's table (``fastmaml train table --csv FILE
--task-column COL --target COL``).

Each value of the task column is a task; tasks are split into meta-train / (val) / meta-test by a
seeded shuffle; features (and a numeric target) are standardised with meta-train statistics (see
:mod:`fastmaml.tasks.table`). A numeric target is regression (MSE); a text target is classification
over the labels of the meta-training tasks (one logit per label, cross-entropy, accuracy); force
either with ``task_type``. The model is an MLP. Evaluation on held-out tasks with K support rows
(drawn uniformly from the task's rows, not stratified by label) compares three methods after 0..N
SGD steps on the support rows:

- ``maml``: the meta-learned initialisation, adapted with α = ``inner_lr``;
- ``pretrained``: one network trained on all meta-training rows jointly (the engine's baseline),
  fine-tuned with SGD at ``baseline_lr``;
- ``scratch``: the same MLP from a fresh random initialisation, trained on the K rows alone with
  SGD at ``scratch_lr`` (a per-task model).

Regression MSE is in standardised target units (1 is "as good as predicting the meta-train mean";
multiply by ``target_std``² for the target's own units). Classification reports accuracy and the
cross-entropy loss. ``fastmaml adapt RUN_DIR --support FILE --predict FILE`` adapts the meta-trained
model to a new task and writes predictions (regression: in the target's units; classification: the
label and one probability column per label).

The run rebuilds its split and encoding from the training CSV at eval and adapt, so the file must
stay as it was: its sha256 is recorded at training time (``csv_sha256``), and a missing or changed
file is a DataError. ``fastmaml adapt --csv NEW_PATH`` accepts a moved copy whose sha256 matches.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from fastmaml.algorithms import MAML
from fastmaml.config import TrainConfig, apply_eval_overrides, check_hidden
from fastmaml.engine import checkpoint
from fastmaml.engine.experiment import Experiment, Preset, register
from fastmaml.errors import ConfigError, DataError, NonFiniteLossError
from fastmaml.models.mlp import MLP, check_activation
from fastmaml.tasks.table import TASK_TYPES, Encoder, Table, TableSplit, load_table, missing_csv, read_csv


@dataclass
class TableConfig(TrainConfig):
    csv: str = ""
    task_column: str = ""
    target: str = ""
    task_type: str = "auto"  # auto (numeric target: regression, text: classification) | regression | classification
    csv_sha256: str = ""  # the CSV's content, recorded at training; eval and adapt refuse a changed file
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

    EVAL_KEYS: ClassVar[tuple[str, ...]] = TrainConfig.EVAL_KEYS + ("eval_queries", "baseline_lr", "scratch_lr")

    def validate(self, data: bool = True) -> None:
        super().validate(data)
        check_hidden(self.hidden)
        check_activation(self.activation)
        if not (self.csv and self.task_column and self.target):
            raise ConfigError("the table preset needs --csv FILE --task-column COL --target COL")
        if self.task_type not in TASK_TYPES:
            raise ConfigError(f"task_type must be one of {', '.join(TASK_TYPES)}, got {self.task_type!r}")
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
        if data:
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


def fingerprint(path: str | Path) -> str:
    """The sha256 of the file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


RELOCATE = "or, for fastmaml adapt, pass the original's new location with --csv NEW_PATH"


def load_split(config: TableConfig) -> TableSplit:
    """The run's table, split and encoded; DataError if the file is gone or is not the one it was trained on.

    Cached by content (validate and build share one read).
    """
    path = Path(config.csv)
    recorded = config.csv_sha256
    if not path.is_file():
        if recorded:
            raise DataError(f"CSV file {config.csv} not found: this run was trained on it (sha256 {recorded[:16]}...) "
                            f"and rebuilds its split and encoding from it; restore it there, {RELOCATE}")
        raise DataError(f"{missing_csv(config.csv)} (a trained run needs its training CSV in place to rebuild "
                        "its feature encoding)")
    try:
        actual = fingerprint(path)
    except OSError as error:
        raise DataError(f"cannot read {config.csv} ({error.strerror}); check its permissions") from None
    if recorded and actual != recorded:
        raise DataError(f"{config.csv} has changed since this run was trained on it (sha256 now {actual[:16]}..., was "
                        f"{recorded[:16]}...): its split and encoding would not match the weights; restore the original "
                        f"file, {RELOCATE}")
    return _load_split(config.csv, actual, config.task_column, config.target, config.features, config.categorical,
                       config.shots, config.test_fraction, config.val_fraction, config.seed, config.task_type)


@functools.lru_cache(maxsize=4)
def _load_split(csv_path, _sha256, task_column, target, features, categorical, shots, test_fraction,
                val_fraction, seed, task_type) -> TableSplit:
    return load_table(csv_path, task_column, target, features, categorical, shots=shots,
                      test_fraction=test_fraction, val_fraction=val_fraction, seed=seed, task_type=task_type)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose highest logit is their label."""
    return (logits.argmax(-1) == labels).float().mean()


def build(config: TableConfig) -> Experiment:
    config.validate()
    split = load_split(config)
    width, outputs = split.encoder.width, split.encoder.outputs
    loss_fn = F.cross_entropy if split.encoder.classification else F.mse_loss
    metrics = {"accuracy": accuracy, "loss": F.cross_entropy} if split.encoder.classification else {"mse": F.mse_loss}

    def sample(generator: torch.Generator, name: str, num_tasks: int):
        if name not in split.tasks or not split.tasks[name].names:
            raise ConfigError(f"this run has no {name} tasks (set val_fraction when training to hold some out)")
        queries = config.queries if name == "train" else config.eval_queries
        return split.tasks[name].sample(generator, num_tasks, config.shots, queries)

    def scratch(experiment: Experiment, maml: MAML) -> dict[str, MAML]:
        """A per-task model: the same MLP from a fresh (seeded) initialisation, trained on K rows alone."""
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(config.seed + 1)
        model = MLP(width, outputs, config.hidden, config.activation).to(next(maml.parameters()).device)
        torch.random.set_rng_state(generator_state)
        return {"scratch": MAML(model, loss_fn, inner_lr=config.scratch_lr, strategy=maml.strategy)}

    def source(name: str) -> str:
        """What the tasks of split ``name`` are drawn from: a few held-out tasks make a narrow CI misleading."""
        tasks = split.tasks.get(name)
        if tasks is None or not tasks.names:
            return ""
        rows = [len(y) for y in tasks.y]
        queries = config.queries if name == "train" else config.eval_queries
        short = sum(r - config.shots < queries for r in rows)
        listed = ", ".join(tasks.names[:5]) + (", ..." if len(tasks.names) > 5 else "")
        text = (f"drawn from {len(tasks.names)} {'held-out ' if name != 'train' else ''}value(s) of "
                f"{config.task_column!r} ({listed}), {min(rows)}-{max(rows)} rows each")
        if short:
            text += f"; {short} of them have fewer than K + {queries} rows, so their query rows repeat"
        if not split.encoder.classification:
            text += f"; mse of {config.target!r} standardised with the meta-training rows' mean and std"
        return text

    return Experiment(
        name="table",
        config=config,
        model=MLP(width, outputs, config.hidden, config.activation),
        loss_fn=loss_fn,
        sample=sample,
        metrics=metrics,
        higher_is_better=split.encoder.classification,
        baseline=MLP(width, outputs, config.hidden, config.activation) if config.baseline else None,
        baseline_lr=config.baseline_lr,
        extras={"table": split, "methods": scratch, "source": source,
                # what draws the meta-test tasks (the held-out tasks come from the training seed): compare
                # pairs only runs that agree on it; the features may differ (same tasks, other inputs)
                "task_set": {"csv_sha256": config.csv_sha256, "task_column": config.task_column,
                             "target": config.target, "shots": config.shots, "eval_queries": config.eval_queries,
                             "test_fraction": config.test_fraction, "val_fraction": config.val_fraction,
                             "seed": config.seed}},
    )


def train(preset: Preset, config: TableConfig, run_dir: str | Path, *, resume: bool = False,
          progress: bool = True) -> dict:
    """The engine's training loop, after recording the CSV's absolute path and sha256 in a new run's config."""
    from fastmaml.engine.trainer import train as engine_train

    if not resume:
        path = os.path.abspath(config.csv)
        if not Path(path).is_file():
            raise DataError(missing_csv(config.csv))
        config = dataclasses.replace(config, csv=path, csv_sha256=config.csv_sha256 or fingerprint(path))
    return engine_train(preset, config, run_dir, resume=resume, progress=progress)


PRESET = register(
    Preset(
        name="table",
        config_cls=TableConfig,
        make_config=make_config,
        build=build,
        description="few-shot regression or classification on your CSV: --csv FILE --task-column COL --target COL "
        "[--features A,B]",
        train=train,
    )
)


def adapt_csv(run_dir: str | Path, support: str | Path, predict: str | Path, out: str | Path,
              steps: int | None = None, csv_path: str | Path | None = None, which: str | int = "checkpoint",
              overrides: list[str] | tuple[str, ...] = ()) -> str:
    """Adapt a table run to a new task's ``support`` rows, predict the ``predict`` rows, write ``out``.

    ``out`` gets the predict rows plus, for regression, a ``prediction`` column (the target's units);
    for classification, a ``prediction`` column (the label) and a ``p_LABEL`` column per label
    (probabilities). Returns a one-line summary; where ``predict`` has target values it includes the
    MSE (or accuracy) before and after, on the rows that have one (a target column left empty, the
    usual file of rows to predict, gives no score; one filled in part scores the filled rows and says
    how many). ``csv_path``: the training CSV's new location, accepted
    only when its sha256 is the one recorded at training time. ``which``: "checkpoint" (the latest),
    "best" (the best validation checkpoint) or an iteration whose snapshot the run kept.
    ``overrides``: meta-test settings changed (``key=value``, e.g. ``inner_lr=0.005``).
    """
    from fastmaml.engine.experiment import make_maml
    from fastmaml.engine.run_dir import check_checkpoint, checkpoint_file, read_config

    run_dir = Path(run_dir)
    preset, config = read_config(run_dir)
    if preset.name != "table":
        raise ConfigError(f"adapt needs a table or sinusoid run (CSV rows), a few-shot image run (class folders) "
                          "or an rl run (--goal); "
                          f"{run_dir} is a {preset.name!r} run")
    steps = config.eval_steps if steps is None else steps
    if steps < 0:
        raise ConfigError(f"--steps must be >= 0, got {steps}")
    if csv_path is not None:
        config = dataclasses.replace(config, csv=relocated(config, csv_path))
    if overrides:
        config = apply_eval_overrides(config, list(overrides))
    experiment = build(config)
    tensors, meta, path = checkpoint.load_latest(checkpoint_file(run_dir, which))
    check_checkpoint(run_dir, meta, path, experiment.name)
    maml = make_maml(experiment)
    checkpoint.load_weights(maml, checkpoint.part(tensors, "maml/"), path)
    encoder: Encoder = experiment.extras["table"].encoder
    support_table, predict_table = read_csv(support), read_csv(predict)
    support_table.require([encoder.target])
    sx, sy = encoder.encode_x(support_table, new=True), encoder.encode_y(support_table, new=True)
    px = encoder.encode_x(predict_table, new=True)
    # rows to predict usually have the target column empty (or absent): only rows with a target are scored
    known = encoder.known_target(predict_table) if encoder.target in predict_table.header else []
    truth = encoder.encode_y(predict_table.subset(known), new=True) if known else None
    adapted = maml.adapt(sx, sy, steps=steps, first_order=True)
    check_adapted(adapted, steps, maml)
    with torch.no_grad():
        after, before = maml(px, adapted), maml(px)
    summary = (f"adapted to {counted(len(support_table.rows), 'support row')} with {counted(steps, 'step')}; wrote "
               f"{counted(len(predict_table.rows), 'prediction')} to {out}")
    on = scored(known, len(predict_table.rows), "row", repr(encoder.target))
    if encoder.classification:
        probabilities = after.softmax(-1)
        labels = encoder.decode_labels(probabilities.argmax(-1))
        names = output_columns(predict_table, encoder.target, ["prediction", *(f"p_{c}" for c in encoder.classes)])
        cells = [[label, *(f"{p:.6g}" for p in row)] for label, row in zip(labels, probabilities.tolist())]
        if truth is not None:
            accuracy_of = lambda logits: accuracy(logits[known], truth).item()  # noqa: E731
            summary += f"; accuracy on {on} {accuracy_of(after):.4g} ({accuracy_of(before):.4g} before adapting)"
    else:
        prediction = encoder.decode_y(after).view(-1)
        names = output_columns(predict_table, encoder.target, ["prediction"])
        cells = [[number_text(value)] for value in prediction.tolist()]
        if truth is not None:
            truth = encoder.decode_y(truth).view(-1)
            mse = lambda p: ((p[known] - truth) ** 2).mean().item()  # noqa: E731
            summary += (f"; MSE on {on} {mse(prediction):.4g} "
                        f"({mse(encoder.decode_y(before).view(-1)):.4g} before adapting; in {encoder.target!r}'s own "
                        "units squared, where fastmaml eval reports the standardised target's)")
    write_csv(Path(out), [*predict_table.header, *names], [[*row, *c] for row, c in zip(predict_table.rows, cells)])
    return summary


def relocated(config: TableConfig, csv_path: str | Path) -> str:
    """``csv_path`` (absolute) if it holds exactly the run's training CSV; DataError otherwise."""
    path = Path(csv_path)
    if not config.csv_sha256:
        raise DataError(f"this run recorded no sha256 of its CSV (it predates CSV fingerprints), so --csv {path} "
                        f"cannot be checked; restore the file at {config.csv} instead")
    if not path.is_file():
        raise DataError(f"--csv {path}: file not found; pass the path of a copy of {config.csv}")
    actual = fingerprint(path)
    if actual != config.csv_sha256:
        raise DataError(f"--csv {path} is not the file this run was trained on (sha256 {actual[:16]}..., the run's "
                        f"{config.csv_sha256[:16]}...); pass an unchanged copy of {config.csv}")
    return os.path.abspath(path)


def output_columns(table: Table, target: str, names: list[str]) -> list[str]:
    """The columns adapt adds to the predict file: each of ``names``, or ``TARGET_name`` where the file
    has a column called ``name``, then ``TARGET_name_2``, ``_3``, ... until the name is new (adapt run
    on its own output wrote two columns of one name, which the next read refused)."""
    taken, chosen = set(table.header), []
    for name in names:
        pick, n = name if name not in taken else f"{target}_{name}", 1
        while pick in taken:
            n += 1
            pick = f"{target}_{name}_{n}"
        taken.add(pick)
        chosen.append(pick)
    return chosen


def number_text(value: float) -> str:
    """A prediction as written to a CSV: 9 significant digits, float32's round trip (6 wrote
    1000112.276 as 1.00011e+06)."""
    return f"{value:.9g}"


def check_adapted(adapted: dict[str, torch.Tensor], steps: int, maml: Any) -> None:
    """NonFiniteLossError, before anything is written, where adapting made a weight inf or NaN (an
    ``adapt --set inner_lr`` far too large): predictions from it would all be NaN."""
    if all(bool(torch.isfinite(p).all()) for p in adapted.values()):
        return
    lr = "its learned inner learning rates" if maml.meta_sgd else f"inner_lr {maml.inner_lr:g}"
    raise NonFiniteLossError(f"adapting for {steps} steps at {lr} made the weights inf or NaN; lower --set inner_lr "
                             "or --steps (nothing was written)")


def counted(n: int, noun: str) -> str:
    """``1 support row``, ``3 support rows``: the summaries' counts (the noun's plural takes an s)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def scored(known: list[int], total: int, noun: str, target: str) -> str:
    """Which rows an adapt summary's score is on: all of them, or the ``known`` ones with a target."""
    return f"those {noun}s" if len(known) == total else f"the {len(known)} of {total} {noun}s with a known {target}"


def write_csv(out: Path, header: list[str], rows: list[list[str]]) -> None:
    """Write ``out`` as UTF-8 (as every CSV is read; the locale's encoding failed on a non-ASCII cell
    after writing part of the file), replaced atomically, so a failure leaves no partial file."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.replace_atomically(out, text.getvalue().encode("utf-8"))
    except OSError as error:
        raise DataError(f"cannot write {out} ({error.strerror}); choose a writable --out") from None
