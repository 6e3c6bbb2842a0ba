"""The user-facing MAML wrapper: any ``nn.Module`` and loss, one object for meta-training and adaptation.

    maml = MAML(model, F.mse_loss, inner_lr=0.01)            # second order, 1 inner step
    maml = MAML(model, F.cross_entropy, inner_lr=0.4, first_order=True, inner_steps=5)
    maml = MAML(model, F.mse_loss, inner_lr=0.01, meta_sgd=True)   # learned α per element (Li et al., 2017)
    maml = MAML(model, F.cross_entropy, inner_lr=0.1, inner_steps=10, grad_checkpointing=True)  # less memory
    maml = MAML(model, F.cross_entropy, inner_lr=0.4, compile=True)  # torch.compile'd meta-step
    maml = MAML(model, F.cross_entropy, inner_lr=0.4, inner_params=["head"])  # adapt the head only (ANIL)

    opt = torch.optim.Adam(maml.parameters(), lr=1e-3)       # model weights (+ Meta-SGD's α)
    maml.meta_loss(batch).backward(); opt.step()             # Algorithm 2, lines 3-10
    adapted = maml.adapt(support_x, support_y, steps=10)     # meta-test: more steps if you like
    prediction = maml(query_x, adapted)
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import shutil
import types
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from fastmaml.core import (
    TaskBatch,
    adaptation_curve,
    autograd_adapt,
    exact_vmap_ops,
    frozen_running_stats,
    has_own_buffers,
    meta_loss_loop,
    meta_loss_shared_first_step,
    meta_loss_vmap,
    needs_exact_vmap_ops,
    task_meta_loss,
)
from fastmaml.core import adapt as core_adapt
from fastmaml.core.functional import LR, Embed, Params

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "vmap", "loop", "hybrid")
# Worker threads split a vmap meta-batch only for models at least this big. Measured on 2 CPU cores
# (benchmarks/results/fewshot_cpu.md): 2 threads were 2.0x faster for the no-conv MLP (~250k
# parameters) and 1.19x for Omniglot 5-way 1-shot's conv net (112k), but 2.6x SLOWER for the
# sinusoid MLP (1.7k parameters, a ~4 ms step: 2,000 iterations in 21.2 s against 8.1 s).
THREADED_VMAP_MIN_PARAMS = 50_000
_CONV = (nn.modules.conv._ConvNd,)


def vmap_unsafe(model: nn.Module) -> str | None:
    """Why vmap would give ``model`` a wrong meta-gradient that no reroute fixes, or None:
    ``nn.Embedding(scale_grad_by_freq=True)`` (vmap counts the indices over all tasks together:
    meta-gradients measured 7.9% off the loop, float64, 2 inner steps)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Embedding) and m.scale_grad_by_freq:
            return f"vmap gives wrong meta-gradients for an embedding with scale_grad_by_freq ({name or 'the model'})"
    return None


