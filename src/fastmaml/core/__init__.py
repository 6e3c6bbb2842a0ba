"""Functional MAML core: pure functions of (params, data) built on torch.func. No I/O."""

from fastmaml.core.batch import TaskBatch
from fastmaml.core.functional import (
    adapt,
    adaptation_curve,
    autograd_adapt,
    inner_loss_grads,
    meta_loss_loop,
    meta_loss_shared_first_step,
    meta_loss_vmap,
    sgd_step,
    task_meta_loss,
)
from fastmaml.core.norm import exact_vmap_ops, frozen_running_stats, has_own_buffers, needs_exact_vmap_ops

__all__ = [
    "TaskBatch",
    "adapt",
    "adaptation_curve",
    "autograd_adapt",
    "exact_vmap_ops",
    "frozen_running_stats",
    "has_own_buffers",
    "inner_loss_grads",
    "meta_loss_loop",
    "meta_loss_shared_first_step",
    "meta_loss_vmap",
    "needs_exact_vmap_ops",
    "sgd_step",
    "task_meta_loss",
]
