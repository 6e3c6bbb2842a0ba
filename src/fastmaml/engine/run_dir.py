"""The files of a run folder, in one place."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no lock (see training_lock)
    fcntl = None  # type: ignore[assignment]

from fastmaml.config import apply_eval_overrides, changed_since_checkpoint, from_dict, to_dict
from fastmaml.engine import checkpoint
from fastmaml.engine.experiment import Experiment, get_preset
from fastmaml.errors import CheckpointError, DataError

log = logging.getLogger(__name__)

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.safetensors"
BEST = "best.safetensors"
EVAL = "eval.json"
PLOTS = "plots"
SNAPSHOTS = "snapshots"  # checkpoints kept every ``snapshot_every`` iterations: snapshots/iteration_000100.safetensors
LOCK = ".train.lock"  # held by the process that trains the run (training_lock)
UNREADABLE = "checkpoint.unreadable.safetensors"  # an unreadable newest checkpoint, set aside on resume


# a JSON list holding only numbers (no nested list, object or string)
_NUMBER_LIST = re.compile(r"\[\s*([-+0-9.eE]+(?:,\s*[-+0-9.eE]+)*)\s*\]")


def write_eval(run_dir: Path, report: dict[str, Any], which: str | int = "checkpoint") -> None:
    """Save an eval report to ``RUN_DIR/eval.json`` (a snapshot's, ``which`` an iteration, beside it:
    ``snapshots/iteration_000100.eval.json``): indented, each list of numbers on one line (an
    Omniglot report of 600 tasks x 11 steps: 106 KB instead of 260 KB with one number per line),
    written to a temporary file and renamed, so a killed eval leaves the previous report whole."""
    path = eval_path(run_dir, which)
    larger = _larger_report(path, report)
    if larger:  # a quick look (--tasks 10) must not replace the run's full meta-test, which compare reads
        log.warning("%s not saved: %s holds a report of %s; delete it first to replace it",
                    _protocol(report), path, larger)
        return
    text = _NUMBER_LIST.sub(lambda m: "[" + ", ".join(re.split(r",\s*", m.group(1))) + "]",
                            json.dumps(report, indent=2))
    path = checkpoint.followed(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # its own: two evals of a run at once wrote one name
    try:
        tmp.write_text(text + "\n")
    except OSError as error:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise CheckpointError(f"cannot save the eval report to {path} ({error.strerror} writing {tmp.name}); make "
                              f"{path.parent} writable, then run the eval again") from None
    try:
        os.replace(tmp, path)
    except OSError as error:  # e.g. eval.json is a folder: the report is kept in the temporary file, not lost
        what = "is a folder" if path.is_dir() else f"cannot be replaced ({error.strerror})"
        raise CheckpointError(f"{path} {what}; the eval report was saved to {tmp} instead: move {path} away, "
                              f"then rename {tmp.name} to {path.name}") from None


def _protocol(report: dict[str, Any]) -> str:
    return f"a report of {report.get('tasks')} tasks and {report.get('steps')} steps"


def _larger_report(path: Path, report: dict[str, Any]) -> str | None:
    """The protocol of the report already at ``path`` when it scores at least as many tasks and steps
    as ``report`` and more of one, whatever checkpoint it scored; else None. (Only a report of the
    same iteration and kind was kept: `eval --best --tasks 5` then `eval --tasks 5` replaced a
    600-task meta-test of the latest checkpoint, the one compare and plot read.)"""
    try:
        old = json.loads(path.read_text())
        more = (old["tasks"] >= report["tasks"] and old["steps"] >= report["steps"]
                and (old["tasks"], old["steps"]) != (report["tasks"], report["steps"]))
        scored = f"{old.get('checkpoint', 'checkpoint')} at iteration {old.get('step')}"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # none, or unreadable: the new report replaces it
    return f"{old['tasks']} tasks and {old['steps']} steps ({scored})" if more else None


def eval_path(run_dir: Path, which: str | int = "checkpoint") -> Path:
    """Where the eval report of ``which`` lives: ``RUN_DIR/eval.json`` for the run's checkpoint (or
    its best), ``snapshots/iteration_NNNNNN.eval.json`` beside a snapshot (``which`` an iteration)."""
    return Path(run_dir) / EVAL if isinstance(which, str) else snapshot_path(run_dir, which).with_suffix(".eval.json")


def checkpoint_label(which: str | int) -> str:
    """How a report names the checkpoint it scored: "checkpoint", "best" or "iteration N"."""
    return which if isinstance(which, str) else f"iteration {which}"


def snapshot_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / SNAPSHOTS / f"iteration_{step:06d}.safetensors"


def keep_snapshot(run_dir: Path, step: int, source: Path | None = None) -> None:
    """Copy the checkpoint just written at iteration ``step`` (``source``: the checkpoint file of that
    iteration, by default the run's latest) to ``snapshots/`` (temporary file, then rename: a killed
    copy leaves no partial snapshot)."""
    path = snapshot_path(run_dir, step)
    check_snapshots_folder(run_dir)  # a file named snapshots appeared while training
    path.parent.mkdir(exist_ok=True)
    checkpoint.replace_atomically(path, Path(source or Path(run_dir) / CHECKPOINT).read_bytes())


def snapshot_due(step: int, snapshot_every: int) -> bool:
    return snapshot_every > 0 and step % snapshot_every == 0


def checkpoint_file(run_dir: Path, which: str | int = "checkpoint") -> Path:
    """The checkpoint to load: "checkpoint" (the latest), "best" (best validation) or an iteration
    whose snapshot the run kept (``snapshot_every``); CheckpointError naming the kept ones if absent."""
    if isinstance(which, str):
        path = Path(run_dir) / {"checkpoint": CHECKPOINT, "best": BEST}[which]
        if which == "best" and not path.is_file():  # written without a .prev copy (keep_previous=False)
            validated = [r for r in read_metrics(run_dir) if any(k.startswith("val_") for k in r)]
            finite = [r for r in validated for k, v in r.items() if k.startswith("val_")
                      and isinstance(v, (int, float)) and math.isfinite(v)]
            if finite:  # it validated to a number, so it wrote one: deleted or moved since
                raise CheckpointError(f"{path} is missing (deleted or moved?): the run validated to finite values "
                                      f"({len(validated)} checks), so it kept one; restore it, or drop --best")
            if validated:  # it validated, and no value was finite: a NaN or inf is never the best
                raise CheckpointError(f"{run_dir} kept no best checkpoint: its validation was never a finite number "
                                      f"({len(validated)} checks, the last at iteration {validated[-1]['step']}); "
                                      "drop --best")
            raise CheckpointError(f"{run_dir} kept no best checkpoint: only runs that validate keep one (train "
                                  "with --set val_every=N; a table run also with --set val_fraction=F, e.g. 0.15); "
                                  "drop --best")
        return path
    path = snapshot_path(run_dir, which)
    if not path.is_file():
        kept = sorted(int(p.stem.removeprefix("iteration_")) for p in path.parent.glob("iteration_*.safetensors"))
        have = (f"it kept iterations {', '.join(map(str, kept))}" if kept
                else "it kept none (train with --set snapshot_every=N to keep them)")
        raise CheckpointError(f"{run_dir} has no snapshot of iteration {which}; {have}")
    return path


def write_config(run_dir: Path, experiment: str, config: Any) -> None:
    """Write ``RUN_DIR/config.json`` atomically (a kill while a resume rewrites it leaves the old one)."""
    text = json.dumps({"experiment": experiment, "config": to_dict(config)}, indent=2)
    checkpoint.replace_atomically(Path(run_dir) / CONFIG, text.encode())


def read_config(run_dir: Path, overrides: list[str] | tuple[str, ...] = (), data: bool = True):
    """(preset, config) saved in ``run_dir``; CheckpointError if it is not a run folder. ``overrides``
    (``key=value``) change keys that only affect meta-testing (:func:`fastmaml.config.apply_eval_overrides`).
    ``data=False`` skips the checks that read the data set the run was meta-trained on (``plot``,
    ``adapt`` and the CLI's look at a run's preset need none of it: a run is plotted or adapted on a
    machine without that data); ``eval`` keeps them, for its clear error before meta-testing."""
    preset, config = parse_config(read_config_text(run_dir), Path(run_dir) / CONFIG)
    if overrides:
        return preset, apply_eval_overrides(config, list(overrides), data)  # validates the changed config
    try:
        config.validate(data)  # a hand-edited value (shots=-4): the error train --resume gives, not a crash later
    except DataError:  # the data it names (a table's CSV) is checked where it is loaded: adapt --csv may relocate it
        pass
    return preset, config


def read_config_text(run_dir: Path) -> str:
    """The text of ``run_dir``'s config file; CheckpointError if it is not a run folder."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a fastmaml run folder (no {CONFIG}); pass the --out folder of a run")
    try:
        return path.read_text()
    except UnicodeDecodeError as error:  # not text: the same error as a config that is not JSON (parse_config)
        raise CheckpointError(f"{path} is unreadable ({error}); restore it or start a new run") from None
    except OSError as error:
        raise CheckpointError(f"{path} is unreadable ({error.strerror}); restore it or start a new run") from None


