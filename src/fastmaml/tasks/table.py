"""Few-shot regression or classification on a user's own table: each value of a task column is a task.

    rows of FILE.csv  ->  tasks (one per value of ``task_column``)  ->  meta-train / val / test by task
    features          ->  numeric: standardised;  categorical: one-hot   (statistics: meta-train tasks only)
    target, numeric   ->  regression: standardised the same way (``Encoder.decode_y`` maps predictions back)
    target, text      ->  classification over the labels of the meta-training rows (``Encoder.classes``)

``task_type`` "auto" decides from the target column: every value a number -> regression, none ->
classification, a mix -> an error (force either with ``task_type``). Rows of held-out tasks whose
label never occurs in a meta-training task cannot be scored by a model with one logit per known
label: they are left out with a warning (and a task left with fewer than K + 1 rows with them).

A task batch holds K support and Q query rows of each of T tasks: ``support_x (T, K, D)``,
``query_x (T, Q, D)``; regression ``support_y (T, K, 1)`` float, classification ``support_y (T, K)``
label indices. Rows are drawn UNIFORMLY from the task's rows, without replacement, also for
classification (not stratified by label): a support set may miss a label, as the K labelled rows a
user has of a new task may. A task with fewer than K + Q rows fills its query set by drawing its
remaining rows with replacement. Reading uses the standard library only; every problem with the
file is one :class:`~fastmaml.errors.DataError` that names the row (by its line in the file, as a text
editor numbers it: blank lines and quoted cells spanning lines count) and column and says what to do.

Missing values: in a numeric column (a numeric feature, a regression target) an empty cell or one of
``MISSING`` (NA, nan, N/A, null, None, ?, any case); in a text column (task names, categorical
features, class labels) only an empty cell: there "NA" or "None" is a name like any other (Namibia's
country code, a "None" category), with a warning for features and labels in case it marks a gap.
"""

from __future__ import annotations

import csv
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from fastmaml.core import TaskBatch
from fastmaml.errors import DataError

log = logging.getLogger(__name__)

MISSING = {"", "na", "nan", "n/a", "null", "none", "?"}
SPLITS = ("train", "val", "test")
TASK_TYPES = ("auto", "regression", "classification")
MAX_MAGNITUDE = 1e100  # numbers in a table column: squares and sums of squares stay finite in float64


@dataclass(frozen=True)
class Table:
    """A CSV as text: its header and its rows (lists of stripped cells), with the file line each row starts on."""

    path: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    lines: tuple[int, ...] = ()  # per row; empty: rows are lines 2, 3, ... (no blank lines, no multi-line cells)

    def line(self, row: int) -> int:
        """The line of the file where row ``row`` (0-based) starts: the number to show the user."""
        return self.lines[row] if self.lines else row + 2

    def subset(self, rows: Sequence[int]) -> Table:
        """The table with only ``rows`` (0-based), each keeping its line in the file."""
        return Table(self.path, self.header, tuple(self.rows[i] for i in rows), tuple(self.line(i) for i in rows))

    def column(self, name: str) -> list[str]:
        self.require([name])
        i = self.header.index(name)
        return [row[i] for row in self.rows]

    def require(self, names: Sequence[str]) -> None:
        missing = [n for n in names if n not in self.header]
        if missing:
            raise DataError(
                f"{self.path}: no column {missing[0]!r}; its columns are {', '.join(self.header)} "
                "(names are case-sensitive)"
            )


def missing_csv(path: str | Path) -> str:
    """What is wrong with a CSV path that is not a file: a folder, or nothing there."""
    if Path(path).is_dir():
        return f"{path} is a folder, not a CSV file; pass the path of the CSV file in it"
    return f"CSV file {path} not found; pass the path of an existing file"


