"""A meta-batch of tasks as plain tensors with a leading task dimension."""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch import Tensor


class TaskBatch(NamedTuple):
    """Support and query sets of T tasks.

    Shapes: ``support_x (T, Ns, ...)``, ``support_y (T, Ns, ...)``, ``query_x (T, Nq, ...)``,
    ``query_y (T, Nq, ...)``. Being a NamedTuple it is a pytree, so ``torch.func.vmap`` maps over it.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor

    @property
    def num_tasks(self) -> int:
        return self.support_x.shape[0]

    def to(self, device: torch.device | str | torch.dtype | None = None, non_blocking: bool = False, *,
           dtype: torch.dtype | None = None) -> "TaskBatch":
        """The batch on ``device`` and/or with floating tensors as ``dtype`` (``batch.to(torch.float64)``
        works too); integer tensors, class labels, keep their dtype."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        return TaskBatch(*(t.to(device=device, dtype=dtype if t.is_floating_point() else None,
                                non_blocking=non_blocking) for t in self))

    def task(self, i: int) -> "TaskBatch":
        """Task ``i`` without the leading dimension."""
        return TaskBatch(*(t[i] for t in self))

    def slice(self, start: int, stop: int) -> "TaskBatch":
        """Tasks ``start:stop`` (a micro-batch), keeping the leading dimension."""
        return TaskBatch(*(t[start:stop] for t in self))

    def validate(self) -> "TaskBatch":
        """Raise ValueError with a clear message if the shapes do not form a task batch."""
        names = self._fields
        if any(not isinstance(t, Tensor) for t in self):
            raise ValueError("TaskBatch fields must all be tensors")
        if any(t.dim() < 2 for t in self):
            bad = [f"{n}{tuple(t.shape)}" for n, t in zip(names, self) if t.dim() < 2]
            raise ValueError(
                f"TaskBatch tensors need a task and an example dimension (T, N, ...); got {', '.join(bad)}"
            )
        tasks = {t.shape[0] for t in self}
        if len(tasks) != 1:
            shapes = ", ".join(f"{n}{tuple(t.shape)}" for n, t in zip(names, self))
            raise ValueError(f"all TaskBatch tensors need the same number of tasks T; got {shapes}")
        if tasks == {0}:
            raise ValueError("a TaskBatch needs at least one task; got T = 0 (an empty slice of a batch?)")
        empty = [f"{n}{tuple(t.shape)}" for n, t in zip(names, self) if t.shape[1] == 0]
        if empty:
            raise ValueError(f"every task needs at least one support and one query example; got {', '.join(empty)}")
        if self.support_x.shape[:2] != self.support_y.shape[:2]:
            raise ValueError(
                f"support_x{tuple(self.support_x.shape)} and support_y{tuple(self.support_y.shape)} "
                "must agree on (tasks, examples)"
            )
        if self.query_x.shape[:2] != self.query_y.shape[:2]:
            raise ValueError(
                f"query_x{tuple(self.query_x.shape)} and query_y{tuple(self.query_y.shape)} "
                "must agree on (tasks, examples)"
            )
        for x_or_y in ("x", "y"):
            support, query = getattr(self, f"support_{x_or_y}"), getattr(self, f"query_{x_or_y}")
            if support.shape[2:] != query.shape[2:]:  # a (M, 1) target against (M,) predictions broadcast to (M, M)
                raise ValueError(
                    f"support_{x_or_y}{tuple(support.shape)} and query_{x_or_y}{tuple(query.shape)} must have the same "
                    "example shape (pad sequences of different lengths to one)"
                )
        if self.support_x.dim() == 2 and self.support_x.is_floating_point():  # (T, N) integers: token tasks
            if self.support_x.shape[1] == 1 and self.num_tasks > 1:
                warnings.warn(
                    f"support_x{tuple(self.support_x.shape)} reads as {self.num_tasks} tasks of one example each, "
                    "with no feature dimension; for one task of examples with one feature, give it a task "
                    "dimension: TaskBatch(support_x[None], support_y[None], query_x[None], query_y[None])",
                    stacklevel=3,
                )
            else:
                warnings.warn(
                    f"support_x{tuple(self.support_x.shape)} has no feature dimension: each task's examples are "
                    "single numbers, and a model that expects features (nn.Linear(1, ...)) fails on them; for one "
                    "feature per example pass support_x[..., None] and query_x[..., None]",
                    stacklevel=3,
                )
        return self
