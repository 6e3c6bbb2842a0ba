"""Meta-training throughput and peak memory of fastmaml against the alternatives (``fastmaml bench``).

One meta-iteration = zero the gradients, the meta-gradient of the mean query loss after
``inner_steps`` inner steps (Algorithm 2, lines 3-10), one Adam step. Data is random tensors of
the paper's shapes, generated once, so only the meta-step is timed. For each workload and order,
every implementation gets its own copy of the same initial model; first their meta-gradients at
that initialisation are compared with fastmaml's, then they are timed *interleaved* (one iteration
of each in turn, rotating the order) so that a change in machine load hits all of them alike.
tasks/s = meta-batch / median seconds per iteration.

Peak memory is measured apart from timing: on the CPU in one fresh subprocess per workload and
implementation, the peak resident size during one meta-iteration (Linux VmHWM, reset just before)
minus the resident size before it; on a GPU ``torch.cuda.max_memory_allocated`` minus the memory
allocated before.

Implementations: fastmaml (``strategy="auto"``, ``"vmap"``, ``"loop"``, ``"hybrid"``), a plain per-task
``torch.func`` loop written here without fastmaml, and, when installed, learn2learn 0.2.0 and
higher 0.2.1, each written the way its own examples write MAML. Peers are optional imports: a
missing one gives a row that says so. On a GPU also "fastmaml cuda graph": fastmaml's meta-gradient
captured in a CUDA graph and replayed, as ``fastmaml train`` runs it there.

    fastmaml bench --workloads sinusoid --repeats 20
    python benchmarks/bench.py --out benchmarks/results/bench_cpu.md --sweep   # + learn2learn's import shim
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastmaml.algorithms import MAML
from fastmaml.config import MAX_THREADS
from fastmaml.core import TaskBatch
from fastmaml.engine.distributed import check_device
from fastmaml.engine.trainer import GRAPH_WARMUP, side_stream
from fastmaml.errors import ConfigError, FastMAMLError
from fastmaml.models.conv import ConvNet
from fastmaml.models.mlp import MLP

try:
    import resource
except ImportError:  # not on Windows: peak memory is then reported as unknown on the CPU
    resource = None

log = logging.getLogger(__name__)

MiB = 2**20
MetaStep = Callable[[TaskBatch], None]  # accumulates the meta-gradient of one batch into .grad


# ----------------------------------------------------------------------------------------- workloads
@dataclass(frozen=True)
class Workload:
    """One of the paper's meta-training set-ups: model, loss, inner loop and task-batch shapes."""

    name: str
    description: str
    make_model: Callable[[], nn.Module]
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    inner_lr: float
    inner_steps: int
    meta_batch_size: int
    make_batch: Callable[[torch.Generator, int], TaskBatch]  # (generator, tasks) -> batch

    def batch(self, seed: int = 0, device: str | torch.device = "cpu") -> TaskBatch:
        return self.make_batch(torch.Generator().manual_seed(seed), self.meta_batch_size).to(device)


def sinusoid_batch(generator: torch.Generator, tasks: int, shots: int = 10) -> TaskBatch:
    """y = A sin(x − φ), A ~ U[0.1, 5], φ ~ U[0, π], x ~ U[−5, 5]; K support and K query points."""
    amplitude = torch.rand(tasks, 1, 1, generator=generator) * 4.9 + 0.1
    phase = torch.rand(tasks, 1, 1, generator=generator) * torch.pi
    x = torch.rand(tasks, 2 * shots, 1, generator=generator) * 10 - 5  # (T, 2K, 1)
    y = amplitude * torch.sin(x - phase)
    return TaskBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:])


def image_batch(
    generator: torch.Generator, tasks: int, ways: int, shots: int, queries: int, channels: int, size: int
) -> TaskBatch:
    """Random images of few-shot classification tasks: ways x shots support, ways x queries query."""
    images = lambda per_class: torch.rand(tasks, ways * per_class, channels, size, size, generator=generator)  # noqa: E731
    labels = lambda per_class: torch.arange(ways).repeat_interleave(per_class).expand(tasks, -1)  # noqa: E731
    return TaskBatch(images(shots), labels(shots), images(queries), labels(queries))


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("sinusoid", "sinusoid, MLP 40-40, K=10, meta-batch 25, 1 step",
                 lambda: MLP(1, 1, (40, 40)), F.mse_loss, 0.01, 1, 25, sinusoid_batch),
        Workload("omniglot-5w1s", "Omniglot 5-way 1-shot, conv 64, meta-batch 32, 15 queries, 1 step",
                 lambda: ConvNet(1, 5, hidden=64), F.cross_entropy, 0.4, 1, 32,
                 lambda g, t: image_batch(g, t, ways=5, shots=1, queries=15, channels=1, size=28)),
        Workload("omniglot-20w1s", "Omniglot 20-way 1-shot, conv 64, meta-batch 16, 5 queries, 5 steps",
                 lambda: ConvNet(1, 20, hidden=64), F.cross_entropy, 0.1, 5, 16,
                 lambda g, t: image_batch(g, t, ways=20, shots=1, queries=5, channels=1, size=28)),
        Workload("miniimagenet-5w1s", "MiniImagenet 5-way 1-shot, conv 32, 84x84, meta-batch 4, 15 queries, 5 steps",
                 lambda: ConvNet(3, 5, hidden=32, image_size=84, max_pool=True), F.cross_entropy, 0.01, 5, 4,
                 lambda g, t: image_batch(g, t, ways=5, shots=1, queries=15, channels=3, size=84)),
    )
}


