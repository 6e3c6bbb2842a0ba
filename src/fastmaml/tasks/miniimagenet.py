"""mini-ImageNet (Vinyals et al. 2016) with the class split of Ravi & Larochelle (2017), as in the MAML paper.

``root`` holds the split files ``train.csv``, ``val.csv``, ``test.csv`` (header ``filename,label``;
64 / 16 / 20 classes of 600 images) and the images, looked for in this order::

    <root>/<split>.zip    members images/<filename> (or <filename>)
    <root>/images/<filename>
    <root>/images.zip     the original single archive

Each split is decoded once into an ``uint8 (N, 3, 84, 84)`` cache that is memory-mapped, so the
38,400 training images (774 MB) are neither decoded again nor held in memory twice. Images that are
not 84x84 are resized with LANCZOS, as cbfinn/maml ``data/miniImagenet/proc_images.py`` did
(big JPEGs are first decoded at a reduced scale that is still at least 84x84).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fastmaml.errors import ConfigError, DataError
from fastmaml.tasks.images import FewShotImages, FileSource, cached_images, decode_image, default_cache_dir, fingerprint

SPLITS = ("train", "val", "test")


class ImagesNotFound(DataError):
    """None of a split's images are there (yet): ``fastmaml data`` skips such a split, and fails on any other error."""


def read_split_csv(path: str | Path) -> dict[str, list[str]]:
    """label -> its image filenames in file order, from a split file with header ``filename,label``.

    Each image may be listed once: one listed twice would be loaded twice, and a task could hold it
    as both a support and a query image (or in two classes). Line numbers in errors are the file's own.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"mini-ImageNet split file {path} not found; put the Ravi & Larochelle train.csv, val.csv "
            f"and test.csv in {path.parent}"
        )
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's byte-order mark is fine
            reader = csv.reader(f)
            rows = [(reader.line_num, row) for row in reader if row]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"cannot read {path} as a UTF-8 CSV file ({error}); save it as UTF-8 text") from None
    if not rows or [c.strip() for c in rows[0][1]] != ["filename", "label"]:
        raise DataError(f"{path} must start with the header 'filename,label', got {rows[0][1] if rows else 'nothing'}")
    classes: dict[str, list[str]] = {}
    listed: dict[str, int] = {}  # filename -> the line that lists it
    for line, row in rows[1:]:
        if len(row) != 2 or not all(c.strip() for c in row):
            raise DataError(f"{path} line {line}: expected 'filename,label', got {','.join(row)!r}")
        filename, label = row[0].strip(), row[1].strip()
        first = listed.setdefault(filename, line)
        if first != line:
            raise DataError(f"{path} lists {filename} twice, on lines {first} and {line}; each image may be listed "
                            "once (in one class): delete one of those lines")
        classes.setdefault(label, []).append(filename)
    if not classes:
        raise DataError(f"{path} lists no images")
    return dict(sorted(classes.items()))


def _image_location(root: Path, split: str) -> Path:
    candidates = [root / f"{split}.zip", root / "images", root / "images.zip"]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    instead = {
        "val": "; or, to train without them, validate on held-out training classes: --set val_from_train=16",
        "test": "; until then a trained run can be scored on its validation classes: fastmaml eval RUN --split val "
                "(printed, not saved; plot and compare need the meta-test report)",
    }.get(split, "")
    raise ImagesNotFound(
        f"mini-ImageNet {split} images not found: none of {', '.join(map(str, candidates))} exists; put "
        f"the {split} images there (a zip or folder with images/<filename> as listed in {split}.csv){instead}"
    )


def _miniimagenet_images(
    root: str | Path, split: str, cache_dir: str | Path | None, image_size: int
) -> tuple[FewShotImages, Path]:
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    classes = read_split_csv(root / f"{split}.csv")
    location = _image_location(root, split)
    with FileSource(location) as source:
        stamps = source.stamps()
    by_filename = {name.rsplit("/", 1)[-1]: name for name in stamps}
    listed = [f for filenames in classes.values() for f in filenames]
    missing = [f for f in listed if f not in by_filename]
    if missing:
        raise (ImagesNotFound if len(missing) == len(listed) else DataError)(
            f"{len(missing)} of the {len(listed)} images listed in {root / f'{split}.csv'} are not in "
            f"{location}, e.g. {missing[0]}; add them there, or put the {split} images in {root / f'{split}.zip'}"
        )

    def images() -> Iterator[np.ndarray]:
        with FileSource(location) as source:
            for filename in listed:
                member = by_filename[filename]
                yield decode_image(source.read(member), source.describe(member), image_size, "RGB")

    files = {f"{label}/{f}": stamps[by_filename[f]] for label, filenames in classes.items() for f in filenames}
    meta = {"dataset": "miniimagenet", "split": split, "image_size": image_size, "files": fingerprint(files)}
    path = Path(cache_dir or default_cache_dir() / "miniimagenet") / f"miniimagenet_{split}_{image_size}"
    class_sizes = [len(f) for f in classes.values()]
    shape = (3, image_size, image_size)
    return cached_images(path, meta, list(classes), class_sizes, shape, images), path.with_suffix(".npy")


def prepare_miniimagenet(
    root: str | Path, split: str, cache_dir: str | Path | None = None, image_size: int = 84
) -> Path:
    """Decode the images of ``split`` once into a cache; returns the ``.npy``.

    ``cache_dir`` defaults to ``default_cache_dir() / "miniimagenet"``. The cache is rebuilt when it
    is missing, unreadable, or was built from other files or settings.
    """
    return _miniimagenet_images(root, split, cache_dir, image_size)[1]


def load_miniimagenet(
    root: str | Path, split: str, image_size: int = 84, cache_dir: str | Path | None = None
) -> FewShotImages:
    """The classes of ``split`` ("train", "val" or "test") as few-shot tasks (Finn et al. 2017, Sec. 5.2)."""
    return _miniimagenet_images(root, split, cache_dir, image_size)[0]