def parse_config(text: str, path: Path):
    """(preset, config) from the text of a config file read from ``path`` (named in the error)."""
    try:
        saved = json.loads(text)
        preset = get_preset(saved["experiment"])
        config = from_dict(preset.config_cls, saved["config"])
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path} is unreadable ({error}); restore it or start a new run") from None
    return preset, config


def state_problem(meta: dict[str, Any], experiment: str) -> str | None:
    """What is wrong with the metadata of a run's checkpoint (a file edited, or another program's),
    or None: its iteration, time, rows and best entry of the types a run writes, its experiment
    ``experiment``. A bad one gave tracebacks later (``step`` "10"), or trained on ("from iteration -5")."""
    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    step = meta.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return f"step = {json.dumps(step)}, not an iteration count"
    elapsed = meta.get("elapsed_s")
    if not number(elapsed) or not math.isfinite(elapsed) or elapsed < 0:
        return f"elapsed_s = {json.dumps(elapsed)}, not a time in seconds"
    rows = meta.get("metrics")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("step"), int) for r in rows):
        return "metrics is not a list of rows with an iteration each"
    best = meta.get("best")  # its value may be NaN in a checkpoint of a version that let a NaN be the best
    if best is not None and not (isinstance(best, dict) and isinstance(best.get("step"), int)
                                 and isinstance(best.get("metric"), str) and number(best.get("value"))):
        return f"best = {json.dumps(best)}, not a validation result"
    if meta.get("experiment") != experiment:
        return f"it holds a {json.dumps(meta.get('experiment'))} run, this one is {json.dumps(experiment)}"
    if "config" in meta and not isinstance(meta["config"], dict):
        return "its config is not a mapping of settings"
    return None


