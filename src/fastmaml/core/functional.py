"""MAML as pure functions of parameter dicts (Finn et al., 2017, Algorithm 2).

    adapt(θ, support)   = θ − α ∇θ L(f_θ, support)                      (line 7, repeated N times)
    meta_loss(θ, batch) = mean over tasks i of L(f_adapt(θ, support_i), query_i)   (line 10)

``loss(params, x, y) -> Tensor`` is any differentiable scalar function of a parameter dict. Second
order is the default: the inner gradient stays in the graph, so ``.backward()`` on the meta-loss
applies (I − α ∇²L_support) for every inner step. ``first_order=True`` treats each inner gradient as
a constant (FOMAML). ``lr`` is a float, or a dict of tensors shaped like ``params`` (Meta-SGD).

``embed(task) -> task`` (optional) maps a task's inputs through the part of the model the inner loop
does not adapt, once per task, before its inner steps; ``loss`` then runs the rest of the model on
those features. Where the adapted parameters are the model's last layers alone (ANIL), the result is
the same meta-loss, without running the unadapted body again at every inner step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint as _checkpoint

from fastmaml.core.batch import TaskBatch

Params = dict[str, Tensor]
LossFn = Callable[[Params, Tensor, Tensor], Tensor]
MetricFn = Callable[[Params, Tensor, Tensor], Tensor]
LR = float | Mapping[str, Tensor]
Embed = Callable[[TaskBatch], TaskBatch]


def sgd_step(params: Params, grads: Params, lr: LR) -> Params:
    """θ' = θ − α ⊙ g, with α a float or one tensor per parameter (Meta-SGD)."""
    if isinstance(lr, Mapping):
        return {k: p - lr[k] * grads[k] for k, p in params.items()}
    return {k: p - lr * grads[k] for k, p in params.items()}


def inner_loss_grads(loss: LossFn, params: Params, x: Tensor, y: Tensor, first_order: bool) -> Params:
    """∇θ L(f_θ, (x, y)); a constant (detached) under first order."""
    grads = torch.func.grad(loss)(params, x, y)
    if first_order:
        grads = {k: g.detach() for k, g in grads.items()}
    return grads


def adapt(
    loss: LossFn, params: Params, x: Tensor, y: Tensor, *, lr: LR, steps: int, first_order: bool = False
) -> Params:
    """``steps`` gradient-descent steps on the support set (Algorithm 2, line 7)."""
    for _ in range(steps):
        params = sgd_step(params, inner_loss_grads(loss, params, x, y, first_order), lr)
    return params


def autograd_adapt(
    loss: LossFn,
    params: Params,
    x: Tensor,
    y: Tensor,
    *,
    lr: LR,
    steps: int,
    first_order: bool = False,
    checkpoint: bool = False,
) -> Params:
    """:func:`adapt` with ``torch.autograd.grad`` for the inner gradient instead of ``torch.func.grad``.

    Two things need it: ``checkpoint=True`` (second order), where every inner step runs under
    ``torch.utils.checkpoint`` so that backward recomputes one step's forward and inner gradient at a
    time and peak memory stops growing with a graph per step (same meta-gradient, one more forward
    and inner backward per step; ``torch.func`` transforms refuse the saved-tensor hooks that
    checkpointing needs); and worker threads, because ``torch.func``'s transform stack is not
    thread-safe. One task at a time (not under vmap). Meta-SGD's learning rates enter every step as
    explicit inputs. A parameter that does not require grad still adapts, as under ``torch.func.grad``
(``MAML`` passes only the parameters it adapts).
    """
    names = list(params)
    lr_names = list(lr) if isinstance(lr, Mapping) else []
    values = tuple(params[k] for k in names)
    lrs = tuple(lr[k] for k in lr_names)

    def step(*tensors: Tensor) -> tuple[Tensor, ...]:
        current, rates = tensors[: len(names)], tensors[len(names) :]
        current = tuple(v if v.requires_grad else v.detach().requires_grad_() for v in current)
        with torch.enable_grad():
            # a parameter the loss does not use gets a zero gradient, as under torch.func.grad
            grads = torch.autograd.grad(
                loss(dict(zip(names, current)), x, y), current, create_graph=not first_order, allow_unused=True,
                materialize_grads=True,
            )
        step_lr = dict(zip(lr_names, rates)) if lr_names else lr
        return tuple(v - (step_lr[k] if lr_names else step_lr) * g for k, v, g in zip(names, current, grads))

    use_checkpoint = checkpoint and not first_order and torch.is_grad_enabled()
    for _ in range(steps):
        values = _checkpoint(step, *values, *lrs, use_reentrant=False) if use_checkpoint else step(*values, *lrs)
    return dict(zip(names, values))


