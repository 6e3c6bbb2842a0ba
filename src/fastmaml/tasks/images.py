"""Few-shot image classification tasks sampled from one in-memory uint8 image array, and its cache.

Every image dataset (Omniglot, MiniImagenet, a class-per-folder tree) becomes a
:class:`FewShotImages`: all images in one ``uint8 (N, C, H, W)`` tensor grouped by class, plus the
number of images of each class. An N-way K-shot task (Finn et al. 2017, Sec. 5.2) is then a few
tensor ops -- random classes, random images within them, one gather -- with no file or PIL work in
the training loop. Decoding happens once, into a cache (a raw ``.npy`` that is memory-mapped, plus
a ``.json`` index), so meta-training never touches the original image files.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import stat
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from tqdm import tqdm

from fastmaml.core import TaskBatch
from fastmaml.errors import ConfigError, DataError

log = logging.getLogger(__name__)

CACHE_VERSION = 3  # 2: JPEG orientation applied, transparency onto white; 3: 16-bit, 32-bit and float
# images rescaled to 8 bits (were clipped to white), file stamps with mtime (folders) or CRC-32 (zips)
QUARTER_TURNS = (0, 1, 2, 3)


class FewShotImages:
    """Labelled images grouped by class, from which N-way K-shot tasks are sampled.

    ``images`` is ``uint8 (N, C, H, W)``: the first ``class_sizes[0]`` images are class 0, the next
    ``class_sizes[1]`` class 1, and so on. ``rotations`` (quarter turns, from 0..3) is class
    augmentation as in the paper's Omniglot setup (after Santoro et al. 2016): every rotation of
    every class is a class of its own, so ``num_classes == len(class_names) * len(rotations)``.
    """

    def __init__(
        self,
        images: Tensor | np.ndarray,
        class_sizes: Sequence[int] | Tensor,
        class_names: Sequence[str] | None = None,
        rotations: Sequence[int] = (0,),
    ) -> None:
        images = torch.as_tensor(images)
        sizes = torch.as_tensor(class_sizes, dtype=torch.int64)
        names = tuple(class_names) if class_names is not None else tuple(str(i) for i in range(len(sizes)))
        rotations = tuple(int(r) for r in rotations)
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise DataError(f"images must be uint8 (N, C, H, W); got {images.dtype} {tuple(images.shape)}")
        if sizes.dim() != 1 or len(sizes) == 0 or bool((sizes < 1).any()) or int(sizes.sum()) != len(images):
            raise DataError(
                f"class_sizes must be positive and sum to the {len(images)} images; got {sizes.tolist()[:10]}..."
            )
        if len(names) != len(sizes) or len(set(names)) != len(names):
            raise DataError(f"need {len(sizes)} distinct class names, got {len(names)} ({len(set(names))} distinct)")
        if not rotations or len(set(rotations)) != len(rotations) or not set(rotations) <= set(QUARTER_TURNS):
            raise DataError(f"rotations must be distinct quarter turns from {QUARTER_TURNS}, got {rotations}")
        if {1, 3} & set(rotations) and images.shape[-1] != images.shape[-2]:
            raise DataError(f"90/270 degree rotations need square images, got {tuple(images.shape[-2:])}")
        self.images = images
        self.class_sizes = sizes.to(images.device)
        self.offsets = torch.cumsum(self.class_sizes, 0) - self.class_sizes  # first image of each class
        self.class_names = names
        self.rotations = rotations
        self._largest, self._smallest = int(sizes.max()), int(sizes.argmin())  # Python ints: no device sync
        self._fewest = int(sizes[self._smallest])
        # every rotation is stored, so a task is one gather with no device sync (Omniglot's 1200
        # characters x 4 rotations: 75 MB); without rotations this is ``images`` itself, not a copy
        self._pool = images if rotations == (0,) else torch.cat([torch.rot90(images, k, (-2, -1)) for k in rotations])

    def __repr__(self) -> str:
        return (
            f"FewShotImages({len(self.class_names)} classes x {len(self.rotations)} rotations, "
            f"{len(self.images)} images of {tuple(self.images.shape[1:])})"
        )

    @property
    def num_classes(self) -> int:
        """Classes tasks are drawn from, rotated copies included."""
        return len(self.class_names) * len(self.rotations)

    def subset(self, names: Sequence[str]) -> FewShotImages:
        """The classes ``names`` only (same rotations): how a class split is taken."""
        position = {n: i for i, n in enumerate(self.class_names)}
        missing = [n for n in names if n not in position]
        if not names:
            raise ConfigError("subset needs at least one class name")
        if missing:
            raise ConfigError(
                f"unknown classes {missing[:5]} ({len(missing)} in all); known: {self.class_names[:5]}..."
            )
        picked = [position[n] for n in names]
        starts, sizes = self.offsets.tolist(), self.class_sizes.tolist()
        index = torch.cat([torch.arange(starts[i], starts[i] + sizes[i]) for i in picked]).to(self.images.device)
        return FewShotImages(self.images[index], [sizes[i] for i in picked], names, self.rotations)

    def to(self, device: torch.device | str) -> FewShotImages:
        """The same classes with the images on ``device``: sampling then runs there (pass a generator on it)."""
        return FewShotImages(self.images.to(device), self.class_sizes, self.class_names, self.rotations)

    def with_rotations(self, rotations: Sequence[int]) -> FewShotImages:
        """The same images with another set of rotation classes (e.g. ``(0,)`` to turn them off)."""
        return FewShotImages(self.images, self.class_sizes, self.class_names, rotations)

    def draw_classes(self, generator: torch.Generator, meta_batch_size: int, ways: int) -> tuple[Tensor, Tensor]:
        """The classes of the next ``meta_batch_size`` tasks that :meth:`sample` draws from the same
        ``generator`` state, as (turn index into ``rotations``, character index), each (T, ways) in
        label order. Every rotated copy is a class of its own, so a task may hold one character in two
        turns (the original MAML code drew distinct characters and then a turn for each). Drawn on the
        generator's device (a CPU generator draws the same tasks whatever device the images are on)."""
        # the order of topk is the order of the random keys: a random class-to-label assignment
        classes = torch.rand(meta_batch_size, self.num_classes, generator=generator, device=generator.device)
        classes = classes.topk(ways, dim=1).indices  # (T, ways); class = turn * base classes + base
        return classes.div(len(self.class_names), rounding_mode="floor"), classes % len(self.class_names)

    def sample(
        self, generator: torch.Generator, meta_batch_size: int, ways: int, shots: int, queries: int
    ) -> TaskBatch:
        """``meta_batch_size`` N-way K-shot tasks with ``queries`` query images per class.

        Each task draws ``ways`` distinct classes, assigns them labels 0..ways-1 in random order,
        and draws ``shots + queries`` distinct images of each. Examples are ordered by label;
        ``x`` is float32 in [0, 1]. The same ``generator`` state gives the same tasks; the draws are
        made on the generator's device, so a CPU generator gives the same tasks with the images on a
        GPU as on the CPU (a CUDA generator, faster for training there, draws other ones).
        """
        self._check_task_shape(meta_batch_size, ways, shots, queries)
        device, draw, per_class = self.images.device, generator.device, shots + queries
        turn, base = self.draw_classes(generator, meta_batch_size, ways)
        keys = torch.rand(meta_batch_size, ways, self._largest, generator=generator, device=draw)
        sizes, offsets = self.class_sizes.to(draw), self.offsets.to(draw)  # no copy on the images' device
        past_end = torch.arange(self._largest, device=draw) >= sizes[base][..., None]
        within = keys.masked_fill(past_end, -1.0).topk(per_class, dim=-1).indices  # distinct images per class
        index = ((turn * len(self.images) + offsets[base])[..., None] + within).to(device)  # (T, ways, shots + queries)
        x = self._pool[index].to(torch.float32).div_(255)  # (T, ways, shots + queries, C, H, W)
        labels = torch.arange(ways, device=device)
        shape = x.shape[3:]
        return TaskBatch(
            x[:, :, :shots].reshape(meta_batch_size, ways * shots, *shape),  # (T, ways*shots, C, H, W)
            labels.repeat_interleave(shots).repeat(meta_batch_size, 1),
            x[:, :, shots:].reshape(meta_batch_size, ways * queries, *shape),  # (T, ways*queries, C, H, W)
            labels.repeat_interleave(queries).repeat(meta_batch_size, 1),
        )

    def _check_task_shape(self, meta_batch_size: int, ways: int, shots: int, queries: int) -> None:
        counts = {"meta_batch_size": meta_batch_size, "ways": ways, "shots": shots, "queries": queries}
        for name, value in counts.items():
            if int(value) != value or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if ways > self.num_classes:
            rotated = f" ({len(self.class_names)} x {len(self.rotations)} rotations)" if len(self.rotations) > 1 else ""
            fewer = f"use ways <= {self.num_classes} or " if self.num_classes >= 2 else ""  # a task needs 2 classes
            raise ConfigError(
                f"ways={ways} but only {self.num_classes} class{'' if self.num_classes == 1 else 'es'}{rotated} "
                f"{'is' if self.num_classes == 1 else 'are'} available; {fewer}a split with more classes"
            )
        if shots + queries > self._fewest:
            raise ConfigError(
                f"shots + queries = {shots} + {queries} but class {self.class_names[self._smallest]!r} has only "
                f"{self._fewest} images; use shots + queries <= {self._fewest} or leave out the classes with "
                "fewer images"
            )