# ----------------------------------------------------------------------------------------- implementations
class Unavailable(Exception):
    """An implementation that cannot run here (a peer that is not installed or does not import)."""


@dataclass(frozen=True)
class Implementation:
    """``build(model, workload, first_order) -> meta_step``; ``meta_step(batch)`` adds the meta-gradient
    of the batch's mean query loss to ``model``'s ``.grad`` (the caller zeroes and steps)."""

    name: str
    build: Callable[[nn.Module, Workload, bool], MetaStep]
    strategy: str | None = None  # fastmaml's plain strategy; a row equal to what "auto" picks is not re-timed


def fastmaml_step(
    strategy: str = "auto",
    chunk_size: int | None = None,
    micro_batch_size: int | None = None,
    grad_checkpointing: bool = False,
    workers: int = 1,
    compile: bool = False,
):
    """fastmaml's meta-step as the trainer runs it (``MAML.meta_backward``); with ``micro_batch_size``
    the meta-batch is run that many tasks at a time, each micro-batch's share of the mean
    backpropagated before the next (the trainer's accumulation); ``grad_checkpointing`` recomputes
    the inner steps during backward; ``workers`` threads compute the tasks' meta-gradients;
    ``compile`` runs the meta-loss through ``torch.compile`` (compiled in the warm-up iterations)."""

    def build(model: nn.Module, w: Workload, first_order: bool) -> MetaStep:
        maml = MAML(model, w.loss_fn, inner_lr=w.inner_lr, inner_steps=w.inner_steps, first_order=first_order,
                    strategy=strategy, chunk_size=chunk_size, grad_checkpointing=grad_checkpointing,
                    workers=workers, compile=compile)

        def step(batch: TaskBatch) -> None:
            size = micro_batch_size or batch.num_tasks
            for start in range(0, batch.num_tasks, size):
                chunk = batch.slice(start, start + size)
                maml.meta_backward(chunk, scale=chunk.num_tasks / batch.num_tasks)

        step.refused_compile = lambda: compile and not maml.compile  # its check ran it eagerly after all
        return step

    return build


