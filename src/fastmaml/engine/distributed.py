"""Meta-training across processes with ``torch.distributed`` (launched by ``torchrun``).

Every rank draws the same full meta-batch from the one seeded task stream and keeps its own slice
of the tasks, so the union over ranks is exactly the single-process meta-batch. Each rank's loss is
weighted by its share of the tasks and the gradients are summed with all-reduce: the update equals
the single-process one up to floating-point summation order, and all ranks stay identical without
a broadcast after every step. Rank 0 alone writes logs and checkpoints. Meta-RL takes its share of
the tasks with :meth:`Cluster.rows` and sums TRPO's gradient, Hessian-vector products and line-search
values with :meth:`Cluster.all_sum` (``fastmaml.rl.trainer``).

    torchrun --nproc_per_node 2 -m fastmaml train sinusoid --out runs/ddp      # one node, 2 processes
    torchrun --nnodes 2 --node_rank 0 --master_addr HOST --master_port 29500 \\
             --nproc_per_node 8 -m fastmaml train omniglot ... --device cuda   # and node_rank 1 on the other

Nothing but the data set needs to be shared between nodes: rank 0 alone writes the run folder, and
to ``--resume`` rank 0 alone reads it, handing the config to the other processes through torchrun's
rendezvous store (:func:`from_rank0_before_group`) and the checkpoint through the process group
(:meth:`Cluster.from_main`); tested as two nodes of one process each on 127.0.0.1, the second in a
folder without the run (tests/integration/test_distributed.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from fastmaml import errors
from fastmaml.core import TaskBatch
from fastmaml.errors import ConfigError, FastMAMLError

T = TypeVar("T")

# set by the fastmaml command under torchrun, which ends its process with os._exit (fastmaml.cli.run)
_EXIT_CLOSES_GROUP = False


def exit_closes_process_group() -> None:
    """Leave the process group to the process's exit: :meth:`Cluster.close` then stops after its
    barrier. ``dist.destroy_process_group`` can hang after a clean finish (seen once here: torch
    2.4.1, Python 3.10, rank 0 in it for minutes after rank 1 had finished and exited;
    pytorch/pytorch#75097), and a process that ends with ``os._exit`` does not need it."""
    global _EXIT_CLOSES_GROUP
    _EXIT_CLOSES_GROUP = True


@dataclass(frozen=True)
class Cluster:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def rows(self, total: int) -> slice:
        """This rank's contiguous share of ``total`` tasks (sizes differ by at most one)."""
        return slice(self.rank * total // self.world_size, (self.rank + 1) * total // self.world_size)

    def shard(self, batch: TaskBatch) -> tuple[TaskBatch, float]:
        """This rank's slice of the tasks and its share of the meta-batch (the loss weight)."""
        total = batch.num_tasks
        rows = self.rows(total)
        return batch.slice(rows.start, rows.stop), (rows.stop - rows.start) / total

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over ranks, as a new tensor on ``tensor``'s device (copied to this rank's
        GPU and back where the backend is NCCL and ``tensor`` is on the CPU)."""
        if not self.active:
            return tensor
        comm = tensor.device
        if dist.get_backend() == "nccl" and comm.type != "cuda":
            comm = torch.device("cuda", torch.cuda.current_device())
        out = tensor.detach().to(comm, copy=True)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.to(tensor.device)

    def sum_(self, tensors: Iterable[torch.Tensor]) -> None:
        """In-place sum over ranks (gradients, loss accumulators), as one flat all-reduce."""
        if not self.active:
            return
        tensors = list(tensors)
        flat = self.all_sum(torch.cat([t.reshape(-1) for t in tensors]))
        for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
            t.copy_(part.view_as(t))

    def from_main(self, make: Callable[[], T]) -> T:
        """``make()`` run by rank 0 alone and its result sent to every rank (a checkpoint only rank 0's
        node holds). A user error it raises on rank 0 is raised on every rank, so none waits for a
        result that will not come."""
        if not self.active:
            return make()
        box: list[Any] = [None]
        if self.is_main:
            try:
                box = [(True, make())]
            except (FastMAMLError, OSError) as error:  # an OSError too (a full disk): the others would wait
                box = [(False, error)]
        dist.broadcast_object_list(box, src=0)
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self, clean: bool = True) -> None:
        """Tear the process group down. After a clean finish every rank first waits at a barrier, so
        none destroys its gloo connections while a peer is still writing its last checkpoint or
        exchanging the last all-reduce (a rank that left early aborted with "terminate called
        without an active exception" on a loaded CI machine). After an error the peers may be gone,
        so no barrier is attempted. Under the fastmaml command the group is then left to the
        process's exit (:func:`exit_closes_process_group`)."""
        if not (self.active and dist.is_initialized()):
            return
        if clean:
            self.barrier()
        if not _EXIT_CLOSES_GROUP:
            dist.destroy_process_group()


def launched_world_size() -> int:
    """How many processes torchrun started for this job (its ``WORLD_SIZE``; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    """This process's rank among them (torchrun's ``RANK``; 0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


_STORE: Any = None  # this torchrun job's rendezvous store, made once (job_store)
READ_TIMEOUT_S = 60.0  # how long rank 0 waits for the other ranks to read its error (from_rank0_before_group)


def job_store():
    """The key-value store of this torchrun job's rendezvous: what ``init_process_group("env://")``
    would connect to (torchrun's agent store, or a TCPStore that rank 0 hosts at MASTER_PORT), made
    once so that processes can exchange values before the process group exists and the group then
    forms on the same store."""
    global _STORE
    if _STORE is None:
        from torch.distributed.rendezvous import rendezvous

        _STORE = next(rendezvous("env://"))[0]
    return _STORE


def from_rank0_before_group(key: str, make: Callable[[], Any]) -> Any:
    """``make()`` (a JSON value) computed by rank 0 alone and handed to every process of the torchrun
    job through the rendezvous store, before the process group exists (a resumed run's config, which
    says which backend the group needs). A fastmaml error raised by ``make()`` on rank 0 is raised in
    every process. Without torchrun, just ``make()``."""
    world = launched_world_size()
    if world == 1:
        return make()
    store = dist.PrefixStore("fastmaml", job_store())
    if launched_rank() == 0:
        try:
            value = make()
        except FastMAMLError as error:
            store.set(key, json.dumps({"error": type(error).__name__, "message": str(error)}))
            _leave_once_read(store, key, world)
            raise
        store.set(key, json.dumps({"value": value}))
        return value
    box = json.loads(store.get(key))
    store.set(f"{key}/read/{launched_rank()}", "1")
    if "error" in box:
        raise _error_of(box, box["message"])
    return box["value"]


def _leave_once_read(store: Any, key: str, world: int) -> None:
    """Rank 0, about to raise an error the other ranks read from the store under ``key``: the store
    lives in rank 0's torchrun agent, which shuts it down as soon as rank 0 exits, and a rank still
    starting would then wait for a store that is gone (seen on a loaded CI machine, the other node's
    worker hung until killed); so rank 0 leaves only once every rank has marked the error read, or
    after READ_TIMEOUT_S when one never does."""
    with contextlib.suppress(Exception):  # a timeout: exit anyway
        store.wait([f"{key}/read/{rank}" for rank in range(1, world)], timedelta(seconds=READ_TIMEOUT_S))


def _error_of(box: dict[str, Any], message: str) -> FastMAMLError:
    """The fastmaml error a store entry ``{"error": class name, ...}`` names, with ``message``."""
    return getattr(errors, box["error"], FastMAMLError)(message)


def agree_before_group(key: str, check: Callable[[], None]) -> None:
    """``check()`` run in every process of the torchrun job before the process group exists (each
    node checks its own copy of the data set), and the error of the first process whose check failed
    raised in every process: a node whose data was bad stopped with its error while the others waited
    in the rendezvous for it until killed. Without torchrun, just ``check()``."""
    world = launched_world_size()
    if world == 1:
        check()
        return
    store, rank = dist.PrefixStore("fastmaml", job_store()), launched_rank()
    try:
        check()
        outcome: dict[str, Any] = {"ok": True}
    except (FastMAMLError, OSError) as error:  # an OSError too (a file it could not read): the others would wait
        kind = type(error).__name__ if isinstance(error, FastMAMLError) else "DataError"
        outcome = {"error": kind, "message": str(error), "rank": rank}
    store.set(f"{key}/{rank}", json.dumps(outcome))
    failed = [box for box in (json.loads(store.get(f"{key}/{r}")) for r in range(world)) if "error" in box]
    if not failed:
        return
    store.set(f"{key}/read/{rank}", "1")
    if rank == 0:
        _leave_once_read(store, key, world)
    first = failed[0]
    said = first["message"] if first["rank"] == rank else f"rank {first['rank']} of {world}: {first['message']}"
    raise _error_of(first, said)


# what gloo (and the store) raise in a process whose peer has gone: it failed or was killed, and said why
# on its own node
_LOST_PEER = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def lost_peer(error: BaseException) -> str | None:
    """When ``error`` is this torchrun process losing another process of the job (which failed with an
    error of its own, or was killed) rather than a failure of its own: what gloo said, without its
    source location and advice ("[.../pair.cc:537] Read error [127.0.0.1]:3477: Connection reset by
    peer. This is ..." -> "Read error [127.0.0.1]:3477: Connection reset by peer"); otherwise None."""
    if launched_world_size() == 1 or not isinstance(error, RuntimeError):
        return None
    network = getattr(dist, "DistNetworkError", ())  # torch >= 2.2
    text = str(error).strip()
    if not ((network and isinstance(error, network)) or any(lost in text for lost in _LOST_PEER)):
        return None
    text = re.sub(r"^\[[^\]]*\]\s*", "", text).split(". ")[0]
    return (text.splitlines() or [type(error).__name__])[0][:160]


def init_from_env(device: str, meta_batch_size: int) -> Cluster:
    """A Cluster from torchrun's environment variables (a single process when they are absent)."""
    world = launched_world_size()
    if world == 1:
        return Cluster()
    if meta_batch_size < world:
        raise ConfigError(f"meta_batch_size={meta_batch_size} is smaller than the {world} processes; "
                          "raise meta_batch_size or start fewer processes")
    check_one_gpu_per_process(device)
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # on the store a resume may already have used (from_rank0_before_group); rank and size from torchrun
        dist.init_process_group(backend, store=dist.PrefixStore("default_pg", job_store()),
                                rank=launched_rank(), world_size=world)
    return Cluster(dist.get_rank(), dist.get_world_size())


# how a command is told to use the CPU: train has --device, eval / adapt / study take --set
CPU_HINT = "--device cpu, or --set device=cpu"


def check_one_gpu_per_process(device: str) -> None:
    """Under torchrun with CUDA every process needs a GPU of its own (NCCL refuses two ranks on one
    GPU, "Duplicate GPU detected"): one clear error, the same in every process, before the group
    forms, where a process would otherwise fail in ``set_device`` or inside NCCL."""
    if not device.startswith("cuda") or launched_world_size() == 1:
        return
    if device != "cuda":
        raise ConfigError(f"device={device} under torchrun would put every process on that one GPU, which NCCL "
                          "refuses; use --device cuda (or --set device=cuda): each process takes the GPU numbered "
                          "by its LOCAL_RANK (choose the GPUs with CUDA_VISIBLE_DEVICES)")
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    visible = torch.cuda.device_count()
    if local > visible:
        raise ConfigError(f"torchrun started {local} processes on this node, but it has {visible} GPU(s) visible "
                          f"and each process needs its own: start at most {visible} (--nproc_per_node "
                          f"{max(visible, 1)}), or train on the CPU with gloo ({CPU_HINT})")


DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")  # what a run may name; only cpu and cuda have been tested


def exit_unless_usable(device: str, program: str) -> None:
    """For the benchmark scripts: exit with ``PROGRAM: error: ...`` (:func:`check_device`'s message)
    where ``device`` cannot be used, not torch's "not compiled with CUDA enabled" traceback."""
    try:
        check_device(str(device))
    except ConfigError as error:
        raise SystemExit(f"{os.path.basename(program)}: error: {error}") from None


def check_device(device: str) -> None:
    """One clear error for a device this process cannot use: a name torch does not know or fastmaml
    does not run on (``meta``, ...), a CUDA device on a torch build or machine without that GPU, or
    another accelerator this torch build was not made for."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if parsed.type not in DEVICE_TYPES:
        raise ConfigError(f"device {device!r} is not one fastmaml runs on; use cpu, cuda or cuda:N")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for, but this torch build sees no CUDA GPU; "
                              f"run on the CPU instead ({CPU_HINT})")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r} asked for, but this machine shows {torch.cuda.device_count()} "
                              f"CUDA GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}; choose one of them")
    elif parsed.type != "cpu":
        backend = torch.backends.mps if parsed.type == "mps" else getattr(torch, parsed.type, None)
        if backend is None or not backend.is_available():
            raise ConfigError(f"device {device!r} asked for, but this torch build or machine has no "
                              f"{parsed.type.upper()} device; run on the CPU instead ({CPU_HINT})")


def set_tf32(device: str, allowed: bool) -> None:
    """On CUDA, whether cuDNN convolutions and cuBLAS matmuls may use TF32 (``TrainConfig.tf32``).

    PyTorch lets convolutions use TF32 by default; for second-order MAML through batch norm that
    costs most of the meta-gradient's precision (benchmarks/results/gpu_h200.md), so fastmaml's
    trainer turns it off unless asked.
    """
    if device.startswith("cuda"):
        torch.backends.cudnn.allow_tf32 = allowed
        torch.backends.cuda.matmul.allow_tf32 = allowed


@contextlib.contextmanager
def tf32_mode(device: str, allowed: bool):
    """:func:`set_tf32` for the block, the process's flags restored after: ``train`` and ``eval``
    (whose ``--set tf32=...`` was accepted and not applied, so a GPU meta-test ran with PyTorch's
    default TF32 convolutions where training had them off) leave a caller's precision as it was."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    set_tf32(device, allowed)
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def device_for(device: str) -> str:
    """Under torchrun, ``cuda`` means this process's own GPU (LOCAL_RANK)."""
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return device


def cuda_or_cpu(device: str) -> str:
    """A run's CUDA ``device`` (as :func:`device_for` resolves it) where this machine has CUDA, else
    the CPU: where a trained run's images and model go when it is used again, e.g. a GPU run
    meta-tested on a machine without one."""
    if not device.startswith("cuda"):  # the CPU, or another accelerator where this machine has it
        try:
            check_device(device)
        except ConfigError:
            return "cpu"
        return device
    if not torch.cuda.is_available():
        return "cpu"
    resolved = device_for(device)
    index = torch.device(resolved).index  # a GPU this machine lacks (cuda:5 on one GPU): its first
    return resolved if index is None or index < torch.cuda.device_count() else "cuda"
