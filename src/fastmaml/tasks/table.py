"""Few-shot regression on a user's own table: each value of a task column is a task, each row an example.

    rows of FILE.csv  ->  tasks (one per value of ``task_column``)  ->  meta-train / val / test by task
    features          ->  numeric: standardised;  categorical: one-hot   (statistics: meta-train tasks only)
    target            ->  standardised the same way (``Encoder.decode_y`` maps predictions back)

A task batch holds K support and Q query rows of each of T tasks: ``support_x (T, K, D)``,
``support_y (T, K, 1)``, ``query_x (T, Q, D)``, ``query_y (T, Q, 1)``. A task with fewer than K + Q
rows fills its query set by drawing its remaining rows with replacement. Reading uses the standard
library only; every problem with the file is one :class:`~fastmaml.errors.DataError` that names the
row and column and says what to do.
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


@dataclass(frozen=True)
class Table:
    """A CSV as text: its header and its rows (lists of stripped cells)."""

    path: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

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


def read_csv(path: str | Path) -> Table:
    """The CSV at ``path`` (comma-separated, header line first); DataError if it cannot be read as one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV file {path} not found; pass the path of an existing file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            lines = [row for row in csv.reader(f) if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"cannot read {path} as a UTF-8 CSV file ({error})") from None
    if not lines:
        raise DataError(f"{path} is empty; it needs a header line and at least one row")
    header = tuple(cell.strip() for cell in lines[0])
    if len(set(header)) != len(header) or "" in header:
        raise DataError(f"{path}: the header needs distinct, non-empty column names; got {', '.join(header)}")
    rows = []
    for number, row in enumerate(lines[1:], start=2):
        if len(row) != len(header):
            raise DataError(f"{path}, line {number}: {len(row)} values for {len(header)} columns; fix that line")
        rows.append(tuple(cell.strip() for cell in row))
    if not rows:
        raise DataError(f"{path} has a header but no rows")
    return Table(str(path), header, tuple(rows))


def _number(table: Table, row: int, column: str, text: str) -> float:
    if text.lower() in MISSING:
        raise DataError(
            f"{table.path}, line {row + 2}, column {column!r}: missing value ({text!r}); drop or fill such rows"
        )
    try:
        value = float(text)
    except ValueError:
        raise DataError(
            f"{table.path}, line {row + 2}, column {column!r}: {text!r} is not a number; fix it, or list "
            f"{column!r} as categorical (categorical={column})"
        ) from None
    if not math.isfinite(value):
        raise DataError(f"{table.path}, line {row + 2}, column {column!r}: {text!r} is not a finite number")
    return value


def _numbers(table: Table, column: str) -> list[float]:
    return [_number(table, i, column, text) for i, text in enumerate(table.column(column))]


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def feature_kind(table: Table, name: str, categorical: Sequence[str] = ()) -> str:
    """"numeric" if every value is a number, "categorical" if listed or none is; DataError otherwise."""
    values = table.column(name)
    for i, text in enumerate(values):
        if text.lower() in MISSING:
            raise DataError(
                f"{table.path}, line {i + 2}, column {name!r}: missing value ({text!r}); drop or fill such rows"
            )
    if name in categorical:
        return "categorical"
    numeric = [_is_number(v) for v in values]
    if all(numeric):
        return "numeric"
    if any(numeric):
        bad = numeric.index(False)
        raise DataError(
            f"{table.path}, line {bad + 2}, column {name!r}: {values[bad]!r} is not a number while other values of "
            f"{name!r} are; fix it, or list {name!r} as categorical (categorical={name})"
        )
    return "categorical"


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
    """Rows -> standardised tensors, with statistics taken from the meta-training tasks' rows only."""

    features: tuple[Feature, ...]
    target: str
    target_mean: float
    target_std: float

    @property
    def width(self) -> int:
        return sum(f.width for f in self.features)

    @classmethod
    def fit(cls, table: Table, rows: Sequence[int], features: Sequence[str], categorical: Sequence[str],
            target: str) -> Encoder:
        """Decide each feature's kind from the whole column; take statistics from ``rows`` only."""
        specs = []
        for name in features:
            values = table.column(name)
            if feature_kind(table, name, categorical) == "numeric":
                column = torch.tensor([float(values[i]) for i in rows], dtype=torch.float64)
                std = column.std().item() if len(column) > 1 else 0.0
                specs.append(Feature(name, "numeric", column.mean().item(), std if std > 0 else 1.0))
            else:
                specs.append(Feature(name, "categorical", categories=tuple(sorted({values[i] for i in rows}))))
        y = torch.tensor(_numbers(table, target), dtype=torch.float64)[list(rows)]
        std = y.std().item() if len(y) > 1 else 0.0
        return cls(tuple(specs), target, y.mean().item(), std if std > 0 else 1.0)

    def encode_x(self, table: Table) -> Tensor:
        """Features of every row: (N, width), float32; unseen categories are all-zero."""
        table.require([f.name for f in self.features])
        blocks = []
        for f in self.features:
            if f.kind == "numeric":
                values = torch.tensor(_numbers(table, f.name), dtype=torch.float64)
                blocks.append(((values - f.mean) / f.std).unsqueeze(1))
            else:
                index = {c: i for i, c in enumerate(f.categories)}
                onehot = torch.zeros(len(table.rows), len(f.categories), dtype=torch.float64)
                for r, text in enumerate(table.column(f.name)):
                    if text.lower() in MISSING:
                        raise DataError(f"{table.path}, line {r + 2}, column {f.name!r}: missing value ({text!r}); "
                                        "drop or fill such rows")
                    if text in index:
                        onehot[r, index[text]] = 1.0
                blocks.append(onehot)
        if not blocks:
            return torch.zeros(len(table.rows), 0)
        return torch.cat(blocks, 1).float()

    def encode_y(self, table: Table) -> Tensor:
        """The standardised target of every row: (N, 1), float32."""
        y = torch.tensor(_numbers(table, self.target), dtype=torch.float64)
        return ((y - self.target_mean) / self.target_std).float().unsqueeze(1)

    def decode_y(self, y: Tensor) -> Tensor:
        """Standardised predictions back in the target's units."""
        return y.double() * self.target_std + self.target_mean


