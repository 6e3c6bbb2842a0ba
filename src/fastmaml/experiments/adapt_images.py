"""``fastmaml adapt`` for a few-shot image run: learn a new task from a few labelled images, classify others.

The new task comes as class folders, ``SUPPORT/<class>/<image>``, one folder per class and as many
classes as the run was meta-trained for (its ``ways``); the images to classify are an image file or
a folder of them (searched recursively, symlinked folders followed; files without an image
extension are named in a warning and left out). Each image is read exactly as the run's training images
were: resized to the run's ``image_size`` (aspect ratio not kept), grayscale or RGB, and for
Omniglot runs inverted (ink = 1) and resized with the run's ``antialias`` choice.

The adapted network then classifies all the images together, as one batch: the networks normalise
with the statistics of the batch they see (batch norm without running averages, as the original
code and the paper's numbers), just as meta-test classifies a task's query images together. So give
the images to classify together, a handful per class or more, not one at a time; one image alone is
refused. Many images are classified in batches of at most 256, of near-equal sizes. Where an image lies in a folder named like one of the classes (``PREDICT/<class>/<image>``),
that class is taken as its label and the summary reports accuracy before and after adapting.

The inner loss is the run's (cross-entropy summed over the images, divided by the number of images
per class), with the number of support images per class the user gave, so each class weighs in the
step as in training whatever the number of shots.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fastmaml.errors import ConfigError, DataError
from fastmaml.experiments.table import counted
from fastmaml.tasks.folders import IMAGE_EXTENSIONS, MODES, SYSTEM_FILES, scan_class_folders
from fastmaml.tasks.images import decode_image, walk_files
from fastmaml.tasks.omniglot import decode_drawing

log = logging.getLogger(__name__)
BATCH = 256  # images classified together at most (batch statistics; memory)


def image_reader(config) -> Callable[[Path], np.ndarray]:
    """``path -> uint8 (C, H, W)``: one image decoded as the run's dataset was (see the module docstring)."""
    size = config.image_size
    if config.dataset == "omniglot":
        return lambda path: decode_drawing(_read(path), str(path), size, config.antialias)
    mode = "RGB" if config.dataset == "miniimagenet" else MODES[config.channels]
    return lambda path: decode_image(_read(path), str(path), size, mode)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise DataError(f"cannot read {path} ({error.strerror}); check the path and its permissions") from None