def check_checkpoint(run_dir: Path, meta: dict[str, Any], path: Path, experiment: str) -> None:
    """CheckpointError if the metadata ``meta`` of the checkpoint ``path`` is not a run's of
    ``experiment`` (:func:`state_problem`), or if ``RUN_DIR/config.json`` was edited by hand since it
    was saved: eval, plot and adapt build the model and the meta-test from
    config.json, so an edited ``inner_lr`` or ``eval_steps`` would be reported as the run's own. The
    keys a resume may change are not compared, nor keys that one of the two lacks (written by an older
    version; :func:`fastmaml.config.changed_since_checkpoint`)."""
    problem = state_problem(meta, experiment)
    if problem:
        raise CheckpointError(f"{path} does not hold a run's full state ({problem}); restore a good checkpoint "
                              "from a copy")
    text = read_config_text(run_dir)
    _, config = parse_config(text, Path(run_dir) / CONFIG)
    edited = changed_since_checkpoint(config, meta.get("config"), json.loads(text)["config"])
    if edited:
        raise CheckpointError(f"{config_mismatch(run_dir, path.name, edited)}; restore the one that changed (a "
                              "meta-test setting such as inner_lr changes for one command with --set KEY=VALUE)")


def config_mismatch(run_dir: Path, checkpoint_name: str, edited: list[str]) -> str:
    """The start of the error for a config.json that does not match the checkpoint ``checkpoint_name``
    (``edited``: :func:`fastmaml.config.changed_since_checkpoint`'s lines); the caller says what to do."""
    return (f"{run_dir}/{CONFIG} does not match the checkpoint {checkpoint_name} ({'; '.join(edited)}): config.json "
            "was edited by hand or the checkpoint is another run's")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    rows = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            if number < len(lines):  # the last line may be cut short by a kill; a bad one inside is news
                log.warning("%s, line %d, is not a metrics row; the %d rows after it are left out", path, number,
                            len(lines) - number)
            break
        rows.append(row)
    return rows


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Replace ``metrics.jsonl`` with ``rows`` (on resume: the rows saved in the checkpoint), atomically."""
    checkpoint.replace_atomically(Path(run_dir) / METRICS, "".join(json.dumps(r) + "\n" for r in rows).encode())


def build_experiment(run_dir: Path, overrides: list[str] | tuple[str, ...] = (), data: bool = True) -> Experiment:
    preset, config = read_config(run_dir, overrides, data)
    return preset.build(config)


WRITTEN = (CHECKPOINT, BEST, CONFIG, METRICS)  # the run folder's files written through a temporary file


def _own_temporary(path: Path) -> bool:
    """A temporary file that a killed fastmaml write left in a run folder (``.NAME.<pid>.tmp`` of its
    checkpoints, config or metrics: :func:`checkpoint.temporary_files`), not a file of anyone else's."""
    return path.is_file() and not path.is_symlink() and any(
        path in checkpoint.temporary_files(path.parent / name) for name in WRITTEN)


