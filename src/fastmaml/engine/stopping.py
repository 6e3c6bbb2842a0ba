"""Stopping a training run cleanly on SIGINT (Ctrl-C), SIGTERM (a job scheduler's stop; torchrun
passes it on to its processes) or SIGUSR1 (a scheduler's early warning, e.g. SLURM's
``--signal=USR1@120``).

While :func:`stop_on_signals` is active, any of them only asks the run to stop: the trainer
finishes the iteration it is in, logs it, saves a checkpoint there and raises
:class:`~fastmaml.errors.TrainingStopped`, so ``fastmaml train --resume RUN`` continues exactly
where it stopped (bit for bit on the CPU, as after any checkpoint) instead of from the last periodic
checkpoint, which may be ``checkpoint_every`` iterations back. A second Ctrl-C stops at once
(KeyboardInterrupt; the last periodic checkpoint stays). Under torchrun the processes learn of a
request at their next log or checkpoint iteration (one all-reduce there, none per iteration), so
they all stop at the same iteration; a launcher that kills its processes sooner than that (torchrun
waits 30 s after passing SIGTERM on) leaves the last periodic checkpoint, as before.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

import torch

from fastmaml.engine.distributed import Cluster
from fastmaml.errors import TrainingStopped

log = logging.getLogger(__name__)

# SIGUSR1: the early warning a batch scheduler sends ahead of its SIGTERM (SLURM's --signal=USR1@120),
# time enough for an iteration longer than the scheduler's grace between SIGTERM and SIGKILL (a meta-RL
# iteration on MuJoCo takes a minute or more); Windows has no SIGUSR1
SIGNALS = tuple(sig for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGUSR1", None)) if sig is not None)


class StopRequest:
    """Set by :func:`stop_on_signals`'s handler: the signal that asked to stop, or None."""

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None


# the request :func:`hold_stop_signals` keeps while it is active (None outside it)
_held: StopRequest | None = None
HELD_SIGNALS = tuple(sig for sig in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)) if sig is not None)


@contextlib.contextmanager
def hold_stop_signals(active: bool = True) -> Iterator[StopRequest]:
    """Within it, SIGTERM and SIGUSR1 that arrive outside :func:`stop_on_signals` (before training
    starts, or while the error that ended it is being reported) are held instead of killing the
    process: the yielded request records them, and a :func:`stop_on_signals` entered later starts
    with it, so the run stops at its first iteration where it may (under torchrun its first log or
    checkpoint iteration) with a checkpoint there.

    The ``fastmaml train`` command holds them in a torchrun process: torchrun passes SIGTERM on to
    every process as soon as one of them has gone, and the process that had just lost it would
    otherwise die between leaving the training loop and printing the line that says so (seen once
    in a CI run). torchrun kills what is still running 30 s after its SIGTERM, so nothing outlives
    it. SIGINT is not held: Ctrl-C still interrupts at once. ``active=False``, or outside the main
    thread: nothing is installed."""
    global _held
    request = StopRequest()
    if _held is not None:  # inside another: that one holds them
        yield _held
        return
    if not active or threading.current_thread() is not threading.main_thread():
        yield request
        return

    def hold(signum: int, frame: object) -> None:
        del frame
        if not request.requested:
            request.signal = signal.Signals(signum)

    previous = {sig: signal.signal(sig, hold) for sig in HELD_SIGNALS}
    _held = request
    try:
        yield request
    finally:
        _held = None
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


@contextlib.contextmanager
def stop_on_signals(announce: bool = True) -> Iterator[StopRequest]:
    """Within it, SIGINT, SIGTERM and SIGUSR1 set the yielded :class:`StopRequest` instead of stopping the
    process (a second SIGINT raises KeyboardInterrupt); the previous handlers come back on exit.
    ``announce``: log a warning when a request arrives (rank 0 only, under torchrun). Outside the
    main thread, where Python cannot install handlers, nothing is installed and no request comes."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    if _held is not None and _held.requested:  # it came before training started (hold_stop_signals)
        request.signal = _held.signal
        if announce:
            log.warning("%s received before training started: stopping at the first iteration that can "
                        "save a checkpoint", request.signal.name)

    def handle(signum: int, frame: object) -> None:
        del frame
        if request.requested:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        request.signal = signal.Signals(signum)
        if announce:
            log.warning("%s received: stopping after this iteration with a checkpoint there%s", request.signal.name,
                        " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else "")

    previous = {sig: signal.signal(sig, handle) for sig in SIGNALS}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: set outside Python


def stop_now(request: StopRequest | None, cluster: Cluster, due: bool) -> bool:
    """Whether a trainer stops after the iteration it has just finished: as soon as a request came,
    in one process; under torchrun only at ``due`` iterations (its log and checkpoint iterations,
    the same on every rank), where the ranks agree by one all-reduce."""
    if request is None:
        return False
    if not cluster.active:
        return request.requested
    return due and bool(cluster.all_sum(torch.tensor([float(request.requested)])).item() > 0)


def stopped(request: StopRequest, run_dir: object, step: int) -> TrainingStopped:
    """The error a trainer raises once it has saved its checkpoint at ``step`` after a stop request
    (under torchrun, a rank that got no signal itself reports SIGTERM, what torchrun passes on)."""
    sig = request.signal or signal.SIGTERM
    return TrainingStopped(f"stopped by {sig.name} at iteration {step}, with a checkpoint there in {run_dir}; "
                           f"continue with: fastmaml train --resume {run_dir}", int(sig))