def _images_to_predict(predict: Path) -> list[Path]:
    if predict.is_file():
        if predict.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DataError(f"--predict {predict} is not an image ({', '.join(IMAGE_EXTENSIONS)}); give a folder "
                            "of images to classify")
        return [predict]
    if not predict.is_dir():
        raise DataError(f"--predict {predict} not found; give a folder of images")
    entries = list(walk_files(predict))  # follows symlinked folders; hidden files left out
    found = sorted(p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    broken = sorted(p.relative_to(predict).as_posix() for p in entries if p.is_symlink() and not p.exists())
    if broken:
        log.warning("%d broken link(s) in --predict %s are not classified: %s", len(broken), predict,
                    ", ".join(broken[:3]) + (", ..." if len(broken) > 3 else ""))
    skipped = sorted(p.relative_to(predict).as_posix() for p in set(entries) - set(found)
                     if p.name.lower() not in SYSTEM_FILES and p.relative_to(predict).as_posix() not in broken)
    if skipped:
        log.warning("%d file(s) in --predict %s are not classified: only files with an image extension (%s) "
                    "are; e.g. %s", len(skipped), predict, ", ".join(IMAGE_EXTENSIONS),
                    ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else ""))
    if not found:
        raise DataError(f"--predict {predict} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return found


def batches(count: int) -> list[np.ndarray]:
    """Indices 0..count-1 in the fewest batches of at most ``BATCH``, of near-equal sizes (so none of
    1 image where ``count`` >= 2)."""
    return np.array_split(np.arange(count), -(-count // BATCH))


def adapt_images(
    run_dir: str | Path,
    support: str | Path,
    predict: str | Path,
    out: str | Path,
    steps: int | None = None,
    which: str | int = "checkpoint",
    overrides: list[str] | tuple[str, ...] = (),
) -> str:
    """Adapt a few-shot image run to the classes in ``support``, classify ``predict``, write ``out`` (CSV).

    ``out`` gets one row per image: ``file`` (relative to ``predict``), ``prediction`` (a class
    folder name of ``support``) and ``p_<class>`` (probabilities after adapting). Returns a summary;
    with labels known from the folders it includes the accuracy before and after adapting.
    ``overrides``: meta-test settings changed (``key=value``, e.g. ``inner_lr=0.2``).
    """
    from fastmaml.engine.evaluate import load_trained
    from fastmaml.experiments.fewshot import xent_per_shot
    from fastmaml.experiments.table import check_adapted, write_csv

    run_dir, support, predict, out = Path(run_dir), Path(support), Path(predict), Path(out)
    experiment, maml, _ = load_trained(run_dir, which, overrides, data=False)  # the support images are the data
    config = experiment.config
    steps = config.eval_steps if steps is None else steps
    if steps < 0:
        raise ConfigError(f"--steps must be >= 0, got {steps}")
    classes, _ = scan_class_folders(support)
    if len(classes) != config.ways:
        raise ConfigError(
            f"{run_dir} was meta-trained for {config.ways}-way tasks, but --support {support} has "
            f"{len(classes)} class folder{'' if len(classes) == 1 else 's'}; give exactly {config.ways} (its "
            f"network has {config.ways} outputs)"
        )
    names = list(classes)
    read = image_reader(config)
    support_files = [(label, support / name) for label, files in enumerate(classes.values()) for name in files]
    sx = torch.from_numpy(np.stack([read(path) for _, path in support_files])).float().div_(255)
    sy = torch.tensor([label for label, _ in support_files])
    files = _images_to_predict(predict)
    if len(files) < 2:
        raise ConfigError(
            f"--predict {predict} {'holds' if predict.is_dir() else 'is'} one image; give a folder of at least 2: "
            "the network normalises with the statistics of the batch it classifies (as at meta-test), so "
            "images are classified together, not one at a time"
        )
    relative = [path.relative_to(predict).as_posix() if predict.is_dir() else path.name for path in files]
    truth = [names.index(p.parent.name) if predict.is_dir() and p.parent.name in names else None for p in files]
    if any(t is not None for t in truth):  # labelled images beside others in folders named like no class
        others = sorted({p.parent.relative_to(predict).as_posix() for p, t in zip(files, truth)
                         if t is None and p.parent != predict})
        if others:
            log.warning("--predict %s: the images in %s are not scored: no support class has that name (the "
                        "classes: %s)", predict, ", ".join(others[:3]) + (", ..." if len(others) > 3 else ""),
                        ", ".join(names))

    per_class = len(support_files) / len(names)
    maml.loss_fn = xent_per_shot(per_class)
    adapted = maml.adapt(sx, sy, steps=steps, first_order=True)
    check_adapted(adapted, steps, maml)
    before, after = [], []
    with torch.no_grad():
        for chunk in batches(len(files)):
            px = torch.from_numpy(np.stack([read(files[i]) for i in chunk])).float().div_(255)
            before.append(maml(px).argmax(-1))
            after.append(maml(px, adapted).softmax(-1))
    before, after = torch.cat(before), torch.cat(after)
    rows = [[name, names[int(p.argmax())], *(f"{v:.6g}" for v in p.tolist())] for name, p in zip(relative, after)]
    write_csv(out, ["file", "prediction", *(f"p_{name}" for name in names)], rows)
    shots = f"{per_class:g}" if per_class == int(per_class) else f"{per_class:.1f} on average"
    summary = (f"adapted to {len(support_files)} support images of {len(names)} classes ({shots} per class) "
               f"with {counted(steps, 'step')}; wrote {counted(len(files), 'prediction')} to {out}")
    known = [i for i, t in enumerate(truth) if t is not None]
    if known:
        labels = torch.tensor([truth[i] for i in known])
        accuracy_before = (before[known] == labels).float().mean().item()
        accuracy_after = (after[known].argmax(-1) == labels).float().mean().item()
        summary += (f"; accuracy on the {len(known)} images in class folders: {accuracy_before:.1%} before "
                    f"adapting (chance {1 / len(names):.0%}), {accuracy_after:.1%} after")
    return summary