def first_checkpoint_due(run_dir: Path) -> int | None:
    """The iteration at which the run of ``run_dir``'s config.json writes its first checkpoint (None
    if the config cannot be read)."""
    try:
        _, config = parse_config(read_config_text(run_dir), Path(run_dir) / CONFIG)
    except CheckpointError:
        return None
    return first_save(config)


def first_save(config: Any) -> int:
    """The first iteration at which a run with ``config`` writes its checkpoint (a snapshot is one too)."""
    due = [config.checkpoint_every, config.iterations] + ([config.snapshot_every] if config.snapshot_every > 0 else [])
    return min(due)


def failed_start(run_dir: Path) -> bool:
    """True for a folder that holds at most what a new run writes before its first checkpoint: its
    config, the rows it logged before that checkpoint was due, the lock, temporary files of a write
    that was killed, plots of those rows, the best checkpoint of a validation before it (``val_every``
    below ``checkpoint_every``). A start that failed or was killed there (a setting the model
    refused, a NaN loss, a kill within checkpoint_every iterations) may start again in the same folder,
    since without a checkpoint it cannot be resumed. A folder without a run's config.json qualifies
    only when empty but for the lock and an empty metrics file; a run whose rows go past its first
    checkpoint (its checkpoints deleted or moved) does not. A run still starting there holds the lock,
    which the caller takes next."""
    entries = list(run_dir.iterdir())
    metrics = run_dir / METRICS
    empty_metrics = not metrics.exists() or (metrics.is_file() and metrics.stat().st_size == 0)
    if not (run_dir / CONFIG).exists():  # (a start killed while writing its config leaves that write's file)
        return all(p.name in (LOCK, METRICS) or _own_temporary(p) for p in entries) and empty_metrics
    if not is_run_folder(run_dir):
        return False
    for path in entries:
        if path.name in (LOCK, CONFIG, METRICS, BEST) and path.is_file() and not path.is_symlink():
            continue
        if _own_temporary(path):
            continue
        if (path.name == PLOTS and path.is_dir() and not path.is_symlink()
                and all(p.suffix == ".png" and p.is_file() and not p.is_symlink() for p in path.iterdir())):
            continue
        return False
    # rows before the first checkpoint was due, or at it when a killed write of it is there; a finished
    # run of fewer iterations than checkpoint_every logs its last row there too, and its checkpoints
    # may have been deleted since: that folder is not taken for a failed start
    due = first_checkpoint_due(run_dir)
    killed_write = any(checkpoint.temporary_files(run_dir / CHECKPOINT))
    return due is not None and all(row["step"] < due or (row["step"] == due and killed_write)
                                   for row in read_metrics(run_dir))


