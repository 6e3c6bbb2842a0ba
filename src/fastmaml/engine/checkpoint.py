"""Checkpoints that survive crashes and never unpickle: one safetensors file per checkpoint.

Tensors (weights, optimiser moments, RNG states) are the safetensors payload; everything else
(config, step, optimiser hyper-parameters, metrics so far) is JSON in the file's metadata header.
A write goes to a temporary file that is fsynced and then renamed over the old one, so a reader
sees either the old or the new checkpoint, never half of one; the previous checkpoint is kept
beside it as ``<name>.prev.safetensors`` and used if the newest cannot be read.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import Tensor

from fastmaml.errors import CheckpointError

log = logging.getLogger(__name__)

FORMAT = "fastmaml-checkpoint-1"
_TENSOR = "__tensor__"


def pack(obj: Any, prefix: str, tensors: dict[str, Tensor]) -> Any:
    """A JSON-able copy of ``obj`` whose tensors are moved into ``tensors`` under ``prefix`` keys."""
    if isinstance(obj, Tensor):
        tensors[prefix] = obj.detach().to("cpu").contiguous().clone()
        return {_TENSOR: prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[pack(k, f"{prefix}.k{i}", tensors), pack(v, f"{prefix}.{i}", tensors)]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [pack(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)],
                "tuple": isinstance(obj, tuple)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def unpack(obj: Any, tensors: dict[str, Tensor]) -> Any:
    """Inverse of :func:`pack`."""
    if isinstance(obj, dict):
        if _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        if "__dict__" in obj:
            return {unpack(k, tensors): unpack(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            items = [unpack(v, tensors) for v in obj["__list__"]]
            return tuple(items) if obj["tuple"] else items
    return obj


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable; skipped where the file system refuses to fsync a folder."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it (the caller renames it into place)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def followed(path: str | Path) -> Path:
    """``path``, or the file it links to when it is a symbolic link: a rename over the link itself would
    turn a user's linked file (a config.json shared between runs) into a private copy and leave the
    file it pointed at unchanged."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def replace_atomically(path: str | Path, data: bytes) -> None:
    """Replace ``path`` (the file it links to, if a link) with ``data`` so that a reader, or the file
    after a crash, is either the old or the new content: temporary file beside it, fsync, rename,
    fsync of the folder. A ``path`` that is not a regular file (a device such as /dev/null or
    /dev/stdout, a named pipe) is written into instead: renaming onto it replaced a device node
    with a file (as root, /dev/full became a 668-byte file)."""
    if os.path.exists(path) and not os.path.isfile(path):
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, "is a folder", str(path))
        with open(path, "wb") as f:
            f.write(data)
        return
    path = followed(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write_synced(tmp, data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def temporary_files(path: Path) -> list[Path]:
    """Temporary files that writes of ``path`` (a checkpoint) left behind when killed mid-write."""
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def previous_path(path: Path) -> Path:
    return path.with_name(path.name.replace(".safetensors", ".prev.safetensors"))


def save(path: str | Path, tensors: dict[str, Tensor], meta: dict[str, Any], keep_previous: bool = True) -> None:
    """Write atomically: temp file, fsync, keep the old one as ``.prev``, rename. A link at ``path`` is
    replaced by the file (unlike :func:`replace_atomically`): the ``.prev`` copy, which loading falls
    back to, must sit beside the name the run reads."""
    path = Path(path)
    data = safetensors.torch.save(
        {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
        metadata={"format": FORMAT, "meta": json.dumps(meta)},
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write_synced(tmp, data)
        if keep_previous and path.exists():
            prev, prev_tmp = previous_path(path), path.with_name(f".{path.name}.prev.tmp")
            prev_tmp.unlink(missing_ok=True)
            try:
                os.link(path, prev_tmp)  # the current checkpoint stays in place until the new one replaces it
            except OSError:  # a file system without hard links (FAT, some network mounts): a copy, fsynced
                write_synced(prev_tmp, path.read_bytes())
            os.replace(prev_tmp, prev)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write leaves no temporary file behind
    _fsync_dir(path.parent)


def load(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors and metadata of one checkpoint file; CheckpointError if it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path} (a run writes one every checkpoint_every iterations and "
                              "when it ends or is stopped); train the run, or name an existing checkpoint")
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if header.get("format") != FORMAT:
            raise ValueError(f"format {header.get('format')!r}, expected {FORMAT!r}")
        meta = json.loads(header["meta"])
        if not isinstance(meta, dict):
            raise ValueError(f"its metadata is a {type(meta).__name__}, not an object")
    except (OSError, MemoryError):  # the file may be fine (a read error, a permission): no fallback, no set-aside
        raise
    except Exception as error:  # noqa: BLE001 - any decoding failure means the file is unusable
        fallback = (f"delete it to fall back to {previous_path(path).name}" if previous_path(path).is_file()
                    else "restore it from a copy")
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a fastmaml checkpoint ({error}); {fallback}, or start a new run"
        ) from None
    return tensors, meta


def part(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The tensors whose names start with ``prefix`` (``maml/``, ``baseline/``), named without it."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_weights(module: torch.nn.Module, state: dict[str, Tensor], source: str | Path) -> None:
    """``module.load_state_dict(state)``; a CheckpointError that names ``source`` (the checkpoint or
    run) where the weights do not fit the module the run's config.json describes (a hand-edited
    config.json: another width, depth or number of ways)."""
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else type(error).__name__
        raise CheckpointError(
            f"the weights in {source} do not fit the model that its config.json describes ({detail}); was "
            "config.json edited after training? Restore it, or start a new run"
        ) from None


def load_latest(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any], Path]:
    """The newest readable checkpoint among ``path`` and its ``.prev`` copy."""
    path = Path(path)
    try:
        return (*load(path), path)
    except CheckpointError as error:
        prev = previous_path(path)
        if not prev.is_file():
            raise
        try:
            loaded = load(prev)
        except CheckpointError:  # one error, not a warning that promises the previous one first
            kept = sorted((path.parent / "snapshots").glob("iteration_*.safetensors"))
            rescue = (f"copy the newest snapshot, {kept[-1]}, to {path} to continue from there"
                      if path.name == "checkpoint.safetensors" and kept else "restore it from a copy")
            raise CheckpointError(f"checkpoint {path} is corrupt or not a fastmaml checkpoint (the previous checkpoint "
                                  f"{prev} cannot be read either); {rescue}, or start a new run") from None
        log.warning("%s; using the previous checkpoint, %s", str(error).split("; ")[0], prev)
        return (*loaded, prev)


def rng_state_tensors(generator: torch.Generator, device: torch.device | None = None) -> dict[str, Tensor]:
    """The random states a resume restores: the task generator's, the CPU's global one, and on a CUDA
    ``device`` that GPU's (dropout there draws from it; without it a resumed run redrew iteration 0's)."""
    states = {"rng/tasks": generator.get_state(), "rng/torch": torch.get_rng_state()}
    if device is not None and torch.device(device).type == "cuda":
        states["rng/cuda"] = torch.cuda.get_rng_state(device)
    return states


def restore_rng(generator: torch.Generator, tensors: dict[str, Tensor], device: torch.device | None = None) -> None:
    """Undo :func:`rng_state_tensors`; a GPU's state only where the run resumes on a GPU and has one
    (a CPU run resumed on a GPU, or the reverse, keeps the seeded state it has)."""
    generator.set_state(tensors["rng/tasks"])
    torch.set_rng_state(tensors["rng/torch"])
    if device is not None and torch.device(device).type == "cuda" and "rng/cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng/cuda"], device)