def adaptation_curve(
    loss: LossFn,
    metric: MetricFn,
    params: Params,
    task: TaskBatch,
    *,
    lr: LR,
    steps: int,
    embed: Embed | None = None,
) -> Tensor:
    """``metric`` on the query set after 0, 1, ..., ``steps`` inner steps: shape (steps + 1, ...).

    For evaluation: the inner gradients are treated as constants (no meta-gradient is needed).
    """
    task = task if embed is None else embed(task)
    values = [metric(params, task.query_x, task.query_y)]
    for _ in range(steps):
        params = sgd_step(params, inner_loss_grads(loss, params, task.support_x, task.support_y, True), lr)
        values.append(metric(params, task.query_x, task.query_y))
    return torch.stack(values)


def task_meta_loss(
    loss: LossFn, params: Params, task: TaskBatch, lr: LR, steps: int, first_order: bool, checkpoint: bool = False,
    embed: Embed | None = None,
) -> Tensor:
    """One task's query loss after ``steps`` inner steps on its support set (``task`` without a task dim)."""
    task = task if embed is None else embed(task)
    if checkpoint and not first_order and torch.is_grad_enabled():
        adapted = autograd_adapt(loss, params, task.support_x, task.support_y, lr=lr, steps=steps, checkpoint=True)
    else:
        adapted = adapt(loss, params, task.support_x, task.support_y, lr=lr, steps=steps, first_order=first_order)
    return loss(adapted, task.query_x, task.query_y)


def meta_loss_vmap(
    loss: LossFn,
    params: Params,
    batch: TaskBatch,
    *,
    lr: LR,
    steps: int,
    first_order: bool = False,
    chunk_size: int | None = None,
    embed: Embed | None = None,
) -> Tensor:
    """Per-task query losses after adaptation, all tasks at once with ``torch.func.vmap``: shape (T,).

    ``randomness="different"`` gives each task its own dropout masks. ``chunk_size`` bounds how
    many tasks are vectorised at once (lower peak memory, same result).
    """
    per_task = lambda task: task_meta_loss(loss, params, task, lr, steps, first_order, embed=embed)  # noqa: E731
    return torch.vmap(per_task, randomness="different", chunk_size=chunk_size)(batch)


def meta_loss_loop(
    loss: LossFn,
    params: Params,
    batch: TaskBatch,
    *,
    lr: LR,
    steps: int,
    first_order: bool = False,
    checkpoint: bool = False,
    embed: Embed | None = None,
) -> Tensor:
    """The same as :func:`meta_loss_vmap` with a Python loop over tasks: the reference and fallback.

    ``checkpoint=True`` recomputes the inner steps during backward (:func:`autograd_adapt`);
    it only changes second-order training with gradients enabled (first order keeps no inner graph).
    """
    return torch.stack(
        [
            task_meta_loss(loss, params, batch.task(i), lr, steps, first_order, checkpoint, embed)
            for i in range(batch.num_tasks)
        ]
    )


def meta_loss_shared_first_step(
    support_loss: LossFn,
    loss: LossFn,
    params: Params,
    batch: TaskBatch,
    *,
    lr: LR,
    steps: int,
    first_order: bool = False,
) -> Tensor:
    """:func:`meta_loss_loop` with every task's first inner gradient in one ``vmap`` over tasks.

    All tasks start from the same θ, so under vmap with θ unbatched the first support forward is one
    convolution (or matmul) over all tasks' support examples; only the inputs carry the task
    dimension. Later inner steps and the query losses run task by task with ``loss``, where vmap's
    per-task weights would turn convolutions into slower grouped ones on the CPU. ``support_loss`` is
    ``loss`` as it must run under vmap (e.g. batch norm from primitive ops). Gradients after the first
    step use autograd, so worker threads can call this. Returns the per-task query losses, shape (T,).
    """
    if steps < 1:
        return meta_loss_loop(loss, params, batch, lr=lr, steps=0)
    first = lambda x, y: inner_loss_grads(support_loss, params, x, y, first_order)  # noqa: E731
    grads = torch.vmap(first, randomness="different")(batch.support_x, batch.support_y)
    losses = []
    for i in range(batch.num_tasks):
        task = batch.task(i)
        adapted = sgd_step(params, {k: g[i] for k, g in grads.items()}, lr)
        adapted = autograd_adapt(loss, adapted, task.support_x, task.support_y, lr=lr, steps=steps - 1,
                                 first_order=first_order)
        losses.append(loss(adapted, task.query_x, task.query_y))
    return torch.stack(losses)