def _rng_state(device: torch.device) -> tuple[Tensor, torch.device, Tensor | None]:
    """The random state dropout on ``device`` draws from (the CPU generator, and the device's own)."""
    return torch.random.get_rng_state(), device, torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state: tuple[Tensor, torch.device, Tensor | None]) -> None:
    cpu, device, cuda = state
    torch.random.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def _check_steps(steps: Any) -> int:
    """A number of inner steps given to ``adapt`` or ``adaptation_curve``: an integer >= 0."""
    if isinstance(steps, bool) or not isinstance(steps, (int, float)) or int(steps) != steps:
        raise ValueError(f"steps must be an integer, got {steps!r}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    return int(steps)


def relative_difference(got: Tensor, want: Tensor) -> float:
    """|got - want| / |want| (Euclidean norms)."""
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


# the largest relative difference between a compiled and the eager meta-gradient (and loss) accepted
# on the first meta-step; float32 fusion gives about 1e-6, the wrong gradients seen were 1e-2 to 1.
# torch 2.13's CPU inductor also loses precision in float32 on some second-order conv meta-losses
# (Omniglot 20-way 1-shot at initialisation: 9.6e-2 from float64 against eager's 4.2e-2, while
# compiled and eager float64 agree to 1e-12; 5-way 1-shot lost 9e-4 to 5e-3 before WELFORD_VARIANCE:
# benchmarks/results/compile_check_cpu.md): the check below
COMPILE_TOLERANCE = 1e-3
# A float32 meta-loss whose compiled meta-gradient is further than COMPILE_TOLERANCE from the eager one
# is checked again in float64, on a float64 copy of the model and batch: if compiled and eager agree
# there to COMPILE_F64_TOLERANCE the compiled graph computes the right function (wrong graphs differ by
# 1e-2 to 1 in any precision), and the compiled float32 meta-gradient is kept when it is within
# COMPILE_ROUNDING_TOLERANCE of the float64 one, or within COMPILE_ROUNDING_FACTOR times eager float32's
# own distance from it (meta-losses that float32 cannot evaluate better: Omniglot 20-way 1-shot's five
# second-order steps, eager float32 4.2% from float64, compiled 9.6%; benchmarks/results/compile_check_cpu.md)
COMPILE_F64_TOLERANCE = 1e-6
COMPILE_ROUNDING_TOLERANCE = 2e-2
COMPILE_ROUNDING_FACTOR = 4.0


# Inductor's CPU kernels compute a variance over at most 1,024 elements in two passes (the mean, then
# the squared deviations from it), larger ones with Welford's algorithm. Batch norm over a task's few
# images is such a small variance (Omniglot 5-way 1-shot: 5 images, 2 x 2 pixels in the last block),
# and there the two passes cost the compiled second-order meta-gradient most of its float32 accuracy:
# 5.4e-3 from float64 against 4.6e-6 with Welford everywhere (eager: 2.7e-6; Omniglot 5-way 1-shot,
# alpha 0.1, benchmarks/results/compile_check_cpu.md). So MAML's compiled meta-losses use Welford for
# every variance on the CPU (threshold 0), where the running torch has the option.
WELFORD_VARIANCE = {"cpp.use_two_step_variance_threshold": 0}


@functools.cache
def _welford_variance() -> dict[str, int]:
    """:data:`WELFORD_VARIANCE`, or {} on a torch whose inductor has no such option."""
    from torch._inductor import config as inductor_config

    known = inductor_config.get_config_copy()
    return {k: v for k, v in WELFORD_VARIANCE.items() if k in known}


class _Method(nn.Module):
    """``module.<method>(x)`` as a forward, so that ``torch.func.functional_call`` can run one part of
    a model (``forward_features``, ``forward_head``) with swapped parameters; its state names are the
    model's with the prefix ``module.``."""

    def __init__(self, module: nn.Module, method: str) -> None:
        super().__init__()
        self.module = module
        self.method = method

    def forward(self, x: Tensor) -> Tensor:
        return getattr(self.module, self.method)(x)


# forward_head(forward_features(x)) must match forward(x) this closely (relative) for MAML to split the model
SPLIT_TOLERANCE = 1e-4


def _share(batch: TaskBatch, k: int, count: int) -> TaskBatch:
    """Worker k's contiguous share of ``batch`` among ``count`` workers (sizes differ by one task at most)."""
    return batch.slice(k * batch.num_tasks // count, (k + 1) * batch.num_tasks // count)


def cpu_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU backend would use (inductor's ``cpp.cxx``), or None if it
    is not on PATH; without it ``compile=True`` falls back to eager on the CPU."""
    import torch._inductor.config as inductor_config  # imported on use: it loads the compiler stack

    return shutil.which(inductor_config.cpp.cxx[-1])


def _own_code(func: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``func`` with a code object of its own. torch.compile keeps compiled code, and its limit of 8
    recompilations (``torch._dynamo.config.recompile_limit``), per code object: shared by every MAML
    object, a process making many of them (a sweep, a benchmark, tests) would run the later ones
    eagerly without saying so."""
    return types.FunctionType(func.__code__.replace(), func.__globals__, func.__name__, func.__defaults__,
                              func.__closure__)


def inner_param_names(model: nn.Module, inner_params: Callable[[str], bool] | Iterable[str] | str | None) -> list[str]:
    """The names of ``model``'s parameters that MAML's inner loop adapts, in ``named_parameters()`` order:
    of those that require grad, all (``inner_params=None``), those a predicate on the name accepts, or
    those named by an entry of ``inner_params`` or under one (``"head"`` takes ``head.weight`` and
    ``head.bias``; ``"features.1"`` does not take ``features.10.weight``). A model without parameters
    under ``head`` may name its last layer in ``head_name`` (fastmaml's MLP: ``"net.4"`` for two hidden
    layers), which ``"head"`` then means. ValueError, listing the names, for an entry that names none
    of them or a choice that leaves nothing to adapt."""
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if inner_params is None:
        return trainable
    if callable(inner_params):
        chosen = [n for n in trainable if inner_params(n)]
    else:
        entries = [inner_params] if isinstance(inner_params, str) else list(inner_params)
        if not all(isinstance(e, str) and e for e in entries):
            raise ValueError(f"inner_params holds parameter names or name prefixes (strings), got {entries!r}")
        under = lambda name, entry: name == entry or name.startswith(entry + ".")  # noqa: E731
        head = getattr(model, "head_name", None)  # "head" on a model whose last layer has another name (an MLP's)
        if isinstance(head, str) and not any(under(n, "head") for n in trainable):
            entries = [head if e == "head" else e for e in entries]
        unknown = [e for e in entries if not any(under(n, e) for n in trainable)]
        if unknown:
            raise ValueError(f"inner_params {unknown} name no parameter of the model that requires grad; "
                             f"its parameters: {', '.join(trainable)}")
        chosen = [n for n in trainable if any(under(n, e) for e in entries)]
    if not chosen:
        raise ValueError("inner_params leaves no parameter for the inner loop to adapt; its parameters: "
                         f"{', '.join(trainable)}")
    return chosen


class MAML(nn.Module):
    """Model-Agnostic Meta-Learning around ``model`` with ``loss_fn(prediction, target) -> scalar``.

    ``inner_lr`` is α, the inner (adaptation) step size, a number; ``inner_steps`` the gradient
    steps on each task's support set in :meth:`meta_loss` (:meth:`adapt` and
    :meth:`adaptation_curve` take their own count, e.g. more at meta-test); ``first_order`` drops
    the second-order terms of the meta-gradient (first-order MAML); ``meta_sgd`` learns one inner
    step size per parameter element (Meta-SGD), initialised to ``inner_lr``, as the parameters
    ``inner_lrs`` (list them in the optimiser with ``maml.parameters()``; saved in ``state_dict()``
    as ``inner_lrs.K`` in the order of ``maml.params()``). ``chunk_size`` bounds how many tasks vmap
    runs at once (lower peak memory). ``loss_fn`` takes (prediction, target) for one task;
    :meth:`loss` is the same loss as a function of the parameters. Save a MAML with
    ``state_dict()`` (``torch.save(maml)`` works too, without its compiled functions).

    ``strategy`` picks how a meta-batch is evaluated: ``"vmap"`` (all tasks in one vectorised
    call), ``"loop"`` (one task at a time), or ``"auto"``: vmap, except for convolutional models on
    the CPU, where per-task weights turn every convolution into a grouped convolution and a loop is
    faster (benchmarks/results/bench_cpu_bn_fix.md); and loop if vmap cannot trace the model (in
    forward or, on the first call, in backward) or would get it wrong (:func:`vmap_unsafe`). That
    first-call check backpropagates the vmapped meta-loss once, so backward hooks on the model's
    parameters or modules also fire for it (once, on that call only); choose ``"vmap"`` or
    ``"loop"`` where a hook must see exactly one backward per meta-batch.
    Parameters that do not require grad when MAML is built are constants: not adapted, not
    meta-learned, no Meta-SGD rate. ``inner_params`` picks the parameters the inner loop adapts
    (default all): names or name prefixes (``["head"]``), or a predicate on the name
    (:func:`inner_param_names`). The others are meta-learned only: every inner step and the query
    loss use their value θ, and the meta-gradient reaches them through both (ANIL, Raghu et al.
    2020, adapts only the head; the original MAML code meta-learned its batch-norm offsets without
    adapting them). :meth:`params` and Meta-SGD's rates cover the adapted ones.
    ``reuse_features=True`` (the default): where the model splits as ``forward(x) =
    forward_head(forward_features(x))`` (timm's names; fastmaml's ConvNet, NoConvMLP and MLP do) and
    no adapted parameter reaches ``forward_features``, as with ``inner_params=["head"]``, every task's
    support and query features are computed once, with θ, and the inner steps and query loss run the
    head alone on them: the same meta-loss and meta-gradient, without running the unadapted body again
    at each inner step (second-order meta-step 1.5x faster on Omniglot 20-way 1-shot's 5 steps,
    evaluation over 10 steps 7-11x; benchmarks/results/inner_params_cpu.md). MAML checks on its first
    call, once for each value of the model's training flag, which parameters ``forward_features``
    reaches, that its features are deterministic (dropout in the body draws a mask at every inner
    step without the split) and that the two parts give ``forward``'s output, and otherwise runs the
    whole model (warning where the parts disagree). Used for more than one inner step only (with one
    the body runs once per set either way), and not under ``strategy="hybrid"``.
    Layers whose fused kernels vmap gets wrong (batch, layer and instance norm, padded embeddings)
    run as primitive ops under vmap (:mod:`fastmaml.core.norm`).
    ``"hybrid"`` vectorises only the first inner step, where every task still has the shared
    weights θ (one convolution over all tasks' support sets), and loops over tasks for the rest
    (:func:`fastmaml.core.functional.meta_loss_shared_first_step`); evaluation loops. It keeps every
    task's graph until backward, as vmap does.

    ``grad_checkpointing=True`` (second order) recomputes each inner step during backward instead
    of keeping its graph: peak memory stops growing with ``inner_steps`` for one more forward and
    inner backward per step (benchmarks/results/bench_cpu_memory.md). It runs the per-task loop.

    ``workers=N`` (CPU) lets :meth:`meta_backward` compute the tasks' meta-gradients in N threads,
    and :meth:`adaptation_curve` (evaluation) adapt the tasks there (the loop's tasks, or each
    worker's share under vmap), one model replica each; with one torch thread per worker this uses
    N cores without intra-op synchronisation (benchmarks/results/bench_cpu_workers.md). Under the
    loop strategy worker k takes tasks k, k + N, ...; under hybrid one contiguous share of the
    meta-batch; under vmap (models of ``THREADED_VMAP_MIN_PARAMS`` parameters or more: smaller ones
    run faster in one thread) it vectorises one contiguous share of the meta-batch. The result
    equals the one-thread one up to float summation order and is deterministic, except that with
    dropout the threads draw from the one global generator in an order that depends on timing (with
    ``grad_checkpointing`` too, a model whose forward draws random numbers runs in one thread: a
    checkpointed step must redraw its forward's mask in backward, which other threads drawing in
    between would change). The threads compute gradients with ``torch.autograd.grad`` and
    add their sum to ``.grad``, so hooks registered with ``register_post_accumulate_grad_hook`` do not
    fire there (``register_hook`` hooks fire in the threads, for every gradient taken with respect
    to the weights, inner steps included, as they do in the one-thread loop).

    ``compile=True`` runs the meta-loss through ``torch.compile`` (inductor): under the loop
    strategy one compiled function per task (inner steps and query loss, whose backward is the
    meta-gradient), under vmap the vectorised meta-batch. It fuses the batch-norm, ReLU and
    elementwise work around the convolutions and their double backward: on one CPU core 1.24-1.47x
    faster per meta-iteration on the paper's conv-net workloads, 1.6-2x on the sinusoid MLP
    (benchmarks/results/bench_cpu_compile.md).
    The first meta-step compiles (seconds to minutes; inductor caches the result on disk for later
    processes); each new task shape compiles again. Only gradient-enabled meta-losses are compiled
    (evaluation and adaptation stay eager). With worker threads on the CPU the graphs run through
    inductor's C++ wrapper, without the GIL, so the threads run in parallel. The meta-loss must
    compile as one graph, and on its first call its meta-gradient must match an eager run's (relative
    difference at most ``COMPILE_TOLERANCE``, or in float32 rounding that a float64 run of both tells
    apart from a wrong graph: ``COMPILE_F64_TOLERANCE``); otherwise (no C++ compiler for the CPU backend; torch
    2.4, whose compiler cannot trace ``torch.func.functional_call`` whole; torch 2.5.1's wrong compiled
    vmap of batch norm; benchmarks/results/torch_versions.md) it warns once and runs eagerly. Not with
    ``grad_checkpointing`` or ``strategy="hybrid"``. On a CUDA device it warns and runs eagerly:
    there the compiled vmap meta-step gave a wrong meta-gradient (max relative difference 0.94
    against eager, Omniglot 5-way 1-shot, H200, torch 2.11; benchmarks/results/gpu_h200.md); a
    GPU's speed comes from the trainer's CUDA graph instead.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        *,
        inner_lr: float,
        inner_steps: int = 1,
        first_order: bool = False,
        meta_sgd: bool = False,
        strategy: str = "auto",
        chunk_size: int | None = None,
        grad_checkpointing: bool = False,
        workers: int = 1,
        compile: bool = False,
        inner_params: Callable[[str], bool] | Iterable[str] | str | None = None,
        reuse_features: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(model, torch.jit.ScriptModule):
            raise TypeError("model is a TorchScript module, which torch.func cannot run with other parameters: pass "
                            "the eager nn.Module (before torch.jit.script or torch.jit.trace)")
        if isinstance(inner_lr, bool) or not isinstance(inner_lr, (int, float, Tensor)):
            raise TypeError(f"inner_lr must be a number, got {type(inner_lr).__name__} {inner_lr!r}")
        if isinstance(inner_lr, Tensor) and inner_lr.requires_grad:
            raise ValueError("inner_lr is a number (its tensor's gradient would be dropped); to learn inner "
                             "learning rates pass meta_sgd=True: one per parameter element, starting at inner_lr")
        if not inner_lr > 0:
            raise ValueError(f"inner_lr must be > 0, got {inner_lr}")
        if isinstance(inner_steps, bool) or int(inner_steps) != inner_steps or inner_steps < 1:
            raise ValueError(f"inner_steps must be an integer >= 1, got {inner_steps}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
        if int(workers) < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if grad_checkpointing and strategy in ("vmap", "hybrid") and not first_order:
            raise ValueError(f"grad_checkpointing runs one task at a time: use strategy 'auto' or 'loop', not {strategy!r}")
        if compile and strategy == "hybrid":
            raise ValueError("compile runs the vmap or loop strategy: use strategy 'auto', 'vmap' or 'loop' with it")
        if compile and grad_checkpointing and not first_order:
            raise ValueError("compile and grad_checkpointing do not combine: torch.compile cannot trace checkpointed "
                             "inner steps; turn one of them off")
        self.model = model
        self.loss_fn = loss_fn
        self.inner_lr = float(inner_lr)
        self.inner_steps = int(inner_steps)
        self.first_order = bool(first_order)
        self.meta_sgd = bool(meta_sgd)
        self.strategy = strategy
        self.chunk_size = chunk_size
        # First order keeps no graph through the inner steps: nothing to checkpoint.
        self.grad_checkpointing = bool(grad_checkpointing) and not self.first_order
        self.workers = int(workers)
        self._warned_dropout = False  # grad_checkpointing with dropout runs one thread: said once
        self._draws_random: dict[bool, bool] = {}  # whether the forward draws random numbers, by training flag
        self.compile = bool(compile)
        self._compiled: dict[str, Callable[..., Tensor]] = {}  # torch.compile'd meta-losses by kind
        self._compiled_ran: set[str] = set()  # kinds whose compiled function has run once
        self._compiled_shapes: set[tuple] = set()  # (kind, shapes) compiled before worker threads ran them
        # θ: the parameters that require grad when MAML is built; the others (a frozen backbone,
        # say) are constants, neither adapted in the inner loop nor meta-learned, as in the peers.
        # _names: those the inner loop adapts; _outer_names: the rest of θ, meta-learned only
        self._names = inner_param_names(model, inner_params)
        self._outer_names = [n for n, p in model.named_parameters() if p.requires_grad and n not in self._names]
        self._thread_vmap = sum(p.numel() for p in model.parameters()) >= THREADED_VMAP_MIN_PARAMS
        # Meta-SGD: one learned inner learning rate per parameter element, initialised to inner_lr.
        self.inner_lrs = nn.ParameterList(
            [nn.Parameter(torch.full_like(p.detach(), self.inner_lr)) for n, p in model.named_parameters()
             if n in self._names]
            if self.meta_sgd
            else []
        )
        self._exact_vmap_ops = needs_exact_vmap_ops(model)  # layers whose fused kernels vmap gets wrong
        # a layer of the user's own may pass its buffers to F.batch_norm as running statistics, which
        # the loop's fused kernel would update in place (vmap's primitive version does not)
        self._frozen_stats = has_own_buffers(model)
        # attention at second order: only the math kernel of scaled_dot_product_attention has a second
        # derivative (the CPU flash kernel's backward has none, so .backward() failed)
        self._math_attention = not self.first_order and any(isinstance(m, nn.MultiheadAttention)
                                                           for m in model.modules())
        self._vmapping = False  # True while MAML's own vmap path runs the model
        # Batch norm inside MAML uses batch statistics and never updates running ones (a pure
        # function cannot mutate buffers): passing None for those buffers does both, fused kernel kept.
        self._frozen_buffers = {
            f"{name}.{buffer}": None
            for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            for buffer in ("running_mean", "running_var", "num_batches_tracked")
        }
        # Instance norm tracking running statistics reads them in eval mode, and in training mode its
        # fused kernel would update them in place (in the loop, not under vmap): it gets fresh copies
        # on every call, so MAML never updates them, under any strategy
        self._copied_buffers = [
            f"{name}.{buffer}"
            for name, m in model.named_modules()
            if isinstance(m, nn.modules.instancenorm._InstanceNorm) and m.track_running_stats
            for buffer in ("running_mean", "running_var")
        ]
        unsafe = vmap_unsafe(model)
        if strategy in ("vmap", "hybrid") and unsafe:
            raise ValueError(f"strategy {strategy!r}: {unsafe}; use strategy 'loop' (or 'auto', which loops for such "
                             "a model)")
        self._resolved: str | None = None if strategy == "auto" else strategy
        # whether the inner loop runs the head alone on features computed once per task (see
        # reuse_features), for the call in progress; _splits: whether the model splits, by training flag;
        # _parts: the model's two parts as modules, for functional_call
        self.reuse_features = bool(reuse_features)
        self._split = False
        self._splits: dict[bool, bool] = {}  # the decision by the model's training flag (dropout may be on in one)
        self._parts: dict[str, nn.Module] = {}

    # ----------------------------------------------------------------------------- functional view
    def params(self) -> Params:
        """The meta-parameters θ the inner loop adapts, as a dict keyed like ``model.named_parameters()``:
        those that required grad when this MAML was built (a frozen parameter stays the model's own, a
        constant), of them only those ``inner_params`` picks (the others: :meth:`outer_params`)."""
        names = set(self._names)
        return {n: p for n, p in self.model.named_parameters() if n in names}

    def outer_params(self) -> Params:
        """The meta-parameters ``inner_params`` left out: meta-learned, never adapted (empty by default)."""
        named = dict(self.model.named_parameters())
        return {n: named[n] for n in self._outer_names}

    def lr(self) -> LR:
        """α: the float ``inner_lr``, or Meta-SGD's learned tensors keyed like ``params()``."""
        if self.meta_sgd:
            return dict(zip(self._names, self.inner_lrs))
        return self.inner_lr

    def functional_forward(
        self, params: Params, x: Tensor, *, module: nn.Module | None = None, vmapping: bool | None = None,
        part: str = "forward",
    ) -> Tensor:
        """Run the model with ``params`` instead of its own parameters (buffers are the model's).

        ``part``: the model's method to run, ``"forward"`` or (models that split, see
        ``reuse_features``) ``"forward_features"`` or ``"forward_head"``.

        ``module``: a replica of the model to run instead (worker threads: ``functional_call``
        swaps tensors into the module it runs, so two threads cannot share one module).
        ``vmapping``: whether this call runs under MAML's vmap (default: MAML's own flag, which
        worker threads must not rely on, since another thread may reset it).
        """
        buffers = dict(self.model.named_buffers())
        copies = {name: buffers[name].clone() for name in self._copied_buffers}
        # the meta-learned parameters the inner loop leaves alone are this model's own, named even for a
        # replica (worker threads), so that their meta-gradient reaches them
        outer = self.outer_params() if self._outer_names else {}
        state = {**buffers, **copies, **self._frozen_buffers, **outer, **params}
        module = self.model if module is None else module
        if part != "forward":
            module = self._parts[part] if module is self.model else _Method(module, part)
            state = {f"module.{name}": value for name, value in state.items()}
        vmapping = self._vmapping if vmapping is None else vmapping
        # The fused batch-norm (layer-norm, ...) kernels are exact in a loop but not under vmap, where
        # primitive ops are needed (and slower): reroute only there (fastmaml.core.norm).
        modes = []
        if self._exact_vmap_ops and vmapping:
            modes.append(exact_vmap_ops())
        elif self._frozen_stats and not vmapping:
            modes.append(frozen_running_stats())
        if self._math_attention:
            modes.append(sdpa_kernel(SDPBackend.MATH))
        if not modes:
            return torch.func.functional_call(module, state, (x,))
        with contextlib.ExitStack() as stack:
            for mode in modes:
                stack.enter_context(mode)
            return torch.func.functional_call(module, state, (x,))

    def forward(self, x: Tensor, params: Params | None = None) -> Tensor:
        return self.functional_forward(self.params() if params is None else params, x)

    def loss(self, params: Params, x: Tensor, y: Tensor) -> Tensor:
        """L(f_params, (x, y)) as a pure function of the parameter dict."""
        return self._scalar_loss(self.functional_forward(params, x), y)

    def _scalar_loss(self, prediction: Tensor, y: Tensor) -> Tensor:
        """``loss_fn(prediction, y)``, which must be one number per task (under vmap: per task)."""
        value = self.loss_fn(prediction, y)
        if not isinstance(value, Tensor) or value.dim() != 0:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"loss_fn must return a scalar tensor (one task's loss), got {shape}: reduce it, e.g. "
                             "with reduction='mean' or .mean()")
        return value

    # ----------------------------------------------------------------------------- MAML
    def meta_loss(self, batch: TaskBatch, *, reduction: str = "mean") -> Tensor:
        """Mean over tasks of the query loss after ``inner_steps`` adaptation steps (Algorithm 2).

        ``.backward()`` on it puts the exact meta-gradient (second order unless ``first_order``) on
        the model's parameters and, with Meta-SGD, on the learned inner learning rates.
        ``reduction="none"`` returns the per-task losses, shape (T,).
        """
        batch = TaskBatch(*batch).validate()
        self._resolve_split(batch.support_x[0], self.inner_steps)
        kwargs = dict(lr=self.lr(), steps=self.inner_steps, first_order=self.first_order)
        losses = self._run(
            lambda: self._maybe_compiled("vmap", self._vmap_losses)(self.params(), self.lr(), batch),
            lambda: self._loop_losses(self.params(), self.lr(), batch),
            batch,
            hybrid=lambda: meta_loss_shared_first_step(*self._hybrid_losses(self.model), self.params(), batch, **kwargs),
            probe_backward=True,
        )
        if reduction == "none":
            return losses
        if reduction != "mean":
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        return losses.mean()

    def _recomputes_dropout(self, x: Tensor) -> bool:
        """Whether grad_checkpointing must recompute random draws (the model training, its forward
        drawing from the global generator: dropout, ``F.dropout``, attention dropout, noise):
        checkpointing restores the global generator's state to draw a step's mask again in backward,
        and with worker threads the others draw from that generator in between, so the recomputed
        mask differed from the forward's and the meta-gradient was wrong (42% off with an
        ``F.dropout`` in the forward, which a check for dropout modules missed). Whether the forward
        draws is found by running it once on one task's inputs ``x``, once for each value of the
        model's training flag, with the caller's random state restored afterwards. Such a model's
        tasks run in one thread (warned once)."""
        if not (self.grad_checkpointing and self.workers > 1 and self.model.training):
            return False
        training = self.model.training
        if training not in self._draws_random:
            self._draws_random[training] = self._forward_draws(x)
        draws = self._draws_random[training]
        if draws and not self._warned_dropout:
            self._warned_dropout = True
            log.warning("grad_checkpointing with a model that draws random numbers (dropout): the tasks' "
                        "meta-gradients are computed in one thread, not %d (recomputing a checkpointed step must "
                        "draw the mask its forward drew, which threads sharing the random generator break); put "
                        "the model in eval mode or turn grad_checkpointing off to use the workers", self.workers)
        return draws

    def _forward_draws(self, x: Tensor) -> bool:
        """Whether one forward on ``x`` advances the CPU's global random generator (restored after)."""
        if any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in self.model.modules()):
            return True
        rng = _rng_state(x.device)
        try:
            with torch.no_grad():
                self.functional_forward(self.params(), x)
            return not torch.equal(torch.random.get_rng_state(), rng[0])
        except Exception:  # noqa: BLE001 - a forward that fails here fails in the step with its own error
            return False
        finally:
            _set_rng_state(rng)

    def meta_backward(self, batch: TaskBatch, *, scale: float = 1.0) -> Tensor:
        """Accumulate ``scale`` x the meta-gradient of :meth:`meta_loss` into ``.grad``, as
        ``(maml.meta_loss(batch) * scale).backward()`` would; returns that loss, detached.

        The trainer's step. With the per-task loop it backpropagates task by task (one task's graph
        in memory at a time, not all of them), in ``workers`` threads when more than one; under vmap
        with several workers each thread backpropagates its vectorised share of the tasks.
        """
        batch = TaskBatch(*batch).validate()
        self._resolve_split(batch.support_x[0], self.inner_steps)
        device = batch.support_x.device
        threads = (self.workers > 1 and device.type == "cpu" and batch.num_tasks > 1
                   and not self._recomputes_dropout(batch.support_x[0]))
        strategy = self.resolved_strategy(device)
        if strategy == "hybrid" and threads:
            return self._threaded_backward(batch, scale, hybrid=True)
        if strategy != "loop":
            if threads and self._thread_vmap:  # the same threads from the first call on: exact resume
                auto_first_call = self.strategy == "auto" and self._resolved is None
                rng = _rng_state(device)
                try:
                    out = self._threaded_backward(batch, scale, vmap=True)  # sets .grad only if all workers succeed
                except Exception as vmap_error:  # noqa: BLE001 - any tracing failure: try the loop instead
                    if not auto_first_call:
                        raise
                    _set_rng_state(rng)
                    out = self._threaded_backward(batch, scale)
                    self._fall_back_to_loop(vmap_error)
                    return out
                self._resolved = "vmap"
                return out
            loss = self.meta_loss(batch) * scale
            loss.backward()
            return loss.detach()
        if threads:
            return self._threaded_backward(batch, scale)
        if self.compile and torch.is_grad_enabled():
            # one function for the whole batch: on the first meta-batch it checks every task, as meta_loss does
            task_loss = self._maybe_compiled("task", self._task_loss)
            per_task = lambda i: task_loss(self.params(), self.lr(), batch.task(i))  # noqa: E731
        else:
            per_task = lambda i: self.meta_loss(batch.slice(i, i + 1))  # noqa: E731
        losses = []
        for i in range(batch.num_tasks):
            loss = per_task(i) * (scale / batch.num_tasks)
            loss.backward()
            losses.append(loss.detach())
        return functools.reduce(torch.add, losses)

    def _threaded_backward(self, batch: TaskBatch, scale: float, vmap: bool = False, hybrid: bool = False) -> Tensor:
        """Tasks k, k + W, k + 2W, ... in worker k (``vmap``: the k-th contiguous share, in one
        vectorised call; ``hybrid``: that share's first inner step vectorised, the rest task by task);
        partial sums added in worker order (deterministic)."""
        leaves = [p for p in self.parameters() if p.requires_grad]
        count = min(self.workers, batch.num_tasks)
        replicas = [copy.deepcopy(self.model) for _ in range(count)]
        params, lr = self.params(), self.lr()

        def work_vmap(k: int) -> tuple[list[Tensor | None], Tensor]:
            loss, embed = self._pieces(replicas[k], vmapping=True)
            share = _share(batch, k, count)
            if compiled is not None:
                losses = compiled(params, lr, share)
            else:
                losses = meta_loss_vmap(loss, params, share, lr=lr, steps=self.inner_steps,
                                        first_order=self.first_order, chunk_size=self.chunk_size, embed=embed)
            total = losses.sum() * (scale / batch.num_tasks)
            return list(torch.autograd.grad(total, leaves, allow_unused=True)), total.detach()

        def work_hybrid(k: int) -> tuple[list[Tensor | None], Tensor]:
            share = _share(batch, k, count)
            losses = meta_loss_shared_first_step(*self._hybrid_losses(replicas[k]), params, share, lr=lr,
                                                 steps=self.inner_steps, first_order=self.first_order)
            total = losses.sum() * (scale / batch.num_tasks)
            return list(torch.autograd.grad(total, leaves, allow_unused=True)), total.detach()

        def work(k: int) -> tuple[list[Tensor | None], Tensor]:
            loss, embed = self._pieces(replicas[k])
            sums: list[Tensor | None] = [None] * len(leaves)
            losses = []
            for i in range(k, batch.num_tasks, count):
                task = batch.task(i)
                if compiled is not None:  # one compiled graph: no torch.func transform runs in the thread
                    task_loss = compiled(params, lr, task)
                else:
                    task = task if embed is None else embed(task)
                    adapted = autograd_adapt(loss, params, task.support_x, task.support_y, lr=lr,
                                             steps=self.inner_steps, first_order=self.first_order,
                                             checkpoint=self.grad_checkpointing)
                    task_loss = loss(adapted, task.query_x, task.query_y)
                task_loss = task_loss * (scale / batch.num_tasks)
                grads = torch.autograd.grad(task_loss, leaves, allow_unused=True)
                sums = [g if s is None else s if g is None else s + g for s, g in zip(sums, grads)]
                losses.append(task_loss.detach())
            return sums, functools.reduce(torch.add, losses)

        if vmap:  # the workers' shares (their sizes differ by one task at most)
            examples = [_share(batch, k, count)
                        for k in range(count)]
        else:
            examples = [batch.task(i) for i in range(batch.num_tasks)]
        compiled = None if hybrid else self._compiled_for_threads("vmap" if vmap else "task", params, lr, examples)
        with ThreadPoolExecutor(count, thread_name_prefix="fastmaml-task") as pool:
            results = list(pool.map(work_hybrid if hybrid else work_vmap if vmap else work, range(count)))
        for j, leaf in enumerate(leaves):
            parts = [sums[j] for sums, _ in results if sums[j] is not None]
            if parts:
                grad = functools.reduce(torch.add, parts)
                if leaf.grad is None:
                    leaf.grad = grad
                else:  # in place, as backward accumulates: a reference to .grad sees the sum
                    leaf.grad.add_(grad)
        return functools.reduce(torch.add, [total for _, total in results])

    def adapt(
        self,
        support_x: Tensor,
        support_y: Tensor,
        steps: int | None = None,
        *,
        first_order: bool | None = None,
    ) -> Params:
        """Adapted parameters for one task after ``steps`` (default ``inner_steps``) inner steps: every
        parameter of the model, keyed like ``model.named_parameters()`` (frozen ones unchanged).

        ``support_x`` and ``support_y`` hold one task's examples, without a task dimension (a batch's
        task i is ``batch.task(i)``). Second order (``first_order=False``) keeps the graph through the
        steps so the result can be differentiated; for predictions only, call it under
        ``torch.no_grad()`` or with ``first_order=True``."""
        steps = self.inner_steps if steps is None else _check_steps(steps)
        if not isinstance(support_x, Tensor) or not isinstance(support_y, Tensor):
            raise ValueError("adapt takes one task's support_x and support_y as tensors")
        if support_x.dim() == 0 or support_y.dim() == 0 or support_x.shape[0] != support_y.shape[0]:
            raise ValueError(
                f"support_x{tuple(support_x.shape)} and support_y{tuple(support_y.shape)} must agree on the "
                "number of examples (dimension 0: adapt takes one task, without a task dimension)"
            )
        if (support_y.dim() == 2 and support_x.dim() > 2 and support_y.shape[0] == 1
                and support_x.shape[:2] == support_y.shape[:2] and not support_y.is_floating_point()
                and self._reads_examples_as_classes(support_x)):
            # one integer label per example of (1, N, ...) inputs, the model's prediction (1, N, N): a
            # task dimension left in, whose examples cross-entropy would read as N classes without an
            # error (a one-sequence tagging task, prediction (1, L, tags), is a real one-example task)
            raise ValueError(f"support_y{tuple(support_y.shape)} holds integer labels with a leading dimension of 1 "
                             "and the prediction is (1, N, N): adapt takes one task without a task dimension; pass "
                             "support_x[0], support_y[0]")
        first_order = self.first_order if first_order is None else first_order
        self._resolve_split(support_x, steps)
        loss, _ = self._pieces()
        x = self._features(support_x) if self._split else support_x
        adapted = core_adapt(loss, self.params(), x, support_y, lr=self.lr(), steps=steps, first_order=first_order)
        # every parameter of the model, the frozen ones as they are, so the dict is a full set of weights
        return {n: adapted.get(n, p) for n, p in self.model.named_parameters()}

    def _reads_examples_as_classes(self, x: Tensor) -> bool:
        """Whether the model maps the (1, N, ...) inputs ``x`` to a (1, N, N) prediction (random
        state restored: dropout draws nothing from the caller's)."""
        rng = _rng_state(x.device)
        try:
            with torch.no_grad():
                prediction = self.functional_forward(self.params(), x)
        except Exception:  # noqa: BLE001 - a model that cannot run (1, N, ...) inputs fails in adapt itself
            return False
        finally:
            _set_rng_state(rng)
        n = x.shape[1]
        return isinstance(prediction, Tensor) and tuple(prediction.shape) == (1, n, n)

    def adaptation_curve(
        self,
        batch: TaskBatch,
        steps: int,
        metric: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> Tensor:
        """``metric(prediction, query_y)`` after 0..steps inner steps for every task: (T, steps + 1, ...).

        ``metric`` defaults to the loss. Inner gradients are constants here: use it for evaluation,
        under ``torch.no_grad()``.
        """
        steps = _check_steps(steps)
        batch = TaskBatch(*batch).validate()
        self._resolve_split(batch.support_x[0], steps)
        metric = metric or self.loss_fn
        curve = self._curve(metric, steps)
        looped = lambda: torch.stack([curve(batch.task(i)) for i in range(batch.num_tasks)])  # noqa: E731
        vmapped = lambda: torch.vmap(curve, randomness="different", chunk_size=self.chunk_size)(batch)  # noqa: E731
        if self.workers > 1 and batch.support_x.device.type == "cpu" and batch.num_tasks > 1:
            looped = functools.partial(self._threaded_curves, batch, steps, metric)
            if self._thread_vmap:  # as meta_backward: small models run faster in one thread
                vmapped = functools.partial(self._threaded_curves, batch, steps, metric, vmap=True)
        return self._run(vmapped, looped, batch)

    def _curve(
        self, metric: Callable[[Tensor, Tensor], Tensor], steps: int, module: nn.Module | None = None,
        vmapping: bool | None = None,
    ) -> Callable[[TaskBatch], Tensor]:
        """One task's ``metric`` after 0..steps inner steps (:func:`adaptation_curve`), the model run as
        :meth:`functional_forward` runs it with ``module`` and ``vmapping``."""
        loss, embed = self._pieces(module, vmapping)
        forward = functools.partial(self.functional_forward, module=module, vmapping=vmapping,
                                    part="forward_head" if embed is not None else "forward")
        on_params = lambda p, x, y: metric(forward(p, x), y)  # noqa: E731
        params, lr = self.params(), self.lr()
        return lambda task: adaptation_curve(loss, on_params, params, task, lr=lr, steps=steps, embed=embed)

    def _threaded_curves(
        self, batch: TaskBatch, steps: int, metric: Callable[[Tensor, Tensor], Tensor], vmap: bool = False
    ) -> Tensor:
        """:meth:`adaptation_curve` in ``workers`` threads, one model replica each, the curves put back
        in task order: the per-task loop with tasks k, k + W, ... in worker k (each task's curve as in
        one thread: with one torch thread per worker, the same numbers), or (``vmap``) the k-th
        contiguous share of the batch vectorised in worker k. The grad mode of the calling thread
        (``torch.no_grad()`` for evaluation) holds in the workers too."""
        count = min(self.workers, batch.num_tasks)
        replicas = [copy.deepcopy(self.model) for _ in range(count)]
        grad_enabled = torch.is_grad_enabled()

        def work(k: int) -> Tensor:
            curve = self._curve(metric, steps, module=replicas[k], vmapping=vmap)
            with torch.set_grad_enabled(grad_enabled):  # grad mode is per thread
                if vmap:
                    share = _share(batch, k, count)
                    return torch.vmap(curve, randomness="different", chunk_size=self.chunk_size)(share)
                return torch.stack([curve(batch.task(i)) for i in range(k, batch.num_tasks, count)])

        with ThreadPoolExecutor(count, thread_name_prefix="fastmaml-eval") as pool:
            shares = list(pool.map(work, range(count)))
        if vmap:
            return torch.cat(shares)
        return torch.stack([shares[i % count][i // count] for i in range(batch.num_tasks)])

    # ----------------------------------------------------------------------------- strategy
    def __getstate__(self) -> dict[str, Any]:
        """Pickling (``torch.save(maml)``) and copying leave out the torch.compile'd functions, which
        cannot be pickled: a copy compiles, and checks its first compiled call, afresh."""
        state = dict(super().__getstate__())
        state.update(_compiled={}, _compiled_ran=set(), _compiled_shapes=set())
        return state

    def resolved_strategy(self, device: torch.device | None = None) -> str:
        """The strategy ``auto`` would use for this model on ``device`` (without running anything)."""
        if self._resolved is not None:
            return self._resolved
        if self.grad_checkpointing:
            return "loop"
        if vmap_unsafe(self.model):
            return "loop"
        device = device or next(self.model.parameters()).device
        has_conv = any(isinstance(m, _CONV) for m in self.model.modules())
        return "loop" if has_conv and device.type == "cpu" else "vmap"

    def _pieces(
        self, module: nn.Module | None = None, vmapping: bool | None = None
    ) -> tuple[Callable[[Params, Tensor, Tensor], Tensor], Embed | None]:
        """(loss, embed) for the core functions, the model run as :meth:`functional_forward` runs it with
        ``module`` and ``vmapping``: the whole model's loss and no embedding, or, where the model splits
        (``reuse_features``), the head's loss on features and the per-task embedding that computes them."""
        if not self._split:
            return lambda p, x, y: self._scalar_loss(self.functional_forward(p, x, module=module, vmapping=vmapping),
                                                     y), None
        head = functools.partial(self.functional_forward, module=module, vmapping=vmapping, part="forward_head")
        features = functools.partial(self._features, module=module, vmapping=vmapping)

        def embed(task: TaskBatch) -> TaskBatch:
            return TaskBatch(features(task.support_x), task.support_y, features(task.query_x), task.query_y)

        return lambda p, z, y: self._scalar_loss(head(p, z), y), embed

    def _features(self, x: Tensor, *, module: nn.Module | None = None, vmapping: bool | None = None) -> Tensor:
        """``forward_features(x)`` with θ: no adapted parameter reaches it, so none is passed."""
        return self.functional_forward({}, x, module=module, vmapping=vmapping, part="forward_features")

    def _resolve_split(self, x: Tensor, steps: int) -> None:
        """Decide, on one task's inputs ``x``, whether the model splits (see ``reuse_features``), once
        for each value of the model's training flag, and use the split for ``steps`` inner steps if it
        does and ``steps`` > 1 (with one step the body runs once on each set anyway: the split saves no
        work, and its extra calls of the head cost 7% on the sinusoid MLP,
        benchmarks/results/inner_params_cpu.md). Draws nothing from the caller's random state."""
        training = self.model.training
        if not self.reuse_features or self.strategy == "hybrid":
            self._split = False
            return
        if training not in self._splits:
            rng = _rng_state(x.device)
            try:
                self._splits[training] = self._splits_here(x, rng)
            finally:  # a resumed run, whose new MAML checks again, draws what an uninterrupted one draws
                _set_rng_state(rng)
        self._split = self._splits[training] and steps > 1

    def _splits_here(self, x: Tensor, rng: tuple) -> bool:
        """Whether the model has ``forward_features`` and ``forward_head``, no adapted parameter reaches
        the features, the features are deterministic (dropout in the body would draw one mask per task
        instead of one per inner step), and ``forward_head(forward_features(x))`` gives ``forward(x)``
        (both drawn from the caller's random state ``rng``, which the caller restores afterwards)."""
        model = self.model
        if not all(callable(getattr(model, m, None)) for m in ("forward_features", "forward_head")):
            return False
        self._parts = {m: _Method(model, m) for m in ("forward_features", "forward_head")}
        try:
            params = {n: p.detach().requires_grad_() for n, p in self.params().items()}
            with torch.enable_grad():
                z = self.functional_forward(params, x, part="forward_features")
                reached = (torch.autograd.grad(z.sum(), list(params.values()), allow_unused=True)
                           if z.requires_grad else [None])
            if any(g is not None for g in reached):
                return False  # the inner loop adapts part of the body: the whole model runs at every step
            with torch.no_grad():
                if not torch.equal(self.functional_forward(params, x, part="forward_features"), z):
                    return False  # random features (dropout): a fresh draw at every inner step, as without the split
                _set_rng_state(rng)  # the same random draws for both (dropout in the head)
                whole = self.functional_forward(params, x)
                _set_rng_state(rng)
                parts = self.functional_forward(params, z.detach(), part="forward_head")
        except Exception as error:  # noqa: BLE001 - a model whose parts cannot run alone: run it whole
            log.warning("reuse_features: the model's forward_features/forward_head could not run (%s: %s); the "
                        "inner loop runs the whole model", type(error).__name__,
                        str(error).splitlines()[0] if str(error) else "")
            return False
        if parts.shape != whole.shape:
            why = f"shapes {tuple(parts.shape)} and {tuple(whole.shape)}"
        else:
            difference = relative_difference(parts.double(), whole.double())
            why = f"relative difference {difference:.3g}" if difference > SPLIT_TOLERANCE else None
        if why:
            log.warning("reuse_features: forward_head(forward_features(x)) differs from forward(x) (%s); the inner "
                        "loop runs the whole model", why)
            return False
        return True

    def _hybrid_losses(self, module: nn.Module) -> tuple[Callable[..., Tensor], Callable[..., Tensor]]:
        """The loss as the hybrid strategy's vectorised first step runs it, and as its loop runs it."""
        def loss(p: Params, x: Tensor, y: Tensor, vmapping: bool) -> Tensor:
            return self._scalar_loss(self.functional_forward(p, x, module=module, vmapping=vmapping), y)

        return functools.partial(loss, vmapping=True), functools.partial(loss, vmapping=False)

    def _run(
        self,
        vmapped: Callable[[], Tensor],
        looped: Callable[[], Tensor],
        batch: TaskBatch,
        hybrid: Callable[[], Tensor] | None = None,
        probe_backward: bool = False,
    ) -> Tensor:
        """Evaluate with the resolved strategy (``hybrid`` only where the caller has such a path: the
        meta-loss; evaluation loops). ``probe_backward``: on auto's first call, also backpropagate the
        vmapped result once (graph kept for the caller), since some models fail under vmap only
        there (``nn.TransformerEncoderLayer`` in eval mode did, before the layer-norm reroute of
        :mod:`fastmaml.core.norm` kept it off its fused path, which has no derivative)."""
        strategy = self.resolved_strategy(batch.support_x.device)
        vmapped = functools.partial(self._vmapped, vmapped)
        if strategy == "hybrid":
            return hybrid() if hybrid is not None else looped()
        if strategy == "loop":
            return looped()
        if self.strategy == "vmap" or self._resolved == "vmap":
            return vmapped()
        rng = _rng_state(batch.support_x.device)
        leaves = [p for p in self.parameters() if p.requires_grad]
        try:  # auto, first call: vmap unless the model cannot be vmapped
            out = vmapped()
            # (a compiled meta-loss is not probed: its first call's check backpropagated both it and
            # the eager one, and a compiled backward may not run twice)
            if probe_backward and not self.compile and out.requires_grad and leaves:
                torch.autograd.grad(out.sum(), leaves, retain_graph=True, allow_unused=True)
        except Exception as vmap_error:  # noqa: BLE001 - any tracing failure: try the loop instead
            _set_rng_state(rng)  # the loop draws (dropout) what it would have drawn alone: a resumed run matches
            out = looped()  # a genuine user error raises here again, without the vmap noise
            self._fall_back_to_loop(vmap_error)
            return out
        if (probe_backward and out.requires_grad) or not leaves:
            # decided only once a meta-gradient's backward has been seen to run: after an evaluation
            # (torch.no_grad, adaptation_curve) the first training call checks it again
            self._resolved = "vmap"
        return out

    def _task_loss(self, params: Params, lr: LR, task: TaskBatch) -> Tensor:
        """One task's meta-loss (``task`` without a task dimension), as the loop strategy runs it."""
        loss, embed = self._pieces()
        return task_meta_loss(loss, params, task, lr, self.inner_steps, self.first_order, embed=embed)

    def _loop_losses(self, params: Params, lr: LR, batch: TaskBatch) -> Tensor:
        """Per-task meta-losses, one task at a time (compiled per task with ``compile``)."""
        if self.compile and torch.is_grad_enabled():
            task_loss = self._maybe_compiled("task", self._task_loss)
            return torch.stack([task_loss(params, lr, batch.task(i)) for i in range(batch.num_tasks)])
        loss, embed = self._pieces()
        return meta_loss_loop(loss, params, batch, lr=lr, steps=self.inner_steps, first_order=self.first_order,
                              checkpoint=self.grad_checkpointing, embed=embed)

    def _vmap_losses(self, params: Params, lr: LR, batch: TaskBatch) -> Tensor:
        """Per-task meta-losses, all tasks in one vectorised call."""
        loss, embed = self._pieces(vmapping=True)
        return meta_loss_vmap(loss, params, batch, lr=lr, steps=self.inner_steps, first_order=self.first_order,
                              chunk_size=self.chunk_size, embed=embed)

    def _maybe_compiled(self, kind: str, fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        """``fn`` (a method of this object) through ``torch.compile`` (one compiled function per ``kind``,
        made on first use) when ``compile`` is on and gradients are enabled, else ``fn``. If the first
        compiled call fails, warn, turn ``compile`` off and run ``fn``; ``fn`` takes everything that
        varies as arguments."""
        if not self.compile or not torch.is_grad_enabled():
            return fn
        if kind not in self._compiled:  # unbound (self is an argument), so a deep copy of MAML stays correct
            # fullgraph: a meta-loss torch.compile cannot capture whole fails on its first call and runs
            # eagerly, instead of running as pieces (torch 2.4 breaks the graph at functional_call, and
            # there the pieces gave no meta-gradient under worker threads)
            self._compiled[kind] = torch.compile(_own_code(fn.__func__), dynamic=False, fullgraph=True,
                                                 options=self._compile_options())
        compiled = functools.partial(self._compiled[kind], self)
        if kind in self._compiled_ran:
            first = next(self.model.parameters(), None)
            if first is not None and first.device.type == "cuda":  # moved there since its first call
                log.warning("compile is off on CUDA devices: torch.compile gave a wrong meta-gradient there "
                            "(benchmarks/results/gpu_h200.md); running the meta-loss eagerly")
                self.compile = False
                return fn
            return compiled

        float64_twin = functools.cache(lambda: self._float64_twin(fn))  # made once, on the first float64 check
        noted = False

        def first_call(*args: object) -> Tensor:
            nonlocal noted
            # the per-task loop calls this for every task of its first meta-batch, and each task is
            # checked; one refusal runs the rest of the batch, and the run, eagerly
            if not self.compile:
                return fn(*args)
            if any(p.device.type == "cuda" for p in self.model.parameters()):
                log.warning("compile is off on CUDA devices: torch.compile gave a wrong meta-gradient there "
                            "(benchmarks/results/gpu_h200.md); running the meta-loss eagerly")
                self.compile = False
                return fn(*args)
            try:
                got, want = self._compiled_gradients(compiled, fn, args)
                difference = relative_difference(got, want)
                refusal = accepted = None
                if difference > COMPILE_TOLERANCE:
                    refusal, accepted = self._refusal(float64_twin, args, got, want)
            except Exception as error:  # noqa: BLE001 - a compiler or tracing failure: run eagerly instead
                log.warning("torch.compile could not compile the meta-loss (%s: %s); running it eagerly",
                            type(error).__name__, str(error).splitlines()[0] if str(error) else "")
                self.compile = False
                return fn(*args)
            if refusal is not None:
                log.warning("torch.compile's meta-gradient differs from the eager one by %.3g (relative, first "
                            "meta-step; more than the %g accepted%s; torch %s); running the meta-loss eagerly",
                            difference, COMPILE_TOLERANCE, refusal, torch.__version__)
                self.compile = False
                return fn(*args)
            if accepted is not None and not noted:
                log.info("torch.compile's float32 meta-gradient differs from the eager one by %.3g, but%s",
                         difference, accepted)
                noted = True
            log.debug("torch.compile's meta-gradient (%s) is within %.3g of the eager one", kind, difference)
            self._compiled_ran.add(kind)
            return compiled(*args)

        return first_call

    def _compiled_gradients(
        self, compiled: Callable[..., Tensor], fn: Callable[..., Tensor], args: tuple
    ) -> tuple[Tensor, Tensor]:
        """(g_compiled, g_eager): the meta-gradients (and loss values, flattened, in float64) of the
        meta-loss compiled and run eagerly on ``args``. Compared once per compiled function, as
        torch.compile has given wrong meta-gradients (torch 2.5.1 CPU, conv net with batch norm under
        vmap: 0.02 where eager gives 1e-16; torch 2.11 on CUDA, benchmarks/results/gpu_h200.md). Each
        graph is used once (a compiled backward may donate its buffers, so it cannot be kept for the caller)."""
        leaves = [p for p in self.parameters() if p.requires_grad]

        def run(meta_loss: Callable[..., Tensor]) -> Tensor:
            loss = meta_loss(*args)
            if not loss.requires_grad or not leaves:
                return loss.detach().reshape(-1).double()
            grads = torch.autograd.grad(loss.sum(), leaves, allow_unused=True)
            parts = [(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, leaves)]
            return torch.cat([*parts, loss.detach().reshape(-1)]).double()

        # both runs draw from the caller's random state (the same dropout masks, where they can
        # match), and the caller's stream is left as it was: the check draws nothing from it
        state = torch.random.get_rng_state()
        try:
            got = run(compiled)
            torch.random.set_rng_state(state)
            want = run(fn)
        finally:
            torch.random.set_rng_state(state)
        return got, want

    def _float64_twin(self, fn: Callable[..., Tensor]) -> tuple[MAML, Callable[..., Tensor], Callable[..., Tensor]]:
        """A float64 copy of this MAML, the meta-loss ``fn`` (a method of this object) compiled afresh for
        it, and ``fn`` run eagerly on it. The weights do not change within the first meta-batch, so one
        copy serves every task the per-task loop checks."""
        twin = copy.deepcopy(self).to(torch.float64)
        compiled = torch.compile(_own_code(fn.__func__), dynamic=False, fullgraph=True, options=twin._compile_options())
        return twin, functools.partial(compiled, twin), fn.__func__.__get__(twin)

    def _refusal(
        self, float64_twin: Callable[[], tuple], args: tuple, got: Tensor, want: Tensor
    ) -> tuple[str | None, str | None]:
        """(why a compiled meta-gradient ``got`` further than COMPILE_TOLERANCE from the eager ``want``
        is refused, None) or (None, the figures) when the float64 check finds rounding, not a wrong
        graph (see COMPILE_F64_TOLERANCE): the same meta-loss compiled and run eagerly on
        ``float64_twin()`` with the batch in ``args`` in float64 (the parameters and learning rates are
        the copy's own)."""
        if not all(p.dtype == torch.float32 for p in self.parameters()):
            return "", None  # float64 already (the difference is no rounding), or half precision: no check here
        twin, compiled, eager = float64_twin()
        batch = type(args[2])(*[t.to(torch.float64) if t.is_floating_point() else t for t in args[2]])
        got64, want64 = twin._compiled_gradients(compiled, eager, (twin.params(), twin.lr(), batch))
        graph = relative_difference(got64, want64)
        compiled32, eager32 = relative_difference(got, want64), relative_difference(want, want64)
        bound = max(COMPILE_ROUNDING_TOLERANCE, COMPILE_ROUNDING_FACTOR * eager32)
        figures = (f" in float64 compiled and eager differ by {graph:.2g}, and the compiled float32 meta-gradient "
                   f"is {compiled32:.2g} from the float64 one, eager float32 {eager32:.2g}")
        if graph > COMPILE_F64_TOLERANCE:
            return f";{figures}: a wrong compiled graph (more than {COMPILE_F64_TOLERANCE:g} in float64)", None
        if compiled32 > bound:
            return f";{figures}: compiled float32 rounds too coarsely (more than {bound:.2g})", None
        return None, f"{figures}: rounding (within {bound:.2g}), so the meta-loss runs compiled"

    def _compile_options(self) -> dict | None:
        """Inductor options. On the CPU, Welford's algorithm for every variance (see
        :data:`WELFORD_VARIANCE`). With worker threads on the CPU, the C++ wrapper: it runs each compiled
        graph without holding Python's GIL, so the threads run in parallel (2 workers, Omniglot
        5-way 5-shot: 0.600 s per iteration against 0.734 s with the default Python wrapper, which
        holds the GIL between kernels, and 0.743 s eager; benchmarks/results/fewshot_cpu.md)."""
        on_cpu = all(p.device.type == "cpu" for p in self.model.parameters())
        threads = self.workers > 1 and on_cpu and (self.resolved_strategy() == "loop" or self._thread_vmap)
        options = {**(_welford_variance() if on_cpu else {}), **({"cpp_wrapper": True} if threads else {})}
        return options or None

    def _compiled_for_threads(
        self, kind: str, params: Params, lr: LR, examples: list[TaskBatch]
    ) -> Callable[..., Tensor] | None:
        """The compiled per-task (``kind="task"``) or vectorised (``"vmap"``) meta-loss for worker
        threads, or None (``compile`` off or failed).

        ``examples`` are what the workers will run (every task of the batch, or the workers' shares).
        Every shape among them not seen before compiles here, in the calling thread: forward and
        backward, results thrown away (the meta-gradient is the same as without it), so that the
        threads only run compiled graphs. On the first meta-batch every example goes through the
        compile check, as the single-threaded meta-loss checks every task."""
        if not self.compile or not torch.is_grad_enabled():
            return None
        checking = kind not in self._compiled_ran
        fn = self._maybe_compiled(kind, self._task_loss if kind == "task" else self._vmap_losses)
        inputs = [p for p in self.parameters() if p.requires_grad]
        for example in examples:
            key = (kind, tuple(tuple(t.shape) for t in example))
            if (key in self._compiled_shapes and not checking) or not self.compile:
                continue
            torch.autograd.grad(fn(params, lr, example).sum(), inputs, allow_unused=True)
            self._compiled_shapes.add(key)
        return functools.partial(self._compiled[kind], self) if self.compile else None

    def _fall_back_to_loop(self, vmap_error: Exception) -> None:
        """``auto`` after vmap failed on its first call and the loop ran instead: loop from now on."""
        log.warning("vmap could not run this model (%s); using a per-task loop instead", vmap_error)
        self._resolved = "loop"

    def _vmapped(self, fn: Callable[[], Tensor]) -> Tensor:
        self._vmapping = True
        try:
            return fn()
        finally:
            self._vmapping = False