@dataclass
class TableTasks:
    """The tasks of one split: per task its encoded rows; samples K support + Q query rows per task."""

    names: list[str]
    x: list[Tensor]  # per task (rows, D)
    y: list[Tensor]  # per task (rows, 1)

    def sample(self, generator: torch.Generator, num_tasks: int, shots: int, queries: int) -> TaskBatch:
        """``num_tasks`` tasks drawn with replacement; rows of a task drawn without (query: see module)."""
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
    dropped: list[str]  # tasks with too few rows to give K support rows and one query row


def split_tasks(names: Sequence[str], test_fraction: float, val_fraction: float, seed: int) -> dict[str, list[str]]:
    """Sorted task names, shuffled with ``random.Random(seed)``, cut into disjoint train / val / test."""
    order = sorted(names)
    random.Random(seed).shuffle(order)
    n_test = max(1, round(test_fraction * len(order)))
    n_val = round(val_fraction * len(order)) if val_fraction > 0 else 0
    if val_fraction > 0:
        n_val = max(1, n_val)
    if len(order) - n_test - n_val < 2:
        raise DataError(
            f"only {len(order)} usable tasks: too few to hold out {n_test} meta-test and {n_val} validation tasks "
            "and keep 2 for meta-training; use a table with more groups or lower test_fraction"
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
) -> TableSplit:
    """Read ``path``, split its tasks, fit the encoder on meta-train rows and encode every task.

    ``features`` defaults to every column except the task and target columns; a feature is
    categorical when listed in ``categorical`` or when none of its values is a number.
    """
    table = read_csv(path)
    features = list(features) or [c for c in table.header if c not in (task_column, target)]
    table.require([task_column, target, *features, *categorical])
    for name in (task_column, target):
        if name in features:
            raise DataError(f"column {name!r} is the task or target column and cannot also be a feature")
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(table.column(task_column)):
        if name.lower() in MISSING:
            raise DataError(
                f"{table.path}, line {i + 2}: empty task (column {task_column!r} is {name!r}); every row needs "
                "the name of its task"
            )
        groups.setdefault(name, []).append(i)
    _numbers(table, target)  # every value must be usable: fail before any work
    for name in features:
        feature_kind(table, name, categorical)
    dropped = sorted(n for n, rows in groups.items() if len(rows) < shots + 1)
    if dropped:
        log.warning("%d of %d tasks have fewer than K + 1 = %d rows and are left out: %s", len(dropped), len(groups),
                    shots + 1, ", ".join(dropped[:5]) + (" ..." if len(dropped) > 5 else ""))
    usable = [n for n in groups if n not in dropped]
    names = split_tasks(usable, test_fraction, val_fraction, seed)
    train_rows = [i for n in names["train"] for i in groups[n]]
    encoder = Encoder.fit(table, train_rows, features, categorical, target)
    x, y = encoder.encode_x(table), encoder.encode_y(table)
    tasks = {
        split: TableTasks(
            list(names[split]), [x[groups[n]] for n in names[split]], [y[groups[n]] for n in names[split]]
        )
        for split in SPLITS
    }
    return TableSplit(encoder, tasks, dropped)