# --------------------------------------------------------------------------------- reading images
def walk_files(root: Path) -> Iterator[Path]:
    """Every entry under ``root`` that is not a folder (files, broken links), as ``root / relative``
    paths in sorted order, hidden files and folders (``.xxx``) left out.

    Symlinked folders are followed (``Path.rglob`` does not follow them before Python 3.13, so a
    class folder that is a link was empty), except a link to a folder it is inside: a loop, skipped
    with a warning. A sub-folder that cannot be listed is skipped with a warning.
    """
    def walk(folder: Path, inside: frozenset[tuple[int, int]]) -> Iterator[Path]:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as error:
            log.warning("cannot list %s (%s); the files in it are left out", folder, error.strerror or error)
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = folder / entry.name
            try:
                is_dir = entry.is_dir()  # follows a symlink
                info = entry.stat() if is_dir else None
            except OSError:  # a broken link
                is_dir = False
            if not is_dir:
                yield path
            elif (info.st_dev, info.st_ino) in inside:
                log.warning("%s links to %s, a folder it is inside; not followed (a loop)", path, path.resolve())
            else:
                yield from walk(path, inside | {(info.st_dev, info.st_ino)})

    try:
        top = root.stat()
    except OSError:  # no such folder: nothing in it
        return
    yield from walk(root, frozenset({(top.st_dev, top.st_ino)}))