def cuda_graph_step(model: nn.Module, w: Workload, first_order: bool) -> MetaStep:
    """fastmaml's meta-gradient (``strategy="auto"``) captured once in a CUDA graph and replayed, each
    batch copied into the graph's inputs first, as ``fastmaml train`` does on one GPU (``cuda_graph``;
    the trainer captures Adam too, here the caller's Adam step stays eager). CUDA only."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        raise Unavailable("CUDA graphs need a CUDA device")
    maml = MAML(model, w.loss_fn, inner_lr=w.inner_lr, inner_steps=w.inner_steps, first_order=first_order)
    params = [p for p in model.parameters() if p.requires_grad]
    state: dict = {}

    def capture(batch: TaskBatch) -> None:
        saved = [p.grad for p in params]
        with side_stream(device):  # as the trainer warms up
            for _ in range(GRAPH_WARMUP):
                for p in params:
                    p.grad = None
                maml.meta_backward(batch)
        for p in params:
            p.grad = None  # the captured backward allocates the gradients in the graph's memory
        state["inputs"] = TaskBatch(*(t.clone() for t in batch))
        state["graph"] = graph = torch.cuda.CUDAGraph()
        with torch.cuda.device(device), torch.cuda.graph(graph, stream=torch.cuda.Stream(device)):  # its GPU's stream
            maml.meta_backward(state["inputs"])
        state["grads"] = [p.grad for p in params]
        for p, g in zip(params, saved):
            p.grad = g

    def step(batch: TaskBatch) -> None:
        if "graph" not in state:
            capture(batch)
        for static, new in zip(state["inputs"], batch):
            static.copy_(new, non_blocking=True)
        with torch.cuda.device(device):
            state["graph"].replay()
        for p, g in zip(params, state["grads"]):
            p.grad = g.clone() if p.grad is None else p.grad + g

    return step


def with_threads(build: Callable[[nn.Module, Workload, bool], MetaStep], threads: int):
    """A lever: the same meta-step with ``threads`` torch threads during it (others keep theirs)."""

    def wrapped(model: nn.Module, w: Workload, first_order: bool) -> MetaStep:
        meta_step = build(model, w, first_order)

        def step(batch: TaskBatch) -> None:
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                meta_step(batch)
            finally:
                torch.set_num_threads(before)

        return step

    return wrapped


def plain_loop_step(model: nn.Module, w: Workload, first_order: bool) -> MetaStep:
    """MAML as one writes it directly with torch.func: a Python loop over tasks, one backward."""
    params = dict(model.named_parameters())

    def loss(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return w.loss_fn(torch.func.functional_call(model, p, (x,)), y)

    def step(batch: TaskBatch) -> None:
        total = 0.0
        for i in range(batch.num_tasks):
            adapted = params
            for _ in range(w.inner_steps):
                grads = torch.func.grad(loss)(adapted, batch.support_x[i], batch.support_y[i])
                adapted = {k: v - w.inner_lr * (grads[k].detach() if first_order else grads[k])
                           for k, v in adapted.items()}
            total = total + loss(adapted, batch.query_x[i], batch.query_y[i])
        (total / batch.num_tasks).backward()

    return step


def import_peer(module: str):
    """Import an optional peer library or raise :class:`Unavailable` saying why."""
    if importlib.util.find_spec(module) is None:
        raise Unavailable("not installed")
    try:
        return importlib.import_module(module)
    except Exception as error:  # noqa: BLE001 - any import failure makes the peer unavailable
        if "torchvision" in str(error):  # learn2learn: see benchmarks/peers/safe_import.py
            raise Unavailable("import failed: torchvision's ops do not load beside this torch "
                              "(benchmarks/bench.py works around it)") from None
        raise Unavailable(f"import failed: {type(error).__name__}: {str(error).splitlines()[0][:100]}") from None


def learn2learn_step(model: nn.Module, w: Workload, first_order: bool) -> MetaStep:
    """learn2learn 0.2.0 as in its examples: ``clone()``, ``adapt()`` per step, backward per task."""
    l2l = import_peer("learn2learn")
    maml = l2l.algorithms.MAML(model, lr=w.inner_lr, first_order=first_order)

    def step(batch: TaskBatch) -> None:
        for i in range(batch.num_tasks):
            learner = maml.clone()
            for _ in range(w.inner_steps):
                learner.adapt(w.loss_fn(learner(batch.support_x[i]), batch.support_y[i]))
            (w.loss_fn(learner(batch.query_x[i]), batch.query_y[i]) / batch.num_tasks).backward()

    return step


def higher_step(model: nn.Module, w: Workload, first_order: bool) -> MetaStep:
    """higher 0.2.1 as in its MAML example: ``innerloop_ctx`` per task, backward per task.

    First order: ``track_higher_grads=False`` detaches the fast weights after every step, so the
    query loss's gradient at the adapted weights is added to the model's gradients by hand (the
    usual FOMAML recipe with higher).
    """
    higher = import_peer("higher")
    inner_opt = torch.optim.SGD(model.parameters(), lr=w.inner_lr)
    params = list(model.parameters())

    def step(batch: TaskBatch) -> None:
        for i in range(batch.num_tasks):
            with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False,
                                      track_higher_grads=not first_order) as (fmodel, diffopt):
                for _ in range(w.inner_steps):
                    diffopt.step(w.loss_fn(fmodel(batch.support_x[i]), batch.support_y[i]))
                query_loss = w.loss_fn(fmodel(batch.query_x[i]), batch.query_y[i]) / batch.num_tasks
                if not first_order:
                    query_loss.backward()
                    continue
                for p, g in zip(params, torch.autograd.grad(query_loss, list(fmodel.parameters()))):
                    p.grad = g if p.grad is None else p.grad + g

    return step


def implementations(
    chunk_size: int | None = None,
    micro_batch_size: int | None = None,
    lever_threads: int | None = None,
    workers: int | None = None,
    cuda: bool = False,
    compiled: bool = False,
) -> dict[str, Implementation]:
    """Every implementation by name; the chunked-vmap, micro-batched, extra-threads and compiled rows only
    when asked, the CUDA-graph row only with ``cuda``."""
    impls = [
        Implementation("fastmaml", fastmaml_step("auto")),
        Implementation("fastmaml vmap", fastmaml_step("vmap"), strategy="vmap"),
        Implementation("fastmaml loop", fastmaml_step("loop"), strategy="loop"),
        Implementation("fastmaml hybrid", fastmaml_step("hybrid"), strategy="hybrid"),
    ]
    if cuda:
        impls.append(Implementation("fastmaml cuda graph", cuda_graph_step))
    if chunk_size:
        impls.append(Implementation(f"fastmaml vmap chunk {chunk_size}", fastmaml_step("vmap", chunk_size)))
    if micro_batch_size:
        impls.append(Implementation(f"fastmaml micro-batch {micro_batch_size}",
                                    fastmaml_step("auto", micro_batch_size=micro_batch_size)))
    if lever_threads:
        impls.append(Implementation(f"fastmaml {lever_threads} threads (lever)",
                                    with_threads(fastmaml_step("auto"), lever_threads)))
    if compiled:
        impls.append(Implementation("fastmaml compiled", fastmaml_step("auto", compile=True)))
    if workers:
        impls.append(Implementation(f"fastmaml {workers} workers", fastmaml_step("auto", workers=workers)))
        impls.append(Implementation(f"fastmaml hybrid {workers} workers", fastmaml_step("hybrid", workers=workers)))
        if compiled:
            impls.append(Implementation(f"fastmaml compiled {workers} workers",
                                        fastmaml_step("auto", workers=workers, compile=True)))
    impls += [
        Implementation("torch.func loop", plain_loop_step),
        Implementation("learn2learn", learn2learn_step),
        Implementation("higher", higher_step),
    ]
    if lever_threads:  # the peers on the same cores, as their users would run them
        impls += [Implementation(f"{peer.name} {lever_threads} threads", with_threads(peer.build, lever_threads))
                  for peer in impls[-2:]]
    return {i.name: i for i in impls}


# ----------------------------------------------------------------------------------------- measuring
@dataclass
class Row:
    workload: str
    order: str
    implementation: str
    tasks_per_s: float | None = None
    ratio: float | None = None  # fastmaml's tasks/s over this row's
    peak_bytes: int | None = None
    grad_diff: float | None = None
    repeats: int = 0
    eager_fallback: bool = False  # a compiled row whose compile check refused it: it ran eagerly
    note: str = ""  # "not installed", "wrong meta-gradient", ...


@dataclass
class BenchConfig:
    workloads: Sequence[str] = tuple(WORKLOADS)
    orders: Sequence[str] = ("second", "first")
    implementations: Sequence[str] | None = None  # None: all
    repeats: int = 10
    warmup: int = 1
    time_limit: float = 0.0  # seconds of timed rounds per workload and order; 0: no limit (at least 2 rounds)
    memory: bool = True
    device: str = "cpu"
    threads: int | None = None
    chunk_size: int | None = None
    micro_batch_size: int | None = None
    lever_threads: int | None = None  # also time fastmaml and the peers with this many torch threads
    workers: int | None = None  # also time fastmaml with this many worker threads (MAML(workers=...))
    compiled: bool = False  # also time fastmaml with compile=True (torch.compile; compiles in the warm-up)
    grad_tolerance: float = 1e-6  # float64 check
    grad_check_tasks: int = 4
    seed: int = 0
    child_command: Sequence[str] = (sys.executable, "-m", "fastmaml.bench")
    extra: Sequence[Implementation] = field(default_factory=tuple)  # more implementations (tests)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def max_rel_diff(grads: list[Tensor | None], reference: list[Tensor]) -> float:
    """max |g − g_ref| / max |g_ref| over all entries of the meta-gradient; inf if one is missing.

    One scale for the whole gradient: parameters whose exact gradient is zero (a conv bias followed
    by batch norm) hold only rounding noise, which a per-parameter ratio would blow up.
    """
    if any(g is None for g in grads):
        return float("inf")
    diff = max((g.double() - r.double()).abs().max().item() for g, r in zip(grads, reference))
    scale = max(r.abs().max().item() for r in reference)
    return diff / scale if scale > 0 else diff


def meta_gradient(model: nn.Module, meta_step: MetaStep, batch: TaskBatch) -> list[Tensor | None]:
    for p in model.parameters():
        p.grad = None
    meta_step(batch)
    grads = [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = None
    return grads


def with_steps(workload: Workload, inner_steps: int | None) -> Workload:
    return workload if inner_steps is None else dataclasses.replace(workload, inner_steps=inner_steps)


def to_float64(batch: TaskBatch) -> TaskBatch:
    return TaskBatch(*(t.double() if t.is_floating_point() else t for t in batch))


def bench_group(w: Workload, first_order: bool, impls: Sequence[Implementation], cfg: BenchConfig) -> list[Row]:
    """Gradient check, then interleaved timing, of every implementation on one workload and order.

    The check runs in float64 on the first ``cfg.grad_check_tasks`` tasks: there a correct
    implementation agrees with fastmaml to ~1e-12, while in float32 second-order MAML through
    batch norm, correct implementations already differ by ~1e-3 (rounding, amplified by the
    batch statistics of a handful of images), too close to a real error to tell them apart.
    """
    device = torch.device(cfg.device)
    order = "first" if first_order else "second"
    torch.manual_seed(cfg.seed)
    base = w.make_model().to(device)
    batch = w.batch(cfg.seed, device)
    base64, check_batch = copy.deepcopy(base).double(), to_float64(batch.slice(0, cfg.grad_check_tasks))
    auto = MAML(base, w.loss_fn, inner_lr=w.inner_lr).resolved_strategy(device)
    rows, runners, steps, reference = {}, {}, {}, None
    for impl in impls:
        row = rows[impl.name] = Row(w.name, order, impl.name)
        if impl.strategy == auto:
            row.note = f"= fastmaml (auto picks {auto})"
            continue
        model64 = copy.deepcopy(base64)
        try:
            grads = meta_gradient(model64, impl.build(model64, w, first_order), check_batch)
        except Unavailable as why:
            row.note = str(why)
            continue
        if reference is None:  # the first implementation (fastmaml, strategy auto) is the reference
            reference = grads
        row.grad_diff = max_rel_diff(grads, reference)
        if not row.grad_diff <= cfg.grad_tolerance:
            row.note = f"wrong meta-gradient (max rel. diff {row.grad_diff:.1e} > {cfg.grad_tolerance:g})"
            continue
        model = copy.deepcopy(base)
        meta_step = impl.build(model, w, first_order)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def iteration(meta_step=meta_step, opt=opt) -> None:
            opt.zero_grad(set_to_none=True)
            meta_step(batch)
            opt.step()

        runners[impl.name] = iteration
        steps[impl.name] = meta_step
    times = time_interleaved(runners, cfg, device)
    for name, meta_step in steps.items():
        if getattr(meta_step, "refused_compile", lambda: False)():  # a "compiled" row that ran eagerly
            rows[name].eager_fallback = True
    for name, seconds in times.items():
        rows[name].tasks_per_s = w.meta_batch_size / statistics.median(seconds)
        rows[name].repeats = len(seconds)
    ours = rows[impls[0].name].tasks_per_s
    for row in rows.values():
        if row.tasks_per_s and ours:
            row.ratio = ours / row.tasks_per_s
    return list(rows.values())


def time_interleaved(runners: dict[str, Callable[[], None]], cfg: BenchConfig, device: torch.device) -> dict:
    """Seconds per iteration of each runner, one iteration of each in turn (order rotating)."""
    for run in runners.values():
        for _ in range(cfg.warmup):
            run()
    sync(device)
    names, times = list(runners), {name: [] for name in runners}
    started = time.perf_counter()
    for r in range(cfg.repeats):
        if cfg.time_limit and r >= 2 and time.perf_counter() - started > cfg.time_limit:
            break
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            runners[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


# ----------------------------------------------------------------------------------------- memory
def rss_bytes() -> int:
    """Resident set size now (Linux /proc); 0 where unavailable."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    """Peak resident set size of this process since its start or the last :func:`reset_peak_rss`.

    /proc's VmHWM where available. ``ru_maxrss`` is only the fallback: Linux carries it over from
    the parent across fork and exec, so in a subprocess of a large parent it reports the parent's size.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    if resource is None:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def load_lazy_modules() -> None:
    """Trigger torch's lazy imports (Adam's first step loads torch._dynamo, ~80 MB of modules) with
    tiny tensors, so that a peak-memory baseline taken afterwards counts only the meta-step."""
    p = torch.zeros(2, requires_grad=True)
    p.grad = torch.ones(2)
    torch.optim.Adam([p]).step()
    torch.vmap(torch.func.grad(lambda x: (x * x).sum()))(torch.zeros(2, 2))
    torch.autograd.grad((p * p).sum(), p, create_graph=True)