def read_csv(path: str | Path) -> Table:
    """The CSV at ``path`` (comma-separated, header line first); DataError if it cannot be read as one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(missing_csv(path))
    lines: list[tuple[int, list[str]]] = []  # (the file line a record starts on, its cells), blank lines left out
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            end = 0  # a record spans lines end + 1 .. reader.line_num (a quoted cell may hold line breaks)
            for row in reader:
                start, end = end + 1, reader.line_num
                if any(cell.strip() for cell in row):
                    lines.append((start, row))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"cannot read {path} as a UTF-8 CSV file ({error})") from None
    if not lines:
        raise DataError(f"{path} is empty; it needs a header line and at least one row")
    header = tuple(cell.strip() for cell in lines[0][1])
    if len(set(header)) != len(header) or "" in header:
        raise DataError(f"{path}: the header needs distinct, non-empty column names; got {', '.join(header)}")
    rows = []
    for number, row in lines[1:]:
        if len(row) != len(header):
            raise DataError(f"{path}, line {number}: {len(row)} values for {len(header)} columns; fix that line")
        rows.append(tuple(cell.strip() for cell in row))
    if not rows:
        raise DataError(f"{path} has a header but no rows")
    return Table(str(path), header, tuple(rows), tuple(number for number, _ in lines[1:]))


def is_missing(text: str, numeric: bool) -> bool:
    """An empty cell; in a numeric column also a spelling in ``MISSING`` (in a text column "NA" is a name)."""
    return text == "" or (numeric and text.lower() in MISSING)


# What a DataError about a cell advises: in the training CSV a feature may also be left out or made
# categorical, and a target made a class label; in a file adapt reads, only the row can change.
FIX_FEATURE, FIX_TARGET, FIX_ROW = "feature", "target", "row"


def check_missing(table: Table, columns: dict[str, bool], shown: int = 5, fix: str = FIX_FEATURE) -> None:
    """One DataError naming the missing values of ``columns`` (name -> numeric, see :func:`is_missing`),
    all of them counted, the first ``shown`` located, rather than one per run. ``fix``: FIX_FEATURE
    also advises leaving the feature out (training), FIX_ROW only the rows (adapt's files)."""
    found = [(i, name, text) for name, numeric in columns.items() for i, text in enumerate(table.column(name))
             if is_missing(text, numeric)]
    if not found:
        return
    found.sort()
    where = "; ".join(f"line {table.line(i)}, column {name!r} ({text!r})" for i, name, text in found[:shown])
    rows = len({i for i, _, _ in found})
    raise DataError(
        f"{table.path}: {len(found)} missing value(s) in {rows} row(s): {where}{' ...' if len(found) > shown else ''}; "
        "drop or fill such rows" + (", or leave such a feature out (--features)" if fix == FIX_FEATURE else "")
    )


def _number(table: Table, row: int, column: str, text: str, fix: str = FIX_FEATURE) -> float:
    if is_missing(text, numeric=True):
        raise DataError(
            f"{table.path}, line {table.line(row)}, column {column!r}: missing value ({text!r}); drop or fill such rows"
        )
    try:
        value = float(text)
    except ValueError:
        advice = {FIX_FEATURE: f"fix it, or list {column!r} as categorical (categorical={column})",
                  FIX_TARGET: "fix it, or set task_type=classification if the column names classes",
                  FIX_ROW: "fix or drop that row"}[fix]
        raise DataError(
            f"{table.path}, line {table.line(row)}, column {column!r}: {text!r} is not a number; {advice}"
        ) from None
    if not math.isfinite(value):
        raise DataError(f"{table.path}, line {table.line(row)}, column {column!r}: {text!r} is not a finite number")
    if abs(value) > MAX_MAGNITUDE:  # its square overflows float64: the standardisation would be inf or 0
        raise DataError(f"{table.path}, line {table.line(row)}, column {column!r}: {text!r} is too large to "
                        f"standardise (|value| above {MAX_MAGNITUDE:g}); rescale the column, e.g. divide it by a "
                        "power of ten")
    return value


def _numbers(table: Table, column: str, fix: str = FIX_FEATURE) -> list[float]:
    return [_number(table, i, column, text, fix) for i, text in enumerate(table.column(column))]


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _present(table: Table, name: str) -> tuple[list[int], list[bool]]:
    """The rows of column ``name`` that are not missing as numbers, and whether each of them is a number."""
    values = table.column(name)
    rows = [i for i, text in enumerate(values) if not is_missing(text, numeric=True)]
    return rows, [_is_number(values[i]) for i in rows]


def _feature_kind(table: Table, name: str, categorical: Sequence[str]) -> str:
    if name in categorical:
        return "categorical"
    rows, numeric = _present(table, name)
    if numeric and all(numeric):
        return "numeric"
    if any(numeric):
        bad = rows[numeric.index(False)]
        raise DataError(
            f"{table.path}, line {table.line(bad)}, column {name!r}: {table.column(name)[bad]!r} is not a number "
            f"while other values of {name!r} are; fix it, or list {name!r} as categorical (categorical={name})"
        )
    return "categorical"


def feature_kind(table: Table, name: str, categorical: Sequence[str] = ()) -> str:
    """"numeric" if every present value is a number, "categorical" if listed or none is; DataError otherwise,
    or for a missing value (see :func:`is_missing`)."""
    kind = _feature_kind(table, name, categorical)
    check_missing(table, {name: kind == "numeric"})
    return kind


def _target_kind(table: Table, name: str, task_type: str) -> str:
    if task_type not in TASK_TYPES:
        raise DataError(f"task_type must be one of {', '.join(TASK_TYPES)}, got {task_type!r}")
    if task_type == "classification":
        return task_type
    rows, numeric = _present(table, name)
    bad = rows[numeric.index(False)] if not all(numeric) else -1
    if task_type == "regression" and bad >= 0:
        raise DataError(
            f"{table.path}, line {table.line(bad)}, column {name!r}: {table.column(name)[bad]!r} is not a number, and "
            "task_type=regression needs a numeric target; fix it, or set task_type=classification"
        )
    if task_type == "regression" or (numeric and all(numeric)):
        return "regression"
    if any(numeric):
        raise DataError(
            f"{table.path}, line {table.line(bad)}, column {name!r}: {table.column(name)[bad]!r} is not a number while "
            f"other values of the target {name!r} are; fix it, or set task_type=classification to treat every value "
            "as a label"
        )
    return "classification"


def target_kind(table: Table, name: str, task_type: str = "auto") -> str:
    """"regression" or "classification": forced by ``task_type``, else numbers vs labels; DataError if mixed,
    or for a missing value (see :func:`is_missing`)."""
    kind = _target_kind(table, name, task_type)
    check_missing(table, {name: kind == "regression"}, fix=FIX_TARGET)
    return kind


def _label_order(labels: set[str]) -> tuple[str, ...]:
    """Labels sorted as numbers when they all are ("2" before "10"), else as text."""
    if all(_is_number(v) for v in labels):
        return tuple(sorted(labels, key=lambda v: (float(v), v)))
    return tuple(sorted(labels))


@dataclass(frozen=True)
class Feature:
    """One input column: numeric (standardised with ``mean``, ``std``) or categorical (one-hot)."""

    name: str
    kind: str  # "numeric" | "categorical"
    mean: float = 0.0
    std: float = 1.0
    categories: tuple[str, ...] = ()

    @property
    def width(self) -> int:
        return 1 if self.kind == "numeric" else len(self.categories)


@dataclass(frozen=True)
class Encoder:
    """Rows -> standardised tensors, with statistics (and, for classification, labels) from meta-train rows only.

    ``classes`` empty: regression (target standardised with ``target_mean``, ``target_std``);
    otherwise classification over ``classes``, a label's index being its class (one logit each).
    """

    features: tuple[Feature, ...]
    target: str
    target_mean: float
    target_std: float
    classes: tuple[str, ...] = ()

    @property
    def width(self) -> int:
        return sum(f.width for f in self.features)

    @property
    def classification(self) -> bool:
        return bool(self.classes)

    @property
    def outputs(self) -> int:
        """Model outputs: one per class, or the one regression value."""
        return len(self.classes) if self.classes else 1

    @classmethod
    def fit(cls, table: Table, rows: Sequence[int], features: Sequence[str], categorical: Sequence[str],
            target: str, task_type: str = "auto") -> Encoder:
        """Decide each column's kind from the whole column; take statistics and labels from ``rows`` only."""
        specs = []
        for name in features:
            values = table.column(name)
            if feature_kind(table, name, categorical) == "numeric":
                column = torch.tensor([float(values[i]) for i in rows], dtype=torch.float64)
                std = column.std().item() if len(column) > 1 else 0.0
                specs.append(Feature(name, "numeric", column.mean().item(), std if std > 0 else 1.0))
            else:
                specs.append(Feature(name, "categorical", categories=tuple(sorted({values[i] for i in rows}))))
        if target_kind(table, target, task_type) == "classification":
            labels = table.column(target)
            classes = _label_order({labels[i] for i in rows})
            if len(classes) < 2:
                raise DataError(
                    f"{table.path}: the target {target!r} has only the label {classes[0]!r} in the meta-training "
                    "tasks; classification needs at least 2 labels (for a numeric target: task_type=regression)"
                )
            return cls(tuple(specs), target, 0.0, 1.0, classes)
        y = torch.tensor(_numbers(table, target, FIX_TARGET), dtype=torch.float64)[list(rows)]
        std = y.std().item() if len(y) > 1 else 0.0
        return cls(tuple(specs), target, y.mean().item(), std if std > 0 else 1.0)

    def encode_x(self, table: Table, new: bool = False) -> Tensor:
        """Features of every row: (N, width), float32; unseen categories are all-zero. ``new``: a
        file adapt reads, whose errors advise fixing the rows only (the features are the run's)."""
        fix = FIX_ROW if new else FIX_FEATURE
        table.require([f.name for f in self.features])
        check_missing(table, {f.name: f.kind == "numeric" for f in self.features}, fix=fix)
        blocks = []
        for f in self.features:
            if f.kind == "numeric":
                values = torch.tensor(_numbers(table, f.name, fix), dtype=torch.float64)
                blocks.append(((values - f.mean) / f.std).unsqueeze(1))
            else:
                index = {c: i for i, c in enumerate(f.categories)}
                onehot = torch.zeros(len(table.rows), len(f.categories), dtype=torch.float64)
                unseen: dict[str, int] = {}
                for r, text in enumerate(table.column(f.name)):
                    if text in index:
                        onehot[r, index[text]] = 1.0
                    else:
                        unseen.setdefault(text, table.line(r))
                if unseen:
                    known = ", ".join(f.categories[:8]) + (", ..." if len(f.categories) > 8 else "")
                    log.warning("%s, column %r: %s never occur(s) in the meta-training rows (first at line %d); "
                                "such rows get none of the column's %d known categories: %s",
                                table.path, f.name, ", ".join(map(repr, list(unseen)[:5])),
                                next(iter(unseen.values())), len(f.categories), known)
                blocks.append(onehot)
        if not blocks:
            return torch.zeros(len(table.rows), 0)
        return torch.cat(blocks, 1).float()

    def label_indices(self, table: Table) -> list[int]:
        """Classification: each row's class index, -1 for a label not seen in meta-training; DataError if missing."""
        index = {c: i for i, c in enumerate(self.classes)}
        check_missing(table, {self.target: False}, fix=FIX_ROW)
        return [index.get(text, -1) for text in table.column(self.target)]

    def known_target(self, table: Table) -> list[int]:
        """The rows (0-based) of ``table`` whose target is present, not a missing value (see :func:`is_missing`)."""
        return [i for i, text in enumerate(table.column(self.target)) if not is_missing(text, not self.classification)]

    def encode_y(self, table: Table, new: bool = False) -> Tensor:
        """The target of every row: regression (N, 1) float32, standardised; classification (N,) int64 indices.

        A label never seen in meta-training is a DataError: the model has no output for it.
        """
        if not self.classification:
            y = torch.tensor(_numbers(table, self.target, FIX_ROW if new else FIX_TARGET), dtype=torch.float64)
            return ((y - self.target_mean) / self.target_std).float().unsqueeze(1)
        indices = self.label_indices(table)
        if -1 in indices:
            r = indices.index(-1)
            unseen = sorted({table.rows[i][table.header.index(self.target)] for i, k in enumerate(indices) if k < 0})
            raise DataError(
                f"{table.path}, line {table.line(r)}, column {self.target!r}: label {unseen[0]!r} never occurs in the "
                f"meta-training tasks ({len(unseen)} such label(s): {', '.join(map(repr, unseen[:5]))}); this run "
                f"can only learn and predict {', '.join(map(repr, self.classes))}: drop those rows"
            )
        return torch.tensor(indices, dtype=torch.int64)

    def decode_y(self, y: Tensor) -> Tensor:
        """Regression: standardised predictions back in the target's units."""
        return y.double() * self.target_std + self.target_mean

    def decode_labels(self, indices: Tensor) -> list[str]:
        """Classification: class indices back to the target's labels."""
        return [self.classes[i] for i in indices.tolist()]


@dataclass
class TableTasks:
    """The tasks of one split: per task its encoded rows; samples K support + Q query rows per task."""

    names: list[str]
    x: list[Tensor]  # per task (rows, D)
    y: list[Tensor]  # per task: regression (rows, 1) float, classification (rows,) class indices

    def sample(self, generator: torch.Generator, num_tasks: int, shots: int, queries: int) -> TaskBatch:
        """``num_tasks`` tasks drawn with replacement; a task's rows drawn uniformly without (query: see module).

        Not stratified by label for classification: K support rows are any K rows of the task.
        """
        if not self.names:
            raise DataError("this split holds no tasks (the validation split is empty unless val_fraction > 0): "
                            "sample another split, or give the split a share of the groups")
        picks = torch.randint(len(self.names), (num_tasks,), generator=generator).tolist()
        parts: list[list[Tensor]] = [[], [], [], []]
        for p in picks:
            n = len(self.y[p])
            order = torch.randperm(n, generator=generator)
            support, rest = order[:shots], order[shots:]
            if len(rest) >= queries:
                query = rest[:queries]
            else:
                query = rest[torch.randint(len(rest), (queries,), generator=generator)]
            for part, t in zip(parts, (self.x[p][support], self.y[p][support], self.x[p][query], self.y[p][query])):
                part.append(t)
        return TaskBatch(*(torch.stack(part) for part in parts))


@dataclass
class TableSplit:
    """A table cut into meta-train / val / test tasks, with its encoder fitted on meta-train rows."""

    encoder: Encoder
    tasks: dict[str, TableTasks]
    dropped: list[str]  # tasks with too few (usable) rows to give K support rows and one query row
    unseen_label_rows: int = 0  # classification: held-out rows left out, their label not in meta-training


def split_tasks(names: Sequence[str], test_fraction: float, val_fraction: float, seed: int) -> dict[str, list[str]]:
    """Sorted task names, shuffled with ``random.Random(seed)``, cut into disjoint train / val / test."""
    order = sorted(names)
    random.Random(seed).shuffle(order)
    n_test = max(1, round(test_fraction * len(order)))
    n_val = round(val_fraction * len(order)) if val_fraction > 0 else 0
    if val_fraction > 0:
        n_val = max(1, n_val)
    if len(order) - n_test - n_val < 2:
        lower = [name for name, n in (("test_fraction", n_test), ("val_fraction", n_val)) if n > 1]
        raise DataError(
            f"only {len(order)} usable task{'' if len(order) == 1 else 's'}: too few to hold out {n_test} meta-test "
            f"and {n_val} validation tasks and keep 2 for meta-training; use a table with more groups (at least "
            f"{n_test + n_val + 2})" + (f" or lower {' or '.join(lower)}" if lower else "")
        )
    return {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}


def load_table(
    path: str | Path,
    task_column: str,
    target: str,
    features: Sequence[str] = (),
    categorical: Sequence[str] = (),
    *,
    shots: int,
    test_fraction: float = 0.2,
    val_fraction: float = 0.0,
    seed: int = 0,
    task_type: str = "auto",
) -> TableSplit:
    """Read ``path``, split its tasks, fit the encoder on meta-train rows and encode every task.

    ``features`` defaults to every column except the task and target columns; a feature is
    categorical when listed in ``categorical`` or when none of its values is a number.
    ``task_type``: "regression", "classification" or "auto" (see the module docstring).
    """
    table = read_csv(path)
    if task_column == target:
        raise DataError(f"--task-column and --target are both {target!r}; the task column groups the rows into "
                        "tasks and the target is what to predict: name two different columns")
    features = list(features) or [c for c in table.header if c not in (task_column, target)]
    table.require([task_column, target, *features, *categorical])
    for name in (task_column, target):
        if name in features:
            raise DataError(f"column {name!r} is the task or target column and cannot also be a feature")
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(table.column(task_column)):
        if name == "":  # a task name is an identifier: "NA" (Namibia) or "None" names a task
            raise DataError(
                f"{table.path}, line {table.line(i)}: empty task (column {task_column!r} is empty); every row needs "
                "the name of its task"
            )
        groups.setdefault(name, []).append(i)
    # every value must be usable: fail before any work, naming every missing value at once
    numeric = {target: _target_kind(table, target, task_type) == "regression"}
    numeric.update((name, _feature_kind(table, name, categorical) == "numeric") for name in features)
    check_missing(table, numeric)
    if numeric[target]:
        _numbers(table, target, FIX_TARGET)
    _warn_missing_spellings(table, [name for name, is_numeric in numeric.items() if not is_numeric])
    dropped = sorted(n for n, rows in groups.items() if len(rows) < shots + 1)
    if dropped:
        log.warning("%d of %d tasks have fewer than K + 1 = %d rows and are left out: %s", len(dropped), len(groups),
                    shots + 1, ", ".join(dropped[:5]) + (" ..." if len(dropped) > 5 else ""))
    usable = [n for n in groups if n not in dropped]
    try:
        names = split_tasks(usable, test_fraction, val_fraction, seed)
    except DataError as error:
        if not dropped:
            raise
        # the groups are there, their rows are not: "use a table with more groups" misled
        largest = max(len(rows) for rows in groups.values())
        raise DataError(f"{error}; {len(dropped)} of the table's {len(groups)} tasks were left out for having "
                        f"fewer than K + 1 = {shots + 1} rows (the largest has {largest}): lower --shots to "
                        f"{max(largest - 1, 1)} or less, or add rows to the tasks") from None
    train_rows = [i for n in names["train"] for i in groups[n]]
    encoder = Encoder.fit(table, train_rows, features, categorical, target, task_type)
    x = encoder.encode_x(table)
    unseen = 0
    if encoder.classification:
        labels = encoder.label_indices(table)
        y = torch.tensor(labels, dtype=torch.int64)
        names, groups, unseen, small = _without_unseen_labels(names, groups, labels, shots)
        dropped = sorted(dropped + small)
    else:
        y = encoder.encode_y(table)
    tasks = {
        split: TableTasks(
            list(names[split]), [x[groups[n]] for n in names[split]], [y[groups[n]] for n in names[split]]
        )
        for split in SPLITS
    }
    return TableSplit(encoder, tasks, dropped, unseen)


def _warn_missing_spellings(table: Table, columns: Sequence[str]) -> None:
    """Warn where a text column holds values such as "NA" or "None": names there, but maybe gaps in the data."""
    for name in columns:
        found: dict[str, int] = {}
        for i, text in enumerate(table.column(name)):
            if text.lower() in MISSING:
                found.setdefault(text, table.line(i))
        if found:
            log.warning("%s, column %r: %s (first at line %d) taken as a category or label of its own: in a text "
                        "column only an empty cell is a missing value; if it marks one, empty those cells or drop "
                        "those rows", table.path, name, ", ".join(map(repr, found)), next(iter(found.values())))


def _without_unseen_labels(names: dict[str, list[str]], groups: dict[str, list[int]], labels: list[int],
                           shots: int) -> tuple[dict[str, list[str]], dict[str, list[int]], int, list[str]]:
    """Held-out tasks without their rows whose label (-1) is not a meta-training label; tasks left too small."""
    groups = dict(groups)
    unseen, small = 0, []
    kept = {"train": list(names["train"])}
    for split in ("val", "test"):
        kept[split] = []
        for n in names[split]:
            rows = [i for i in groups[n] if labels[i] >= 0]
            unseen += len(groups[n]) - len(rows)
            groups[n] = rows
            if len(rows) < shots + 1:
                small.append(n)
            else:
                kept[split].append(n)
    if unseen:
        log.warning("%d rows of held-out tasks have a label that no meta-training task has and are left out%s",
                    unseen, f"; so are {len(small)} tasks left with fewer than K + 1 = {shots + 1} rows: "
                    + ", ".join(small[:5]) if small else "")
    if not kept["test"]:
        raise DataError(
            "no meta-test task is left once rows with labels that no meta-training task has are left out; "
            "drop the rare labels from the CSV, or change seed or test_fraction"
        )
    if names["val"] and not kept["val"]:
        raise DataError(
            "no validation task is left once rows with labels that no meta-training task has are left out; "
            "drop the rare labels from the CSV, or change seed or val_fraction"
        )
    return kept, groups, unseen, small
