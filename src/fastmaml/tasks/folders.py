"""Few-shot tasks from any class-per-folder image tree ``<root>/<class>/<image>``, split by class.

Meta-learning splits classes, not images: a split's classes never appear in another split, so
meta-test tasks hold classes the learner has never seen (Finn et al. 2017, Sec. 5.2). Images are
resized to ``image_size x image_size`` (the aspect ratio is not kept) and decoded once; with a
``cache_dir`` the decoded tree is cached and reused while the files stay the same (names, sizes and
modification times) and the tree is the same folder (its resolved path is part of the cache's name
and key, so two trees that share a folder name never share a cache). Symlinked class folders are
followed.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from itertools import accumulate
from pathlib import Path

import numpy as np
import torch

from fastmaml.errors import ConfigError, DataError
from fastmaml.tasks.images import FewShotImages, FileSource, cached_images, decode_image, fingerprint

log = logging.getLogger(__name__)
# files an operating system leaves in folders: skipped without a word (hidden files, .xxx, too)
SYSTEM_FILES = ("thumbs.db", "desktop.ini")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
DEFAULT_SPLITS = {"train": 0.64, "val": 0.16, "test": 0.2}  # mini-ImageNet's 64 / 16 / 20 proportions
MODES = {1: "L", 3: "RGB"}

Splits = Mapping[str, float] | Mapping[str, Sequence[str]]
_SAID: set[tuple] = set()  # the skipped-files warnings given in this process


def scan_class_folders(root: Path, only: set[str] | None = None) -> tuple[dict[str, list[str]], dict[str, str]]:
    """class -> its image files (relative paths, sorted) under ``root/<class>/``, and their stamps
    (size and modification time, :meth:`FileSource.stamps`). Symlinked folders are followed.
    ``only``: those classes alone (a run's recorded split): a folder added to the tree since, empty
    or half copied, is then neither read nor an error."""
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "not found"
        raise DataError(f"image folder {root} {what}; expected {root}/<class>/<image>")
    with FileSource(root) as source:
        files = source.stamps()
    classes: dict[str, list[str]] = {p.name: [] for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                                     and (only is None or p.name in only)}
    if only is not None:  # the other folders' files are none of this run's business
        files = {name: stamp for name, stamp in files.items() if name.split("/", 1)[0] in classes}
    skipped = []
    for name in sorted(files):
        parts = name.split("/")
        if len(parts) == 2 and parts[0] in classes and name.lower().endswith(IMAGE_EXTENSIONS):
            classes[parts[0]].append(name)
        elif not any(p.startswith(".") for p in parts) and parts[-1].lower() not in SYSTEM_FILES:
            skipped.append(name)
    said = (str(root), len(skipped), tuple(skipped[:3]))  # a run scans its tree up to three times: said once
    if skipped and said not in _SAID:
        _SAID.add(said)
        images = [n for n in skipped if n.lower().endswith(IMAGE_EXTENSIONS)]
        log.warning("%d file(s) in %s are not read: only %s/<class>/<image> with an image extension is (%s); "
                    "e.g. %s", len(skipped), root, root, ", ".join(IMAGE_EXTENSIONS),
                    ", ".join((images or skipped)[:3]) + (", ..." if len(skipped) > 3 else ""))
    if not classes:
        raise DataError(f"{root} has no class folders; expected {root}/<class>/<image>")
    empty = [c for c, images in classes.items() if not images]
    if empty:
        raise DataError(
            f"class folder {root / empty[0]} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
            "add images or move the folder out of the tree"
        )
    return dict(sorted(classes.items())), {n: files[n] for images in classes.values() for n in images}


def split_classes(names: Sequence[str], splits: Splits, seed: int = 0) -> dict[str, list[str]]:
    """Disjoint class lists per split, from fractions of the classes (shuffled with ``seed``) or explicit lists."""
    names = sorted(names)
    values = list(splits.values())
    if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        if any(v <= 0 for v in values) or sum(values) > 1 + 1e-9:
            raise ConfigError(f"split fractions must be > 0 and sum to at most 1, got {dict(splits)}")
        order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
        bounds = [0] + [round(total * len(names)) for total in accumulate(values)]
        chosen = {split: sorted(names[i] for i in order[a:b]) for split, a, b in zip(splits, bounds, bounds[1:])}
        empty = [s for s, c in chosen.items() if not c]
        if empty:
            raise ConfigError(
                f"split {empty[0]!r} gets no class ({splits[empty[0]]} of {len(names)} classes); "
                "give it a larger fraction or add classes"
            )
        return chosen
    if not values or any(isinstance(v, str) or not isinstance(v, Sequence) for v in values):
        raise ConfigError(f"splits must map split names to fractions or to lists of class names, got {dict(splits)}")
    known, seen = set(names), {}
    for split, classes in splits.items():
        for c in classes:
            if c not in known:
                raise ConfigError(f"split {split!r} names class {c!r}, which is not a class folder")
            if seen.setdefault(c, split) != split:
                raise ConfigError(f"class {c!r} is in splits {seen[c]!r} and {split!r}; splits must be disjoint")
    return {split: list(classes) for split, classes in splits.items()}


def load_image_folder(
    root: str | Path,
    *,
    image_size: int,
    channels: int = 3,
    splits: Splits = DEFAULT_SPLITS,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> dict[str, FewShotImages]:
    """Few-shot tasks per split from ``root/<class>/<image>``, images ``channels x image_size x image_size``.

    ``splits`` maps split names to fractions of the classes (shuffled with ``seed``) or to lists of
    class names. ``cache_dir`` keeps the decoded images (one file per tree, size and channels, named
    ``<folder name>_<hash of its resolved path>_<size>_<channels>ch``); it is rebuilt when a file is
    added, removed or changed (size or modification time).
    """
    if channels not in MODES:
        raise ConfigError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    root = Path(root)
    values = list(splits.values())
    listed = (None if not values or all(isinstance(v, (int, float)) for v in values) else
              {c for v in values if not isinstance(v, str) and isinstance(v, Sequence) for c in v})
    classes, stamps = scan_class_folders(root, listed)  # with class lists, those classes alone
    chosen = split_classes(list(classes), splits, seed)  # before decoding: bad splits fail fast

    def images() -> Iterator[np.ndarray]:
        with FileSource(root) as source:
            for files in classes.values():
                for name in files:
                    yield decode_image(source.read(name), source.describe(name), image_size, MODES[channels])

    resolved = root.resolve()
    meta = {
        "dataset": "folder",
        "root": str(resolved),  # another tree with the same folder name and files is another cache
        "image_size": image_size,
        "channels": channels,
        "files": fingerprint(stamps),
    }
    tree = f"{resolved.name}_{hashlib.sha1(str(resolved).encode()).hexdigest()[:8]}"
    every = [p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if listed is not None and set(every) - set(classes):  # a part of the tree: a cache of its own
        tree += f"_{hashlib.sha1(','.join(sorted(classes)).encode()).hexdigest()[:8]}"
    path = None if cache_dir is None else Path(cache_dir) / f"{tree}_{image_size}_{channels}ch"
    everything = cached_images(
        path, meta, list(classes), [len(f) for f in classes.values()], (channels, image_size, image_size), images
    )
    return {split: everything.subset(names) for split, names in chosen.items()}
