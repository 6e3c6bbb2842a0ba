"""What the engine needs from an experiment, and the registry of presets the CLI offers."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from fastmaml.algorithms import MAML
from fastmaml.algorithms.maml import inner_param_names
from fastmaml.config import TrainConfig
from fastmaml.core import TaskBatch
from fastmaml.errors import ConfigError

Metric = Callable[[Tensor, Tensor], Tensor]
Sampler = Callable[[torch.Generator, str, int], TaskBatch]  # (generator, split, num_tasks) -> tasks


@dataclass
class Experiment:
    """A task distribution, a model and a loss: everything MAML needs, plus how to score it.

    ``sample(generator, split, num_tasks)`` draws tasks from ``split`` ("train", "val" or "test").
    ``metrics`` are computed on the query set after each inner step at evaluation; ``metrics`` is
    ordered and its first entry is the one validation tracks. ``baseline`` is the paper's
    "pretrained" comparison: one network trained on all tasks jointly with the same budget, then
    fine-tuned at meta-test time with SGD at ``baseline_lr``.
    """

    name: str
    config: TrainConfig
    model: nn.Module
    loss_fn: Metric
    sample: Sampler
    metrics: dict[str, Metric]
    higher_is_better: bool = False
    baseline: nn.Module | None = None
    baseline_lr: float = 0.0
    outer_only: tuple[str, ...] = ()  # parameters meta-learned but never adapted, whatever inner_params says
    extras: dict[str, Any] = field(default_factory=dict)  # experiment-specific objects (e.g. for plots)


@dataclass(frozen=True)
class Preset:
    """A named experiment: how to make its config from CLI shorthand and how to build it."""

    name: str
    config_cls: type
    make_config: Callable[..., TrainConfig]
    build: Callable[[TrainConfig], Experiment]
    description: str
    # A preset with its own loop (meta-RL) sets these to its train(preset, config, run_dir, *, resume,
    # progress), evaluate(run_dir, *, tasks, steps, seed, which) and plot(run_dir, tasks); None: the engine's.
    train: Callable[..., dict[str, Any]] | None = None
    evaluate: Callable[..., dict[str, Any]] | None = None
    plot: Callable[..., list[Any]] | None = None


PRESETS: dict[str, Preset] = {}


def register(preset: Preset) -> Preset:
    PRESETS[preset.name] = preset
    return preset


def get_preset(name: str) -> Preset:
    from fastmaml import experiments  # noqa: F401  (imports register the presets)

    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def make_maml(experiment: Experiment) -> MAML:
    c = experiment.config
    inner_params = None
    if c.inner_params or experiment.outer_only:
        try:
            names = inner_param_names(experiment.model, c.inner_params or None)
        except ValueError as error:
            raise ConfigError(f"--set inner_params={','.join(c.inner_params)}: {error}") from None
        inner_params = [n for n in names if n not in experiment.outer_only]
        if not inner_params:
            raise ConfigError(f"--set inner_params={','.join(c.inner_params)} picks only parameters this model "
                              f"meta-learns without adapting ({', '.join(experiment.outer_only)}): pick others")
    return MAML(
        experiment.model,
        experiment.loss_fn,
        inner_lr=c.inner_lr,
        inner_steps=c.inner_steps,
        first_order=c.first_order,
        meta_sgd=c.meta_sgd,
        strategy=c.strategy,
        chunk_size=c.chunk_size or None,
        grad_checkpointing=c.grad_checkpointing,
        workers=c.workers or auto_workers(c.threads),
        compile=c.use_compile(),
        inner_params=inner_params,
        reuse_features=c.reuse_features,
    )


def auto_workers(threads: int) -> int:
    """``workers=0``: the CPU cores this process may use, shared by the processes torchrun started on
    this node, divided by the torch threads each worker uses (one task per core: 1.4-2.2x faster than
    one thread on 2 cores for the Omniglot conv net, benchmarks/results/bench_cpu_workers.md).
    Threads=0 (torch's default, all cores for every op) leaves no cores for workers: 1."""
    if threads < 1:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, cores // (threads * max(local_processes, 1)))