class FileSource:
    """The files under a folder or inside a zip, read by their relative posix path."""

    def __init__(self, location: Path) -> None:
        self.location = Path(location)
        try:
            self._zip = zipfile.ZipFile(self.location) if self.location.is_file() else None
        except zipfile.BadZipFile as error:
            raise DataError(f"{self.location} is not a readable zip file ({error}); replace it") from error

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._zip is not None:
            self._zip.close()

    def stamps(self) -> dict[str, str]:
        """Relative path -> a stamp of every file that changes when the file does, for :func:`fingerprint`:
        ``"<size> <mtime in ns>"`` in a folder (an edit that keeps the size changes the mtime), and
        ``"<size> crc=<CRC-32>"`` in a zip (a member has no mtime of its own; its CRC-32 is of its
        content, and reading it from the zip's index decodes nothing). Folders and hidden files are
        left out; symlinked folders are followed (see :func:`walk_files`)."""
        if self._zip is not None:
            files = {i.filename: f"{i.file_size} crc={i.CRC:08x}" for i in self._zip.infolist() if not i.is_dir()}
            return {n: s for n, s in files.items() if not any(part.startswith(".") for part in n.split("/"))}
        files, broken = {}, []
        for path in walk_files(self.location):
            try:
                info = path.stat()
            except OSError:  # a broken link: said once, not silently left out
                broken.append(path.relative_to(self.location).as_posix())
                continue
            if stat.S_ISREG(info.st_mode):
                files[path.relative_to(self.location).as_posix()] = f"{info.st_size} {info.st_mtime_ns}"
        if broken:
            log.warning("%d broken link(s) in %s are not read: %s", len(broken), self.location,
                        ", ".join(broken[:3]) + (", ..." if len(broken) > 3 else ""))
        return files

    def read(self, name: str) -> bytes:
        """The bytes of ``name``; a damaged zip member or an unreadable file is a DataError naming it."""
        if self._zip is not None:
            try:
                return self._zip.read(name)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, OSError) as error:
                raise DataError(
                    f"{self.location} is damaged: its member {name} cannot be read ({error}); download the zip "
                    "again or replace it with an intact copy"
                ) from None
        try:
            return (self.location / name).read_bytes()
        except OSError as error:
            raise DataError(f"cannot read {self.location / name} ({error.strerror or error}); check the file and "
                            "its permissions") from None

    def describe(self, name: str) -> str:
        """Where ``name`` is, for error messages."""
        return f"{self.location}:{name}" if self._zip is not None else str(self.location / name)


