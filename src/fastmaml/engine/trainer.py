"""The meta-training loop (Algorithm 2): sample tasks, meta-loss, Adam step; logs and checkpoints.

A run folder holds ``config.json`` (the resolved config), ``metrics.jsonl`` (one row per
``log_every`` iterations), ``checkpoint.safetensors`` (+ ``.prev``) and, with validation on,
``best.safetensors``. Resuming restores weights, optimiser state and both RNG streams, so on the
CPU N iterations + resume + M iterations equal N + M uninterrupted iterations bit for bit.

On one CUDA device (``cuda_graph``, the default) the meta-step (meta-gradient, clipping, Adam) is
captured in a CUDA graph after ``GRAPH_WARMUP`` eager iterations and replayed from then on, each
new task batch copied into the graph's input tensors first: the same kernels without Python and
launch overhead. On an H200, 1000 Omniglot 5-way 1-shot iterations (15 queries) took 21.8 s so
against 35.9 s eager (benchmarks/results/gpu_h200.md). ``tf32`` (off by default) lets cuDNN and
cuBLAS use TF32, as PyTorch does for convolutions by default: there it put relative errors of 1e-1
to 5e-1 into the second-order meta-gradients of the paper's conv nets, against 4e-4 to 3e-2
without, for 0.95x to 1.10x the time (same file).

``compile`` (``auto``: on for CPU runs of ``COMPILE_AUTO_MIN_ITERATIONS`` or more) builds MAML with
``compile=True``: the meta-loss runs through torch.compile, compiled during the first meta-step
(benchmarks/results/fewshot_cpu.md, "torch.compile").
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from fastmaml.config import RESUME_KEYS, TrainConfig, changed_since_checkpoint, to_dict
from fastmaml.core import TaskBatch
from fastmaml.engine import checkpoint
from fastmaml.engine.distributed import (
    Cluster,
    agree_before_group,
    check_device,
    check_one_gpu_per_process,
    device_for,
    init_from_env,
    launched_world_size,
    tf32_mode,
)
from fastmaml.engine.evaluate import adaptation_curves
from fastmaml.engine.experiment import Experiment, Preset, make_maml
from fastmaml.engine.run_dir import (
    BEST,
    CHECKPOINT,
    METRICS,
    check_snapshots_folder,
    clear_failed_start,
    config_mismatch,
    first_save,
    keep_snapshot,
    load_for_resume,
    prepare_new_run,
    read_metrics,
    remove_temporaries,
    snapshot_due,
    snapshot_path,
    state_problem,
    training_lock,
    write_config,
    write_metrics,
)
from fastmaml.engine.stopping import StopRequest, stop_now, stop_on_signals, stopped
from fastmaml.errors import (
    CheckpointError,
    ConfigError,
    FastMAMLError,
    NonFiniteLossError,
    iterations_span,
    kept_checkpoint,
)

log = logging.getLogger(__name__)


def log_row(row: dict[str, Any]) -> None:
    """``-v``: one line per logged metrics row (with --no-progress, a batch job showed nothing until the end)."""
    log.info("iteration %d: %s", row["step"], ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items() if k != "step"))

VAL_SEED_OFFSET = 7_919  # validation tasks come from their own fixed stream
GRAPH_WARMUP = 3  # eager iterations (on a side stream) before the meta-step is captured in a CUDA graph


@contextlib.contextmanager
def side_stream(device: torch.device):
    """Run the block on a fresh CUDA stream, ordered after and before the current one: the warm-up
    before a CUDA-graph capture, so that lazy initialisation happens outside the capture."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    try:
        with torch.cuda.stream(side):
            yield
    finally:
        torch.cuda.current_stream(device).wait_stream(side)


def joint_loss(experiment: Experiment, model: torch.nn.Module, batch: TaskBatch) -> torch.Tensor:
    """The pretrained baseline's objective: the loss on every point of every task, no adaptation."""
    x = torch.cat([batch.support_x, batch.query_x], 1).flatten(0, 1)
    y = torch.cat([batch.support_y, batch.query_y], 1).flatten(0, 1)
    return experiment.loss_fn(model(x), y)