def clear_failed_start(run_dir: Path) -> None:
    """Remove what a failed start left (its logged rows, best checkpoint, plots, temporary files) before
    a new start; the caller holds the training lock (a run still starting there keeps its files)."""
    for path in run_dir.iterdir():
        if path.name == PLOTS and path.is_dir() and not path.is_symlink():
            for png in path.iterdir():
                png.unlink()
            path.rmdir()
        elif path.name in (METRICS, BEST) and path.is_file():
            path.unlink()
    remove_temporaries(run_dir)


def remove_temporaries(run_dir: Path) -> None:
    """Delete the temporary files that killed checkpoint writes left in ``run_dir`` (each as large as
    a checkpoint, named by the pid that wrote it, so no later write replaces it). The caller holds
    the training lock: no other process writes checkpoints there."""
    run_dir = Path(run_dir)
    stale = [path for name in WRITTEN for path in checkpoint.temporary_files(run_dir / name)]
    if (run_dir / SNAPSHOTS).is_dir():
        stale += [*(run_dir / SNAPSHOTS).glob("iteration_*.safetensors.tmp"),
                  *(run_dir / SNAPSHOTS).glob(".iteration_*.safetensors.*.tmp")]
    for name in (CONFIG, METRICS):  # written through a link (checkpoint.followed): their temporaries lie
        if (run_dir / name).is_symlink():  # beside the file linked to, where another run may write too
            target = checkpoint.followed(run_dir / name)
            stale += [path for path in checkpoint.temporary_files(target) if _writer_gone(path)]
    for path in stale:
        with contextlib.suppress(OSError):
            path.unlink()
            log.info("removed %s, left by a checkpoint write that was stopped", path)