def measure_peak_here(spec: dict) -> dict:
    """Peak memory (bytes) of ``spec["iterations"]`` meta-iterations above what was in use before, and
    their seconds. ``spec["variant"]`` = (strategy, micro_batch_size, grad_checkpointing) builds fastmaml's step
    directly; otherwise ``spec["implementation"]`` names one of :func:`implementations`."""
    device = torch.device(spec["device"])
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    if spec.get("variant"):
        build = fastmaml_step(*variant_args(spec["variant"]))
    else:
        build = implementations(spec.get("chunk_size"), spec.get("micro_batch_size"),
                                spec.get("lever_threads"), spec.get("workers"),
                                cuda=device.type == "cuda", compiled=True)[spec["implementation"]].build
    w = with_steps(WORKLOADS[spec["workload"]], spec.get("inner_steps"))
    torch.manual_seed(spec.get("seed", 0))
    model = w.make_model().to(device)
    batch = w.batch(spec.get("seed", 0), device)
    meta_step = build(model, w, spec["first_order"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    load_lazy_modules()
    for _ in range(spec.get("warmup", 0)):  # a step of the same kind first: compiling, Adam's state and the
        # allocator's first growth are one-time costs, not the step's (compiled rows alone had it: their peak
        # was compared with other rows' first-iteration peaks)
        opt.zero_grad(set_to_none=True)
        meta_step(batch)
        opt.step()
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        reset_peak_rss()
        before = rss_bytes()
    start = time.perf_counter()
    for _ in range(spec.get("iterations", 1)):
        opt.zero_grad(set_to_none=True)
        meta_step(batch)
        opt.step()
    sync(device)
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        return {"peak_bytes": torch.cuda.max_memory_allocated(device) - before, "seconds": seconds}
    peak = peak_rss_bytes()
    return {"peak_bytes": None if peak is None or before == 0 else max(peak - before, 0), "seconds": seconds,
            "refused_compile": getattr(meta_step, "refused_compile", lambda: False)()}


# glibc raises its mmap threshold after freeing a large block, then keeps later large blocks in the
# heap, where fragmentation inflates the peak RSS; a fixed threshold returns every large block at once.
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def measure_child(spec: dict, cfg: BenchConfig) -> dict | None:
    """:func:`measure_peak_here` in a fresh subprocess on the CPU (its own peak RSS), in place on a GPU."""
    if spec["device"].startswith("cuda"):
        return measure_peak_here(spec)
    proc = subprocess.run([*cfg.child_command, "--child", json.dumps(spec)], capture_output=True, text=True,
                          check=False, env={**os.environ, **CHILD_ENV})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        log.warning("memory measurement of %s failed: %s", spec, proc.stderr.strip()[-500:])
        return None
    return json.loads(lines[-1])


def measure_peak(spec: dict, cfg: BenchConfig) -> int | None:
    """Peak memory (bytes) of one workload and implementation (see :func:`measure_child`)."""
    result = measure_child(spec, cfg)
    return None if result is None else result["peak_bytes"]


def memory_spec(cfg: BenchConfig, workload: str, impl: str, first_order: bool, **extra) -> dict:
    return dict(workload=workload, implementation=impl, first_order=first_order, device=cfg.device,
                threads=cfg.threads, chunk_size=cfg.chunk_size, micro_batch_size=cfg.micro_batch_size,
                lever_threads=cfg.lever_threads, workers=cfg.workers, seed=cfg.seed, iterations=1, warmup=1, **extra)


# ----------------------------------------------------------------------------------------- runs
def run_bench(cfg: BenchConfig, progress: Callable[[str], None] = lambda line: None) -> list[Row]:
    """Rows of the throughput table: every workload x order x implementation in ``cfg``."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    unknown = [w for w in cfg.workloads if w not in WORKLOADS]
    if unknown:
        raise ConfigError(f"unknown workload {unknown[0]!r}; choose from {', '.join(WORKLOADS)}")
    available = implementations(cfg.chunk_size, cfg.micro_batch_size, cfg.lever_threads, cfg.workers,
                                cuda=cfg.device.startswith("cuda"), compiled=cfg.compiled)
    names = list(available) if cfg.implementations is None else list(cfg.implementations)
    names = ["fastmaml", *(n for n in names if n != "fastmaml")]  # first: the reference for gradients and ratios
    missing = [n for n in names if n not in available]
    if missing:
        raise ConfigError(f"unknown implementation {missing[0]!r}; choose from {', '.join(available)}")
    impls = [available[n] for n in names] + list(cfg.extra)
    rows = []
    for name in cfg.workloads:
        for order in cfg.orders:
            group = bench_group(WORKLOADS[name], order == "first", impls, cfg)
            if cfg.memory:
                for row in group:
                    if row.tasks_per_s is not None and row.implementation in available:
                        result = measure_child(memory_spec(cfg, name, row.implementation, order == "first"), cfg)
                        row.peak_bytes = None if result is None else result["peak_bytes"]
                        row.eager_fallback |= bool(result and result.get("refused_compile"))
            for row in group:
                progress(format_row(row))
            rows += group
    return rows


# name: (strategy, micro_batch_size, grad_checkpointing); the first is the reference for the gradient check.
SWEEP_VARIANTS = {
    "vmap, whole meta-batch": ("vmap", None, False),
    "vmap, micro-batch 4": ("vmap", 4, False),
    "loop (task by task)": ("loop", None, False),
    "loop, checkpointed": ("loop", None, True),
}


def _variant_gradient(model: nn.Module, w: Workload, batch: TaskBatch, variant: Sequence) -> list[Tensor | None]:
    return meta_gradient(model, fastmaml_step(*variant_args(variant))(model, w, False), batch)


def variant_args(variant: Sequence) -> tuple:
    """:func:`fastmaml_step`'s positional arguments for a sweep variant (strategy, micro-batch, checkpointing)."""
    strategy, micro_batch_size, checkpointing = variant
    return strategy, None, micro_batch_size, checkpointing


def memory_sweep(
    cfg: BenchConfig,
    workload: str = "omniglot-20w1s",
    steps: Sequence[int] = (1, 2, 3, 5, 10),
    variants: dict[str, tuple[str, int | None, bool]] = SWEEP_VARIANTS,
    progress: Callable[[str], None] = lambda line: None,
) -> list[dict]:
    """Peak memory and seconds per meta-iteration vs inner steps, second order, for memory-saving variants.

    For each step count every variant's meta-gradient is checked against that of the first variant
    with the same strategy, in float64 (an AssertionError if they differ by more than
    ``cfg.grad_tolerance``). In float32 correct variants already differ visibly: on the CPU by 1e-3
    relative between vmap (batch norm from primitive ops) and the loop (the fused kernel), and on an
    H200, where cuDNN convolutions run in TF32 by default, by 1.2e-1 between the whole meta-batch
    and micro-batches of 4 after one inner step (second order through batch norm amplifies rounding).
    """
    rows = []
    device = torch.device(cfg.device)
    references = {}
    for name, variant in variants.items():
        references.setdefault(variant[0], name)
    for n in steps:
        w = with_steps(WORKLOADS[workload], n)
        torch.manual_seed(cfg.seed)
        base = w.make_model().to(device)
        batch = w.batch(cfg.seed, device)
        gradient = functools.partial(_variant_gradient, copy.deepcopy(base).double(), w, to_float64(batch))
        expected = {strategy: gradient(variants[name]) for strategy, name in references.items()}
        row = {"inner_steps": n, "peak": {}, "seconds": {}, "grad_diff": {}}
        for name, variant in variants.items():
            if name in references.values():
                continue
            row["grad_diff"][name] = diff = max_rel_diff(gradient(variant), expected[variant[0]])
            assert diff <= cfg.grad_tolerance, f"{name} changed the meta-gradient ({diff:.2e}) at {n} steps"
        if cfg.memory:
            spec = memory_spec(cfg, workload, "fastmaml", False, inner_steps=n)
            for name, variant in variants.items():
                result = measure_child(dict(spec, variant=variant), cfg) or {}
                row["peak"][name], row["seconds"][name] = result.get("peak_bytes"), result.get("seconds")
        progress(f"  {n} steps: " + ", ".join(f"{k}: {fmt_mem(row['peak'].get(k))}" for k in variants))
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------- tables
COLUMNS = ("workload", "order", "implementation", "tasks/s", "fastmaml/peer", "peak memory",
           "max rel. grad diff", "repeats")


def fmt_mem(n: int | None) -> str:
    return "-" if n is None else f"{n / MiB:,.0f} MiB" if n >= 10 * MiB else f"{n / MiB:.1f} MiB"


def fmt_rate(x: float) -> str:
    """Three significant digits (at least), thousands separated: 2,866 / 11.7 / 0.432."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}" if x >= 1 else f"{x:.3f}"


def format_row(row: Row) -> str:
    tasks = row.note if row.tasks_per_s is None else fmt_rate(row.tasks_per_s)
    name = row.implementation + (" (ran eagerly: its compile check refused it)" if row.eager_fallback else "")
    cells = [row.workload, row.order, name, tasks,
             "-" if row.ratio is None else f"{row.ratio:.2f}",
             fmt_mem(row.peak_bytes),
             "-" if row.grad_diff is None else f"{row.grad_diff:.1e}",
             str(row.repeats or "-")]
    return "| " + " | ".join(cells) + " |"


def format_table(rows: Sequence[Row]) -> str:
    head = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS)
    return "\n".join([head, *map(format_row, rows)])


def format_sweep(rows: Sequence[dict], names: Sequence[str]) -> str:
    """Peak memory (seconds of the iteration) per variant and inner-step count."""
    others = [k for k in names if rows and k in rows[0]["grad_diff"]]
    lines = ["| inner steps | " + " | ".join(names) + " | max rel. grad diff (" + ", ".join(others) + ") |",
             "|---|" + "---|" * (len(names) + 1)]
    for r in rows:
        cells = [fmt_mem(r["peak"].get(k)) + ("" if r["seconds"].get(k) is None else f" ({r['seconds'][k]:.2f} s)")
                 for k in names]
        diffs = ", ".join(f"{r['grad_diff'][k]:.1e}" for k in others)
        lines.append(f"| {r['inner_steps']} | " + " | ".join(cells) + f" | {diffs} |")
    return "\n".join(lines)


def sh(cmd: str) -> str:
    """A shell command's output for the report (``uptime``, ``lscpu``), or "?"."""
    try:
        out = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10, check=False).stdout
        return out.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def machine_report(cfg: BenchConfig) -> list[str]:
    """The lines that say where and how a result was measured."""
    model = sh("lscpu | grep -m1 'Model name' | sed 's/.*: *//'")
    lines = [f"- machine: {model}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
             f"- python {platform.python_version()}, torch {torch.__version__}, device {cfg.device}"]
    if cfg.device.startswith("cuda") and torch.cuda.is_available():
        lines.append(f"- GPU: {torch.cuda.get_device_name(torch.device(cfg.device))}")
    versions = []
    for peer in ("learn2learn", "higher"):
        try:
            versions.append(f"{peer} {importlib.metadata.version(peer)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{peer} not installed")
    lines.append(f"- peers: {', '.join(versions)}")
    lines.append(f"- `uptime`: {sh('uptime')}")
    return lines


# ----------------------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS), metavar="W",
                        help=f"workloads to run (default all: {', '.join(WORKLOADS)})")
    parser.add_argument("--orders", nargs="+", default=["second", "first"], choices=["second", "first"])
    parser.add_argument("--impls", nargs="+", metavar="NAME",
                        help="implementations (default all): fastmaml, 'fastmaml vmap', 'fastmaml loop', "
                             "'torch.func loop', learn2learn, higher")
    parser.add_argument("--repeats", type=int, default=10, help="timed meta-iterations per implementation (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed meta-iterations of each implementation before timing (default %(default)s)")
    parser.add_argument("--time-limit", type=float, default=0.0,
                        help="stop timing a workload/order after this many seconds (at least 2 rounds; default 0: no limit)")
    parser.add_argument("--quick", action="store_true", help="no warm-up and no memory measurement")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--chunk-size", type=int, help="also time fastmaml vmap with this chunk_size")
    parser.add_argument("--micro-batch-size", type=int, help="also time fastmaml with micro-batches of this many tasks")
    parser.add_argument("--lever-threads", type=int, metavar="N",
                        help="also time fastmaml with N torch threads, interleaved with the rest at --threads")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="also time fastmaml with N worker threads (MAML(workers=N), one torch thread each)")
    parser.add_argument("--compile", action="store_true",
                        help="also time 'fastmaml compiled' (MAML(compile=True): torch.compile, compiled in the "
                             "warm-up; with --workers also 'fastmaml compiled N workers')")
    parser.add_argument("--sweep", action="store_true",
                        help="also peak memory vs inner steps (1, 2, 3, 5, 10) for Omniglot 20-way, second order, "
                             "with and without micro-batches")
    parser.add_argument("--sweep-only", action="store_true", help="only the memory sweep, no throughput table")
    parser.add_argument("--grad-tolerance", type=float, default=1e-6,
                        help="largest max-relative meta-gradient difference to fastmaml accepted (float64 check)")
    parser.add_argument("--grad-check-tasks", type=int, default=4, help="tasks in the float64 meta-gradient check")
    parser.add_argument("--out", help="also write the report (markdown) to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one memory measurement, prints JSON
    return parser


def config_from_args(args: argparse.Namespace, child_command: Sequence[str]) -> BenchConfig:
    if args.repeats < 1 or args.warmup < 0:
        raise ConfigError(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")
    # (option, value, smallest allowed, what it means): checked here, before any timing or child process
    at_least = [("--threads", args.threads, 0, "torch threads; 0 or leave it out for torch's default"),
                ("--lever-threads", args.lever_threads, 1, "torch threads of the extra rows"),
                ("--chunk-size", args.chunk_size, 1, "tasks per vmap chunk"),
                ("--micro-batch-size", args.micro_batch_size, 1, "tasks per micro-batch"),
                ("--workers", args.workers, 1, "worker threads"),
                ("--grad-check-tasks", args.grad_check_tasks, 1, "tasks in the meta-gradient check"),
                ("--grad-tolerance", args.grad_tolerance, 0, "largest accepted max-relative difference"),
                ("--time-limit", args.time_limit, 0, "seconds per workload and order; 0 for no limit")]
    for option, value, low, meaning in at_least:
        if value is not None and not value >= low:  # `not >=` also catches nan
            raise ConfigError(f"{option} must be >= {low} ({meaning}), got {value}")
    for option, value in (("--threads", args.threads), ("--lever-threads", args.lever_threads),
                          ("--workers", args.workers)):
        if value is not None and value > MAX_THREADS:  # torch segfaulted asked for 100,000
            raise ConfigError(f"{option} must be at most {MAX_THREADS}, got {value}; give at most this machine's "
                              f"cores ({os.cpu_count()})")
    if args.out:  # found out before the benchmark runs, not after
        existed = os.path.exists(args.out)
        try:
            with open(args.out, "a"):
                pass
            if not existed:  # the probe leaves no empty report behind a benchmark that then fails
                os.remove(args.out)
        except OSError as error:
            raise ConfigError(f"cannot write --out {args.out} ({error.strerror}); give a file in an existing "
                              "folder you can write to") from None
    return BenchConfig(
        workloads=args.workloads, orders=args.orders, implementations=args.impls, repeats=args.repeats,
        warmup=0 if args.quick else args.warmup, time_limit=args.time_limit,
        memory=not (args.quick or args.no_memory), device=args.device, threads=args.threads,
        chunk_size=args.chunk_size, micro_batch_size=args.micro_batch_size,
        lever_threads=args.lever_threads, workers=args.workers, compiled=args.compile,
        grad_tolerance=args.grad_tolerance, grad_check_tasks=args.grad_check_tasks, child_command=tuple(child_command),
    )


def throughput_legend(cfg: BenchConfig) -> str:
    return (
        "tasks/s = meta-batch / median seconds of one meta-iteration (meta-loss, backward, Adam step), "
        "implementations timed interleaved; fastmaml/peer = fastmaml's (strategy auto) tasks/s over the row's; "
        "peak memory = peak resident (CPU) or allocated (GPU) memory of one meta-iteration above what was in "
        "use before it, measured in a fresh process after one untimed meta-iteration; max rel. grad diff = max|g - g_fastmaml| / max|g_fastmaml| over all meta-gradient "
        f"entries at the same initial weights, in float64 on the first {cfg.grad_check_tasks} tasks (timing "
        "is float32). A fastmaml strategy row equal to what auto picks is not timed twice."
    )


def command_line(prog: str, args: argparse.Namespace) -> str:
    """``prog`` and the options of ``args`` that differ from their defaults, as one would type them."""
    defaults = vars(add_arguments(argparse.ArgumentParser()).parse_args([]))
    words = []
    for key, value in vars(args).items():
        if key not in defaults or value == defaults[key] or key == "child":
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            words.append(flag)
        elif isinstance(value, list):
            words += [flag, *map(str, value)]
        else:
            words += [flag, str(value)]
    return " ".join([prog, shlex.join(words)]).strip()


def run(args: argparse.Namespace, child_command: Sequence[str], prog: str = "fastmaml bench") -> int:
    """Run the benchmark the arguments describe; print the report. 1 if a meta-gradient was wrong.

    ``child_command`` re-runs the same entry point for a memory measurement (``--child SPEC``).
    """
    if args.child:
        print(json.dumps(measure_peak_here(json.loads(args.child))), flush=True)
        return 0
    cfg = config_from_args(args, child_command)
    check_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731 - progress; the report goes to stdout
    report = ["# fastmaml bench", "", f"```\n{command_line(prog, args)}\n```", "", *machine_report(cfg), ""]
    rows = []
    if not args.sweep_only:
        rows = run_bench(cfg, progress=say)
        report += ["## Meta-training throughput", "", throughput_legend(cfg), "",
                   *(f"- {name}: {WORKLOADS[name].description}" for name in cfg.workloads), "",
                   format_table(rows), ""]
    if args.sweep or args.sweep_only:
        say("memory sweep: Omniglot 20-way 1-shot, second order")
        sweep = memory_sweep(cfg, progress=say)
        report += ["## Peak memory vs inner steps (Omniglot 20-way 1-shot, second order)", "",
                   ("Peak memory of one meta-iteration as the trainer runs it (see above; in parentheses its "
                    "seconds, one run after one untimed meta-iteration, 1 worker): vmap over the whole meta-batch; vmap over micro-batches of 4 "
                    "tasks, each backpropagated before the next (micro_batch_size); the per-task loop, which "
                    "backpropagates task by task; the loop with gradient checkpointing across the inner steps "
                    "(grad_checkpointing). The last column checks that a variant's meta-gradient equals that of "
                    "the first variant with its strategy (in float64). Child processes run with "
                    f"{' '.join(f'{k}={v}' for k, v in CHILD_ENV.items())}."), "",
                   format_sweep(sweep, list(SWEEP_VARIANTS)), ""]
    report += [f"- `uptime` at the end: {sh('uptime')}"]
    text = "\n".join(report)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 1 if any(r.note.startswith("wrong meta-gradient") for r in rows) else 0


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m fastmaml.bench",
         child_command: Sequence[str] = (sys.executable, "-m", "fastmaml.bench")) -> int:
    """``prog`` names the command in the report; ``child_command`` re-runs this entry point."""
    args = add_arguments(argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return run(args, child_command, prog)
    except FastMAMLError as error:  # as the fastmaml command: one line, no traceback
        print(f"{prog}: error: {error}", file=sys.stderr)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