class Trainer:
    """Owns the optimisers, RNG streams and run folder of one meta-training run."""

    def __init__(self, experiment: Experiment, run_dir: Path, cluster: Cluster = Cluster()) -> None:
        self.experiment = experiment
        self.config: TrainConfig = experiment.config
        self.run_dir = run_dir
        self.cluster = cluster
        self.device = torch.device(device_for(self.config.device))
        self.maml = make_maml(experiment).to(self.device)
        # CUDA graphs: one device, one process (gloo's all-reduce cannot be captured). Not with gradient
        # checkpointing at second order: checkpoint reads the GPU's random state, which a capture forbids
        # (the capture failed and the run went on eagerly after a warning)
        checkpointed = self.config.grad_checkpointing and not self.config.first_order
        self.graphed = self.config.cuda_graph and self.device.type == "cuda" and not cluster.active and not checkpointed
        if self.config.cuda_graph and self.device.type == "cuda" and not cluster.active and checkpointed:
            log.info("grad_checkpointing: the meta-step runs without a CUDA graph (checkpointing reads the GPU's "
                     "random state, which a graph capture cannot)")
        self.opt = torch.optim.Adam(self.maml.parameters(), lr=self.config.outer_lr, capturable=self.graphed)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_failed = False
        self._eager_steps = 0
        self._static: tuple[TaskBatch, torch.Tensor] | None = None  # the graph's input batch and output loss
        self._clipped_overflow = torch.zeros((), device=self.device)  # steps whose clipped norm was inf or NaN
        self.baseline = experiment.baseline.to(self.device) if experiment.baseline is not None else None
        self.baseline_opt = (
            torch.optim.Adam(self.baseline.parameters(), lr=self.config.outer_lr) if self.baseline else None
        )
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.step = 0
        self.elapsed = 0.0
        self.best: dict[str, Any] | None = None
        self.rows: list[dict[str, Any]] = []  # metrics so far, also kept in every checkpoint

    # ------------------------------------------------------------------ state
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {f"maml/{k}": v for k, v in self.maml.state_dict().items()}
        optim = {"maml": checkpoint.pack(self.opt.state_dict(), "opt/maml", tensors)}
        if self.baseline is not None:
            tensors.update({f"baseline/{k}": v for k, v in self.baseline.state_dict().items()})
            optim["baseline"] = checkpoint.pack(self.baseline_opt.state_dict(), "opt/baseline", tensors)
        tensors.update(checkpoint.rng_state_tensors(self.generator, self.device))
        meta = {
            "experiment": self.experiment.name,
            "config": to_dict(self.config),
            "step": self.step,
            "elapsed_s": self.elapsed,
            "optimizers": optim,
            "best": self.best,
            "metrics": self.rows,
        }
        return tensors, meta

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        problem = state_problem(meta, self.experiment.name)
        if problem:  # fit_in_run_dir says the checkpoint does not hold a run's full state, and what to do
            raise ValueError(problem)
        part = functools.partial(checkpoint.part, tensors)
        checkpoint.load_weights(self.maml, part("maml/"), self.run_dir)
        self.opt.load_state_dict(checkpoint.unpack(meta["optimizers"]["maml"], tensors))
        for group in self.opt.param_groups:  # a run may resume with or without CUDA graphs
            group["capturable"] = self.graphed
        for state in self.opt.state.values():  # capturable Adam keeps its step count on the GPU, eager on the CPU
            if "step" in state:
                state["step"] = state["step"].to(self.device if self.graphed else "cpu")
        if self.baseline is not None:
            checkpoint.load_weights(self.baseline, part("baseline/"), self.run_dir)
            self.baseline_opt.load_state_dict(checkpoint.unpack(meta["optimizers"]["baseline"], tensors))
        checkpoint.restore_rng(self.generator, tensors, self.device)
        self.step, self.elapsed, self.best = meta["step"], meta["elapsed_s"], meta.get("best")
        self.rows = meta["metrics"]

    def save(self, name: str = CHECKPOINT) -> None:
        tensors, meta = self.state()
        checkpoint.save(self.run_dir / name, tensors, meta, keep_previous=name == CHECKPOINT)

    # ------------------------------------------------------------------ steps
    def meta_step(self, batch: TaskBatch) -> torch.Tensor:
        """One outer update (Algorithm 2, line 10); returns this process's share of the meta-loss.

        Replays the captured CUDA graph where there is one (see the module docstring), else runs
        :meth:`eager_meta_step`.
        """
        if not self.graphed or self._graph_failed:
            return self.eager_meta_step(batch)
        if self._graph is None:
            if self._eager_steps < GRAPH_WARMUP:  # lazy initialisation happens outside the capture
                self._eager_steps += 1
                with side_stream(self.device):
                    return self.eager_meta_step(batch)
            with torch.cuda.device(self.device):  # the run's GPU, cuda:1 too (see _capture)
                return self._capture(batch)
        static_batch, static_loss = self._static
        if any(s.shape != b.shape or s.dtype != b.dtype for s, b in zip(static_batch, batch)):
            return self.eager_meta_step(batch)  # a batch of another shape: the graph does not fit it
        for s, b in zip(static_batch, batch):
            s.copy_(b, non_blocking=True)
        with torch.cuda.device(self.device):
            self._graph.replay()
        return static_loss.clone()

    def _capture(self, batch: TaskBatch) -> torch.Tensor:
        """Capture the meta-step on ``batch`` in a CUDA graph and replay it once (capturing runs nothing).
        On a stream of the run's own GPU: ``torch.cuda.graph`` otherwise captures on a stream of the
        current device, cuda:0, while a cuda:1 run's kernels go to cuda:1's stream, so the graph came
        out empty and its replays left the weights as they were (pytorch/pytorch#87894; found by
        reading, not yet run on two GPUs)."""
        static_batch = TaskBatch(*(t.clone() for t in batch))
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=torch.cuda.Stream(self.device)):
                static_loss = self.eager_meta_step(static_batch)
        except Exception as error:  # noqa: BLE001 - an op that cannot be captured: stay eager
            log.warning("the meta-step could not be captured in a CUDA graph (%s); running it eagerly", error)
            self._graph_failed = True
            return self.eager_meta_step(batch)
        self._graph, self._static = graph, (static_batch, static_loss)
        graph.replay()
        return static_loss.clone()

    def eager_meta_step(self, batch: TaskBatch) -> torch.Tensor:
        """The meta-step, op by op: the meta-gradient of the whole meta-batch is accumulated over
        micro-batches of tasks (lower peak memory, same gradient) and summed over processes."""
        local, share = self.cluster.shard(batch)
        self.opt.zero_grad(set_to_none=True)
        # MAML.meta_backward goes task by task under the loop strategy (in `workers` threads).
        size = self.config.micro_batch_size or local.num_tasks
        total = torch.zeros((), device=self.device)
        for start in range(0, local.num_tasks, size):
            chunk = local.slice(start, start + size)
            total += self.maml.meta_backward(chunk, scale=share * chunk.num_tasks / local.num_tasks)
        self._finish_step(self.maml.parameters(), self.opt, self.config.grad_clip)
        return total

    def baseline_step(self, batch: TaskBatch) -> torch.Tensor:
        local, share = self.cluster.shard(batch)
        self.baseline_opt.zero_grad(set_to_none=True)
        loss = joint_loss(self.experiment, self.baseline, local) * share
        loss.backward()
        self._finish_step(self.baseline.parameters(), self.baseline_opt, 0.0)
        return loss.detach()

    def _finish_step(self, params, opt: torch.optim.Optimizer, clip: float) -> None:
        params = [p for p in params if p.grad is not None]
        self.cluster.sum_(p.grad for p in params)
        if clip > 0 and self.config.grad_clip_mode == "value" and params:
            # an inf element would become ±clip and a NaN stay NaN: count the step as overflowed first
            peaks = torch._foreach_norm([p.grad for p in params], math.inf)
            self._clipped_overflow += ~torch.stack(peaks).isfinite().all()
            torch.nn.utils.clip_grad_value_(params, clip)
        elif clip > 0:  # an inf norm scales the gradient to 0 (finite): Adam's state would not show it
            self._clipped_overflow += ~torch.isfinite(torch.nn.utils.clip_grad_norm_(params, clip))
        opt.step()

    def nonfinite_state(self) -> list[bool]:
        """Whether MAML's and the baseline's weights or Adam moments hold an inf or NaN. A gradient can
        overflow while the loss stays finite (inner_lr 1e4: losses of 1e26, a squared gradient past
        float32's range), and Adam keeps it: its second moment stays inf (the weights then never move
        again) or its moments and weights turn NaN; with grad_clip, an overflowing norm scales the
        gradient to 0 instead, which the clip's norm shows. Checked where the losses are, at each log, so
        it costs nothing per iteration."""
        def bad(module: torch.nn.Module, opt: torch.optim.Optimizer) -> bool:
            # Adam's step count is left out: a CPU scalar beside CUDA moments unless Adam is capturable
            moments = [v for state in opt.state.values() for k, v in state.items() if k != "step"]
            tensors = [t for t in (*module.parameters(), *moments)  # (an empty tensor has no max)
                       if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() > 0]
            if not tensors:
                return False
            # the largest |value| of each tensor: inf or NaN exactly where one is (an L2 norm overflows
            # on finite values past 1e19)
            peaks = torch._foreach_norm(tensors, math.inf)
            return not torch.stack([p.to(peaks[0].device) for p in peaks]).isfinite().all().item()

        maml = bad(self.maml, self.opt) or self._clipped_overflow.item() > 0
        return [maml, self.baseline is not None and bad(self.baseline, self.baseline_opt)]

    def validate(self) -> float:
        """The first metric after ``eval_steps`` inner steps, mean over ``val_tasks`` validation tasks."""
        generator = torch.Generator().manual_seed(self.config.seed + VAL_SEED_OFFSET)
        curves = adaptation_curves(
            self.maml, self.experiment, "val", self.config.val_tasks, self.config.eval_steps, generator
        )
        return curves[:, -1, 0].mean().item()

    # ------------------------------------------------------------------ loop
    def fit(self, progress: bool = True, stop: StopRequest | None = None) -> dict[str, Any]:
        """Meta-train to ``config.iterations``. ``stop`` (from :func:`stop_on_signals`): once it is
        requested, log and save at the iteration reached, then raise TrainingStopped."""
        c = self.config
        metric_name = next(iter(self.experiment.metrics))
        sums = torch.zeros(2, device=self.device)  # meta-loss, baseline loss since the last log
        since, last_good = self.step, self.step
        main = self.cluster.is_main
        bar = tqdm(total=c.iterations, initial=self.step, disable=not (progress and main) or self.step >= c.iterations,
                   desc=self.experiment.name, dynamic_ncols=True, mininterval=0.5)
        compiling = self.maml.compile and self.step < c.iterations  # the first step compiles (seconds to minutes)
        if compiling:
            bar.set_postfix_str("compiling the meta-step with torch.compile (once)", refresh=True)
        started = time.perf_counter()
        validating = 0.0  # seconds this call spent on validation (not training time: not in elapsed_s)
        with open(self.run_dir / METRICS, "a") if main else contextlib.nullcontext() as metrics_file:
            while self.step < c.iterations:
                batch = self.experiment.sample(self.generator, "train", c.meta_batch_size).to(self.device)
                sums[0] += self.meta_step(batch)
                if self.baseline is not None:
                    sums[1] += self.baseline_step(batch)
                self.step += 1
                if compiling:  # time the rate from here: the compile made the first step's ETA hours long
                    compiling = False
                    bar.set_postfix_str("", refresh=False)
                    bar.reset(total=c.iterations)
                    bar.initial = bar.n = self.step
                    bar.refresh()
                else:
                    bar.update(1)
                log_now = self.step % c.log_every == 0 or self.step == c.iterations
                snapshot_now = snapshot_due(self.step, c.snapshot_every)
                save_now = self.step % c.checkpoint_every == 0 or self.step == c.iterations or snapshot_now
                val_now = c.val_every > 0 and (self.step % c.val_every == 0 or self.step == c.iterations)
                stopping = stop_now(stop, self.cluster, log_now or save_now or val_now)
                if not (log_now or save_now or val_now or stopping):
                    continue
                save_now = save_now or stopping
                self.cluster.sum_([sums])
                means = (sums / (self.step - since)).tolist()  # one host sync per log, not per step
                bad_grads = self.nonfinite_state()  # the same on every process: gradients are summed first
                if not all(math.isfinite(v) for v in means) or any(bad_grads):
                    bar.close()
                    what = (f"the meta-loss became {means[0]}" if not math.isfinite(means[0]) else
                            f"the pretrained baseline's loss became {means[1]}" if not math.isfinite(means[1]) else
                            "the meta-gradient overflowed (inf or NaN) while the meta-loss was "
                            f"{means[0]:.3g}" if bad_grads[0] else
                            "the pretrained baseline's gradient overflowed (inf or NaN)")
                    # clipping bounds the step, not a gradient that overflows: advised only for a NaN loss
                    loss_diverged = not all(math.isfinite(v) for v in means)
                    clip = ", or set grad_clip" if c.grad_clip == 0 and loss_diverged else ""
                    raise NonFiniteLossError(
                        f"{what} {iterations_span(since + 1, self.step)}; training stopped and "
                        f"{kept_checkpoint(self.run_dir, last_good, first_save(c))}. "
                        f"Lower inner_lr or outer_lr{clip}, then start a new run."
                    )
                now = time.perf_counter()
                self.elapsed += now - started
                started = now
                row: dict[str, Any] = {"step": self.step, "meta_loss": means[0], "elapsed_s": round(self.elapsed, 3)}
                if self.baseline is not None:
                    row["baseline_loss"] = means[1]
                self.rows.append(row)  # before a best checkpoint is saved: its rows end with its own
                if val_now and main:
                    bar.set_postfix_str(f"validating on {c.val_tasks} tasks", refresh=True)
                    value = self.validate()
                    row[f"val_{metric_name}"] = value
                    # a NaN or inf validation (adapting diverged) is never the best: nothing compares above a NaN
                    better = math.isfinite(value) and (self.best is None or not math.isfinite(self.best["value"]) or (
                        value > self.best["value"] if self.experiment.higher_is_better else value < self.best["value"]
                    ))
                    if better:
                        self.best = {"step": self.step, "metric": metric_name, "value": value}
                        self.save(BEST)
                    started = time.perf_counter()  # validation time is not training time
                    validating += started - now
                    if not stopping and not self.cluster.active and stop is not None and stop.requested:
                        # a Ctrl-C during validation (seconds to a minute): stop here, not after another iteration
                        stopping = save_now = True
                if main:
                    metrics_file.write(json.dumps(row) + "\n")
                    metrics_file.flush()
                    log_row(row)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k not in ("step", "elapsed_s")})
                sums.zero_()
                since = self.step
                if save_now:
                    if main:
                        self.save()
                        if snapshot_now:
                            keep_snapshot(self.run_dir, self.step)
                    last_good = self.step
                if stopping and self.step < c.iterations:
                    bar.close()
                    raise stopped(stop, self.run_dir, self.step)
        bar.close()
        return {"step": self.step, "elapsed_s": self.elapsed, "best": self.best, "compiled": self.maml.compile,
                "validation_s": validating}