def _writer_gone(path: Path) -> bool:
    """Whether the process that named the temporary file ``path`` (``.NAME.<pid>.tmp``) has ended on
    this machine. Kept where that cannot be told (Windows, a pid this user may not signal): the file
    a link points at may be shared with a run that is writing it now."""
    try:
        pid = int(path.name.rsplit(".", 2)[-2])
    except ValueError:
        return False
    if os.name != "posix" or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def is_run_folder(path: Path) -> bool:
    """Whether ``path`` holds a config.json fastmaml wrote (not someone else's file of that name)."""
    try:
        written = json.loads((Path(path) / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(written, dict) and {"experiment", "config"} <= set(written)


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a checkpoint to resume from (the newest or the previous one)."""
    newest = Path(run_dir) / CHECKPOINT
    return newest.is_file() or checkpoint.previous_path(newest).is_file()


def lost_checkpoints(run_dir: Path) -> str:
    """The message for a run folder without a checkpoint that is more than a failed start: its rows
    go past the first checkpoint (deleted or moved since), or it holds other files of the run."""
    rows = read_metrics(run_dir)
    logged = f" (its rows go to iteration {rows[-1]['step']})" if rows else ""
    aside = Path(run_dir) / UNREADABLE
    why = (f"its newest checkpoint was unreadable and is set aside as {aside.name}, and there is no previous one"
           if aside.exists() else f"it holds more than a start that never reached its first checkpoint{logged}, but "
           "no checkpoint (deleted or moved?)")
    best = (f"; its best validation checkpoint resumes it from there: copy {BEST} to {CHECKPOINT}"
            if (Path(run_dir) / BEST).is_file() else "")
    return (f"{run_dir} cannot be resumed or started again: {why}; restore its checkpoint.safetensors to resume "
            f"it, or delete (or move away) the folder to start a run there{best}")


def prepare_new_run(run_dir: Path) -> None:
    """Create ``run_dir`` for a new run: absent or empty, and writable; CheckpointError otherwise."""
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"--out {run_dir} is a file; choose a folder")
    if run_dir.is_dir() and not failed_start(run_dir):
        if is_run_folder(run_dir) and not has_checkpoint(run_dir):
            raise CheckpointError(lost_checkpoints(run_dir))
        if is_run_folder(run_dir):
            raise CheckpointError(f"--out {run_dir} is not empty; continue that run with --resume {run_dir}, or "
                                  "choose a new --out folder")
        raise CheckpointError(f"--out {run_dir} is not empty and is not a fastmaml run folder (no config.json of "
                              "a run); choose a new or empty --out folder")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise CheckpointError(f"cannot write to --out {run_dir} ({error.strerror}); choose a writable folder") from None


@contextlib.contextmanager
def training_lock(run_dir: Path) -> Iterator[bool]:
    """Held while a process trains ``run_dir``, so that a second ``train --resume`` of the same run
    (another terminal, a job scheduler restarting a job whose first copy still runs) stops with a
    CheckpointError instead of writing the same checkpoint and metrics. An exclusive ``flock`` on
    ``RUN_DIR/.train.lock``: the operating system drops it when the process ends, however it ends, so
    a killed run leaves nothing to clean up. No lock where ``fcntl`` is missing (Windows) or the file
    system refuses locks (some network file systems). Yields whether the lock is held."""
    if fcntl is None or not Path(run_dir).is_dir():  # no folder: the caller's own check says so
        yield False
        return
    try:
        f = open(Path(run_dir) / LOCK, "a+")  # noqa: SIM115 - closed in the finally below
    except OSError:  # a folder this process cannot write: what follows says so
        f = None
    locked = False
    try:
        if f is not None:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "unknown"
                raise CheckpointError(
                    f"{run_dir} is being trained by another process (pid {holder}); wait for it to finish or "
                    "stop it, then resume"
                ) from None
            except OSError:  # a file system without locks
                pass
        if locked:
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
        yield locked
    finally:
        if f is not None:
            f.close()  # closing the file drops the lock


def load_for_resume(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """Tensors, metadata and path of the newest readable checkpoint of ``run_dir``, to continue it."""
    if not has_checkpoint(run_dir):
        if is_run_folder(run_dir) and not failed_start(run_dir):
            raise CheckpointError(lost_checkpoints(run_dir))
        raise CheckpointError(
            f"{run_dir} has no checkpoint to resume from (it stopped before its first checkpoint, "
            f"or it is not a run folder); start it again with fastmaml train PRESET ... --out {run_dir} "
            "(a folder that holds only a failed start is reused) or a new --out"
        )
    tensors, meta, path = checkpoint.load_latest(run_dir / CHECKPOINT)
    if path != run_dir / CHECKPOINT and (run_dir / CHECKPOINT).exists():
        # the newest is unreadable and the run continues from .prev: set the bad file aside, or the
        # next save would keep it as .prev in place of the good one (and a kill then would lose both);
        # an earlier set-aside file is kept under a numbered name
        aside, n = run_dir / UNREADABLE, 1
        while aside.exists():
            n += 1
            aside = run_dir / UNREADABLE.replace(".safetensors", f".{n}.safetensors")
        os.replace(run_dir / CHECKPOINT, aside)
        log.warning("moved the unreadable %s to %s, kept for a look (the run goes on from %s)", CHECKPOINT,
                    aside.name, path.name)
    return tensors, meta, path


def check_snapshots_folder(run_dir: Path) -> None:
    """CheckpointError if ``RUN_DIR/snapshots`` exists and is not a folder: checked when a run starts or
    resumes, so that it fails before training rather than at its first snapshot."""
    path = Path(run_dir) / SNAPSHOTS
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path} is a file, not a folder: the run keeps its snapshots in the folder {path}; "
                              f"move the file {SNAPSHOTS} away (or rename it), then continue the run with "
                              f"fastmaml train --resume {run_dir}")
