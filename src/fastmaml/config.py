"""Run configuration: small dataclasses with defaults in code, ``key=value`` overrides, JSON round trip.

Every experiment's config extends :class:`TrainConfig`. Unknown keys are an error; the resolved
config is saved with every run (``RUN_DIR/config.json``) and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from typing import Any, ClassVar

from fastmaml.algorithms.maml import STRATEGIES
from fastmaml.errors import ConfigError

COMPILE_CHOICES = ("auto", "on", "off")
# grad_clip's rule: the global norm (torch's clip_grad_norm_) or each element to [-grad_clip, grad_clip]
# (clip_grad_value_, the original MAML code's tf.clip_by_value on MiniImagenet)
GRAD_CLIP_MODES = ("norm", "value")
# compile=auto compiles runs this long: compiling costs seconds to 3 minutes once per process (less
# from inductor's on-disk cache) and saved 0.03-1.1 s per iteration on the few-shot presets
# (benchmarks/results/fewshot_cpu.md), about 1.5 ms on the sinusoid MLP's 4 ms step
# (bench_cpu_compile.md); short runs (tests, smoke runs) stay eager.
COMPILE_AUTO_MIN_ITERATIONS = 1_000


@dataclasses.dataclass
class TrainConfig:
    """Settings shared by every meta-training run (names as in the paper: α = inner_lr, β = outer_lr)."""

    inner_lr: float = 0.01
    inner_steps: int = 1
    eval_steps: int = 10  # inner steps at meta-test time
    first_order: bool = False
    meta_sgd: bool = False
    # the parameters the inner loop adapts, names or name prefixes (empty: all); the others are
    # meta-learned only, e.g. inner_params=head adapts the conv net's last layer alone (ANIL)
    inner_params: tuple[str, ...] = ()
    # with inner_params leaving the body out: compute its features once per task (MAML(reuse_features))
    reuse_features: bool = True
    outer_lr: float = 0.001
    meta_batch_size: int = 25
    iterations: int = 70_000
    grad_clip: float = 0.0  # clip the meta-gradient norm (0: off)
    grad_clip_mode: str = "norm"  # norm: scale the whole meta-gradient to norm <= grad_clip | value: each element
    seed: int = 0
    log_every: int = 100
    checkpoint_every: int = 5_000
    snapshot_every: int = 0  # also keep snapshots/iteration_NNNNNN.safetensors every N iterations (0: none)
    val_every: int = 0  # evaluate on held-out tasks every N iterations and keep the best (0: off)
    val_tasks: int = 100
    strategy: str = "auto"  # auto | vmap | loop | hybrid (first inner step vectorised, then a loop)
    chunk_size: int = 0  # tasks vectorised at once under vmap (0: all)
    micro_batch_size: int = 0  # tasks per backward pass; gradients accumulate (0: the whole meta-batch)
    grad_checkpointing: bool = False  # recompute inner steps in backward: memory flat in inner_steps (2nd order)
    device: str = "cpu"
    threads: int = 0  # torch intra-op threads (0: torch's default)
    workers: int = 0  # threads computing tasks' meta-gradients in parallel (CPU, loop or vmap; 0: auto)
    cuda_graph: bool = True  # on one CUDA device: capture the meta-step once, replay it every iteration
    tf32: bool = False  # on CUDA: let convolutions/matmuls use TF32 (faster, far less exact meta-gradients)
    compile: str = "auto"  # torch.compile the meta-loss: on | off | auto (on for CPU runs of >= 1,000 iterations)

    # keys ``fastmaml eval --set`` may change: they neither shape the trained weights nor train them
    EVAL_KEYS: ClassVar[tuple[str, ...]] = ("inner_lr", "strategy", "chunk_size", "device", "threads", "workers",
                                           "tf32")

    def validate(self, data: bool = True) -> None:
        """ConfigError for a value out of range. ``data=False`` leaves out the checks that read the data
        set (a few-shot preset's images, a table's CSV): what ``plot`` and ``adapt`` need of a run's
        config does not depend on the data it was meta-trained on."""
        check_finite(self)
        positive = ("inner_lr", "outer_lr")
        at_least_one = ("inner_steps", "meta_batch_size", "iterations", "log_every", "checkpoint_every", "val_tasks")
        for key in positive:
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key} must be > 0, got {getattr(self, key)}; set e.g. --set {key}=0.01")
        for key in at_least_one:
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        check_seed(self.seed)
        for key in ("eval_steps", "val_every", "chunk_size", "micro_batch_size", "threads", "grad_clip", "workers",
                    "snapshot_every"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.grad_checkpointing and self.strategy in ("vmap", "hybrid") and not self.first_order:
            raise ConfigError("grad_checkpointing runs one task at a time: use --set strategy=auto or loop")
        if self.grad_clip_mode not in GRAD_CLIP_MODES:
            raise ConfigError(f"grad_clip_mode must be one of {', '.join(GRAD_CLIP_MODES)}, "
                              f"got {self.grad_clip_mode!r}")
        if self.compile not in COMPILE_CHOICES:
            raise ConfigError(f"compile must be one of {', '.join(COMPILE_CHOICES)}, got {self.compile!r}")
        if self.compile == "on" and self.strategy == "hybrid":
            raise ConfigError("compile runs the vmap or loop strategy: use --set compile=off with strategy=hybrid")
        if self.compile == "on" and self.grad_checkpointing and not self.first_order:
            raise ConfigError("compile and grad_checkpointing do not combine: set one of them off")
        if self.compile == "on" and self.device.startswith("cuda"):
            raise ConfigError("compile=on is refused on CUDA devices: torch.compile gave a wrong meta-gradient "
                              "there (benchmarks/results/gpu_h200.md); leave compile at auto or off (the CUDA "
                              "graph, cuda_graph=true, is the GPU's speed lever)")

    def use_compile(self) -> bool:
        """Whether the meta-loss runs through torch.compile. ``auto``: on the CPU, for runs of at least
        ``COMPILE_AUTO_MIN_ITERATIONS`` iterations, with a strategy and options that compile."""
        if self.compile != "auto":
            return self.compile == "on"
        compilable = self.strategy != "hybrid" and not (self.grad_checkpointing and not self.first_order)
        return compilable and self.device.startswith("cpu") and self.iterations >= COMPILE_AUTO_MIN_ITERATIONS


# What may change on --resume: the schedule and how (not what) is computed, and where the data lives.
RESUME_KEYS = {"iterations", "log_every", "checkpoint_every", "snapshot_every", "device", "threads", "sim_threads",
               "workers", "micro_batch_size", "chunk_size", "grad_checkpointing", "cuda_graph", "tf32", "compile",
               "reuse_features",
               "root", "cache_dir"}


# Keys a hand edit of config.json may change on resume: a table run's CSV moved (its content is
# checked against csv_sha256, which is compared).
RELOCATABLE_KEYS = {"csv"}


def changed_since_checkpoint(config: Any, saved: dict[str, Any] | None, written: Any = None) -> list[str]:
    """The keys outside RESUME_KEYS whose value in ``config`` (read from config.json) differs from
    ``saved``, the config stored in the checkpoint a run resumes from (keys it lacks, from an older
    version, are not compared; nor are keys missing from ``written``, the config as config.json holds
    it, where given): a config.json edited by hand."""
    if not isinstance(saved, dict):
        return []
    now = json.loads(json.dumps(to_dict(config)))  # tuples as lists, as the checkpoint's JSON holds them
    return [f"{key} = {json.dumps(now[key])} in config.json, {json.dumps(saved[key])} in the checkpoint"
            for key in now if key not in RESUME_KEYS | RELOCATABLE_KEYS and key in saved and now[key] != saved[key]
            and (not isinstance(written, dict) or key in written)]


# The largest magnitude a float setting may have: float32 holds 3.4e38, and a learning rate of 1e38
# overflowed inside Adam (lr / (1 - beta1)) or Meta-SGD's rates, a traceback instead of an error.
MAX_SETTING = 1e30
# The most threads (torch's, a worker pool's, the simulators') a setting may ask for: torch segfaulted
# (exit 139, no message) on set_num_threads(100000); 1024 is far above any CPU's cores.
MAX_THREADS = 1024
THREAD_KEYS = ("threads", "workers", "sim_threads")


def check_finite(config: Any) -> None:
    """ConfigError for a float setting (or a float in a tuple setting) that is NaN, infinite or beyond
    ``MAX_SETTING`` in magnitude: checks written as ``x > 0`` let inf through, and nan through ``x < 0``
    (max_kl=inf or cg_damping=nan trained a policy that never moved). Also for a thread count above
    ``MAX_THREADS``."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        values = value if isinstance(value, tuple) else (value,)
        shown = value if isinstance(value, tuple) else None
        bad = [v for v in values if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise ConfigError(f"{field.name} must be a finite number, got {shown or bad[0]}")
        huge = [v for v in values if isinstance(v, float) and abs(v) > MAX_SETTING]
        if huge:
            raise ConfigError(f"{field.name} = {shown or huge[0]} is beyond what float32 training can hold; "
                              f"give a value of at most {MAX_SETTING:g} in magnitude")
        if field.name in THREAD_KEYS and isinstance(value, int) and value > MAX_THREADS:
            raise ConfigError(f"{field.name} = {value} is more threads than fastmaml starts (at most {MAX_THREADS}); "
                              f"give at most this machine's cores ({os.cpu_count()})")


def check_seed(seed: int) -> None:
    """ConfigError unless ``seed`` fits torch's generators (a larger one overflowed with a traceback)."""
    if not 0 <= seed < 2**63:
        raise ConfigError(f"seed must be in [0, 2^63), got {seed}")


def check_task_count(tasks: int, name: str = "--tasks") -> None:
    """ConfigError unless ``tasks`` meta-test tasks can give a 95% interval (one task reported 0)."""
    if tasks < 2:
        raise ConfigError(f"{name} must be >= 2 (a 95% interval needs two tasks or more), got {tasks}")


def check_hidden(hidden: tuple[int, ...]) -> None:
    """Hidden layer widths: each >= 1 (none at all, ``hidden=``, is a linear model)."""
    if any(width < 1 for width in hidden):
        raise ConfigError(f"hidden layer widths must be >= 1, got {','.join(map(str, hidden))}; leave a layer out "
                          "instead (hidden= with nothing after it is a linear model)")


def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _parse(key: str, text: str, kind: Any) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    try:
        if kind is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind in (int, float, str):
            return kind(text)
        if origin is tuple:
            items = [s for s in text.strip("[]() ").split(",") if s.strip()]
            item_type = args[0]
            values = tuple(item_type(s.strip()) for s in items)
            if args[-1] is not Ellipsis and len(values) != len(args):
                raise ValueError
            return values
    except ValueError:
        pass
    else:
        raise ConfigError(f"cannot set {key}: unsupported type {kind}")
    raise ConfigError(f"bad value for {key}: {text!r} is not a {getattr(kind, '__name__', kind)}")


def parse_overrides(config_cls: type, overrides: list[str]) -> dict[str, Any]:
    """The ``key=value`` strings as {key: value of the key's type} for ``config_cls``; unknown keys
    are an error."""
    types = field_types(config_cls)
    changes = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        if key not in types:
            raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(sorted(types))}")
        changes[key] = _parse(key, value.strip(), types[key])
    return changes