def fingerprint(stamps: Mapping[str, object]) -> str:
    """A short hash of file names and their stamps (:meth:`FileSource.stamps`; sizes in older callers):
    tells whether a cache still matches its source."""
    lines = "\n".join(f"{name}\t{stamp}" for name, stamp in sorted(stamps.items()))
    return hashlib.sha1(lines.encode()).hexdigest()[:16]


def decode_image(
    data: bytes, where: str, size: int, mode: str, resample: Image.Resampling = Image.Resampling.LANCZOS
) -> np.ndarray:
    """Decode one image to ``uint8 (C, size, size)`` in PIL ``mode`` ("L" or "RGB").

    The aspect ratio is not kept. A JPEG's orientation tag is applied (a phone photo stored sideways
    comes out upright), and transparent pixels are composited onto white (PIL's plain conversion
    keeps whatever colour a transparent pixel happens to store). Grayscale images of more than 8 bits
    are rescaled to 8 (PIL's conversion clips them to 0..255, so they came out white): see
    :func:`to_8_bits`. A file PIL cannot read raises one error naming it.
    """
    try:
        with warnings.catch_warnings(record=True) as caught:  # PIL's warning names no file: ours does
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))
        with opened as image:
            if any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught):
                log.warning("image %s has %d x %d pixels, more than PIL's guard against decompression bombs "
                            "(%d); decoding it", where, *image.size, Image.MAX_IMAGE_PIXELS)
            image.draft(mode, (size, size))  # JPEG: decode at a reduced scale when that is enough
            image = to_8_bits(ImageOps.exif_transpose(image))
            if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
                rgba = image.convert("RGBA")
                image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            image = image.convert(mode)
            if image.size != (size, size):
                image = image.resize((size, size), resample=resample)
            array = np.asarray(image, dtype=np.uint8)
    except Image.DecompressionBombError:
        raise DataError(f"cannot read image {where}: it has more than twice PIL's limit of {Image.MAX_IMAGE_PIXELS} "
                        "pixels (its guard against decompression bombs); downscale it, or raise "
                        "PIL.Image.MAX_IMAGE_PIXELS if you trust the file") from None
    except (OSError, SyntaxError, ValueError) as error:
        reason = "not an image format PIL can read" if isinstance(error, Image.UnidentifiedImageError) else error
        raise DataError(f"cannot read image {where}: {reason}; replace or delete the file") from error
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def to_8_bits(image: Image.Image) -> Image.Image:
    """A grayscale image of more than 8 bits as an 8-bit "L" image, its full range mapped onto 0..255;
    other images unchanged.

    The range is the mode's, not the image's (so a dark image stays dark, and every image of a
    dataset is scaled alike): 0..65535 for 16-bit modes ("I;16", "I;16B", ...) and for "I" (PIL opens
    16-bit PGM/PPM, and 16-bit PNG in older versions, as "I" with that range; values outside it are
    clipped), and 0..1 for float "F" images (the usual convention for float images; outside clipped,
    NaN taken as 0). 16-bit ``v`` becomes ``round(v / 257)``: 0 -> 0, 65535 -> 255. A transparent
    gray value (PNG's tRNS) becomes white, as transparency does in :func:`decode_image`.
    """
    if image.mode != "I" and image.mode != "F" and not image.mode.startswith("I;16"):
        return image
    values = np.asarray(image, dtype=np.float64)
    top = 1.0 if image.mode == "F" else 65535.0
    eight = np.rint(np.clip(np.nan_to_num(values) / top, 0.0, 1.0) * 255).astype(np.uint8)
    transparent = image.info.get("transparency")
    if isinstance(transparent, (int, float)):
        eight[values == transparent] = 255
    return Image.fromarray(eight, "L")


# --------------------------------------------------------------------------------- the cache
def default_cache_dir() -> Path:
    """``$FASTMAML_CACHE``, else ``~/.cache/fastmaml``: decoded datasets live there by default."""
    return Path(os.environ.get("FASTMAML_CACHE") or Path.home() / ".cache" / "fastmaml")