def train(
    preset: Preset, config: TrainConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Meta-train ``preset`` with ``config`` into ``run_dir`` (or continue it with ``resume``)."""
    run_dir = Path(run_dir)
    launched = launched_world_size() > 1
    config.validate(data=not launched)  # the settings: the same in every process
    check_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    if launched:  # each node's copy of the data, one outcome for all: none waits for a node that failed
        check_one_gpu_per_process(config.device)
        agree_before_group("validate", config.validate)
    cluster = init_from_env(config.device, config.meta_batch_size)

    def make_trainer() -> Trainer:
        torch.manual_seed(config.seed)  # model initialisation, identical on every process
        return Trainer(preset.build(config), run_dir, cluster)

    with tf32_mode(config.device, config.tf32):  # restored after: a caller's later code keeps its own precision
        return fit_in_run_dir(run_dir, preset.name, config, cluster, make_trainer, resume=resume, progress=progress)


def fit_in_run_dir(
    run_dir: Path, preset_name: str, config: Any, cluster: Cluster, make_trainer, *, resume: bool, progress: bool
) -> dict[str, Any]:
    """The part of a ``train`` command every kind of run shares: rank 0 makes the run folder (or, to
    resume, reads its checkpoint and sends it to the other processes, whose nodes need not have the
    folder), ``make_trainer()`` builds the trainer (an object with ``restore``, ``rows``, ``step`` and
    ``fit``), a resume restores it and trims the metrics to its checkpoint, then it trains; the
    process group is closed after a barrier, or at once after an error. Rank 0 holds the run's
    :func:`training_lock` throughout."""
    with contextlib.ExitStack() as held:  # rank 0's lock, taken before it reads or writes the folder

        def lock_and_load() -> tuple[dict[str, torch.Tensor], dict[str, Any], Path]:
            held.enter_context(training_lock(run_dir))
            check_snapshots_folder(run_dir)  # a file named snapshots: fail now, not at the first snapshot
            loaded = load_for_resume(run_dir)
            remove_temporaries(run_dir)  # after: a killed first write marks a failed start, which --out reuses
            return loaded

        def make_new_run() -> None:
            prepare_new_run(run_dir)
            locked = held.enter_context(training_lock(run_dir))
            prepare_new_run(run_dir)  # again under the lock: what it found may have changed before it was held
            if not locked and read_metrics(run_dir):  # no lock here: a start still running may own those rows
                raise CheckpointError(f"{run_dir} holds the logged rows of a start that reached no checkpoint, and "
                                      "this file system cannot lock the folder to tell whether it still runs; if "
                                      f"no process trains it, delete {run_dir / METRICS} and start again")
            clear_failed_start(run_dir)
            write_config(run_dir, preset_name, config)

        # rank 0 alone touches the folder; a user error there (a folder that is not empty, locked or not
        # writable) is raised on every rank, and the folder exists before any process goes on
        if resume:
            tensors, meta, loaded = cluster.from_main(lock_and_load)
            edited = changed_since_checkpoint(config, meta.get("config"))
            if edited:  # the same on every rank: all read the same checkpoint and config
                cluster.close(clean=False)
                raise ConfigError(f"{config_mismatch(run_dir, 'it resumes from', edited)}; a resumed run keeps its "
                                  f"config (only {', '.join(sorted(RESUME_KEYS))} may change): restore the one that "
                                  "changed, or start a new run with the new setting")
        else:
            cluster.from_main(make_new_run)
        trainer = make_trainer()
        if resume:
            try:
                trainer.restore(tensors, meta)
            except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as error:
                # a checkpoint edited or written by something else: readable safetensors that lack what a
                # run's checkpoint holds (not an error of this program's own, nor memory running out)
                if isinstance(error, FastMAMLError) or isinstance(error, getattr(torch, "OutOfMemoryError", ())):
                    raise
                cluster.close(clean=False)
                prev = checkpoint.previous_path(Path(run_dir) / CHECKPOINT)
                fix = (f"move {CHECKPOINT} away to resume from {prev.name}" if loaded.name == CHECKPOINT
                       and prev.is_file() else "restore a good checkpoint from a copy")
                raise CheckpointError(
                    f"{loaded} does not hold a run's full state ({type(error).__name__}: {str(error)[:200]}); "
                    f"{fix}, or start a new run in another folder"
                ) from None
            if config.iterations < trainer.step:  # the same on every rank: all restored the same checkpoint
                cluster.close(clean=False)
                raise ConfigError(f"{run_dir} is at iteration {trainer.step}, past the {config.iterations} "
                                  f"iterations asked for; give --iterations above {trainer.step} to train it further")
            if cluster.is_main:
                write_metrics(run_dir, trainer.rows)  # drops rows logged after the checkpoint, before a crash
                write_config(run_dir, preset_name, config)  # iterations may have been extended
                kept = snapshot_path(run_dir, trainer.step)
                if snapshot_due(trainer.step, config.snapshot_every) and not kept.is_file():
                    keep_snapshot(run_dir, trainer.step, loaded)  # stopped after that checkpoint, before its copy
            log.info("resuming %s at iteration %d", run_dir, trainer.step)
        start = trainer.step
        try:
            with stop_on_signals(announce=cluster.is_main) as stop:
                result = trainer.fit(progress=progress, stop=stop)
        except BaseException:
            cluster.close(clean=False)
            raise
        cluster.close()
        return {**result, "start_step": start}