def apply_overrides(config: Any, overrides: list[str]) -> Any:
    """Return ``config`` with ``key=value`` strings applied; unknown keys are an error."""
    return dataclasses.replace(config, **parse_overrides(type(config), overrides))


# ``fastmaml eval --set`` keys that change how or where meta-testing runs, not what it computes (up
# to the summation order of floating-point sums; the device also picks other kernels): a report made
# with only these is the run's own and is saved. A config may add keys of its own with a method
# ``execution_keys()`` (the few-shot configs: ``root`` of a data set whose loader checks its content).
EXECUTION_KEYS = ("threads", "workers", "strategy", "chunk_size", "device", "cache_dir")


def protocol_overrides(overrides: list[str] | tuple[str, ...], config: Any = None) -> list[str]:
    """The ``key=value`` items of ``overrides`` that change the meta-test protocol of a run with
    ``config`` (not ``EXECUTION_KEYS``, nor the config's own ``execution_keys()``)."""
    execution = EXECUTION_KEYS + (tuple(config.execution_keys()) if hasattr(config, "execution_keys") else ())
    return [item for item in overrides if item.partition("=")[0].strip() not in execution]


def apply_eval_overrides(config: Any, overrides: list[str], data: bool = True) -> Any:
    """``config`` with ``key=value`` strings applied to meta-test a trained run (``fastmaml eval --set``).

    Only the config class's ``EVAL_KEYS`` may change: the others shape the trained weights (a
    checkpoint would not load) or only matter while training (changing them would change nothing)."""
    allowed = getattr(type(config), "EVAL_KEYS", ())
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key not in allowed:
            raise ConfigError(
                f"eval --set cannot change {key!r}: it is unknown, shapes the trained model or only matters in "
                f"training; keys that change meta-testing: {', '.join(allowed)}"
            )
        if key == "inner_lr" and getattr(config, "meta_sgd", False):
            raise ConfigError("--set inner_lr: this Meta-SGD run learned its inner learning rates; they are used")
    config = apply_overrides(config, overrides)
    config.validate(data=data)
    return config


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _saved_value(key: str, value: Any, kind: Any) -> Any:
    """``value`` as read from JSON for a field of type ``kind`` (lists back to tuples; an int where a
    float is due is a float); ConfigError if it has another type (a hand-edited config file)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is tuple and isinstance(value, list | tuple):
        item_types = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        if len(item_types) == len(value):
            return tuple(_saved_value(key, v, t) for v, t in zip(value, item_types))
    elif kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    elif kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif kind in (bool, str) and isinstance(value, kind):
        return value
    raise ConfigError(f"{key} = {json.dumps(value)} is not a {getattr(kind, '__name__', kind)}")


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a config saved by :func:`to_dict` (lists back to tuples); unknown keys and values of
    the wrong type are an error."""
    types = field_types(cls)
    unknown = set(data) - set(types)
    if unknown:
        raise ConfigError(f"unknown config keys {sorted(unknown)} for {cls.__name__}")
    return cls(**{k: _saved_value(k, v, types[k]) for k, v in data.items()})


def dumps(config: Any) -> str:
    return json.dumps(to_dict(config), indent=2, sort_keys=True)