def read_cache(path: Path, meta: dict) -> FewShotImages | None:
    """The images cached at ``path`` (``.npy`` + ``.json``) if they exist and were built for ``meta``.

    The images are memory-mapped copy-on-write: pages load on first use, nothing is written back.
    """
    index_path, array_path = path.with_suffix(".json"), path.with_suffix(".npy")
    try:
        index = json.loads(index_path.read_text())
        if index["meta"] != meta:
            return None
        images = np.load(array_path, mmap_mode="c")
        if images.dtype != np.uint8 or images.shape != (sum(index["class_sizes"]), *index["image_shape"]):
            return None
        return FewShotImages(torch.from_numpy(images), index["class_sizes"], index["class_names"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _unwritable_cache(path: Path, error: OSError) -> DataError:
    return DataError(
        f"cannot write the image cache {path} ({error.strerror or error}); choose a writable cache folder "
        "(train, eval: --set cache_dir=DIR; fastmaml data: --cache-dir DIR; or $FASTMAML_CACHE) with room for it"
    )


def write_cache(
    path: Path,
    meta: dict,
    class_names: Sequence[str],
    class_sizes: Sequence[int],
    image_shape: tuple[int, int, int],
    images: Iterable[np.ndarray],
) -> None:
    """Stream ``images`` into ``path`` (``.npy``), then write its index (``.json``), each atomically.

    The index is written last, so an interrupted build leaves no index and is rebuilt next time.
    A cache folder that cannot be made or written is a DataError (an error while reading the images
    is theirs, not the cache's).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _unwritable_cache(path, error) from None
    shape = (sum(class_sizes), *image_shape)
    path.with_suffix(".json").unlink(missing_ok=True)
    with atomic_path(path.with_suffix(".npy")) as tmp:
        try:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        except OSError as error:  # a read-only folder, no room for the array
            raise _unwritable_cache(path, error) from None
        filled = 0
        for i, image in enumerate(tqdm(images, total=shape[0], desc=f"caching {path.name}", unit="img", disable=None)):
            array[i] = image
            filled = i + 1
        if filled != shape[0]:
            raise RuntimeError(f"expected {shape[0]} images for {path.name}, got {filled}")
        array.flush()
        del array
    index = {
        "meta": meta,
        "image_shape": list(image_shape),
        "class_names": list(class_names),
        "class_sizes": [int(s) for s in class_sizes],
    }
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(index))


def cached_images(
    path: Path | None,
    meta: dict,
    class_names: Sequence[str],
    class_sizes: Sequence[int],
    image_shape: tuple[int, int, int],
    images: Callable[[], Iterable[np.ndarray]],
) -> FewShotImages:
    """Read the cache at ``path``, building it from ``images()`` first if it is missing or stale.

    With ``path=None`` the images are decoded into memory and nothing is written.
    """
    check_fits(sum(class_sizes), image_shape, path)
    if path is None:
        array = np.empty((sum(class_sizes), *image_shape), dtype=np.uint8)
        for i, image in enumerate(tqdm(images(), total=len(array), desc="decoding", unit="img", disable=None)):
            array[i] = image
        return FewShotImages(torch.from_numpy(array), class_sizes, class_names)
    meta = {"version": CACHE_VERSION, **meta}
    cached = read_cache(path, meta)
    if cached is None:
        log.info("building image cache %s", path)
        write_cache(path, meta, class_names, class_sizes, image_shape, images())
        cached = read_cache(path, meta)
        if cached is None:
            raise RuntimeError(f"the cache {path} could not be read back after writing it; check the disk")
    return cached


def check_fits(count: int, image_shape: tuple[int, int, int], path: Path | None) -> None:
    """DataError, before any decoding, where ``count`` uint8 images of ``image_shape`` cannot be held in
    this machine's memory (training keeps them there) or written to the cache's disk: an image_size of
    100,000 was killed by the kernel at 21 GB, leaving a 1.8 TB sparse cache file behind."""
    need = count * int(np.prod(image_shape))
    shape = "x".join(map(str, image_shape))
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): no check
        memory = None
    if memory and need > memory:
        raise DataError(f"{count} images of {shape} pixels need {need / 2**30:.1f} GiB, more than this machine's "
                        f"{memory / 2**30:.1f} GiB of memory; lower image_size")
    if path is not None and path.parent.is_dir():
        free = shutil.disk_usage(path.parent).free
        if need > free and not path.is_file():
            raise DataError(f"the image cache {path} would need {need / 2**30:.1f} GiB and its disk has "
                            f"{free / 2**30:.1f} GiB free; lower image_size or set cache_dir to a disk with room")


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """A temporary path beside ``target``, fsynced and renamed onto it if the block succeeds."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
