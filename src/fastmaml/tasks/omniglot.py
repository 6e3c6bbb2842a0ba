"""Omniglot (Lake et al. 2015) as in the MAML paper: 1623 characters, 28x28, rotations as classes.

Source layout (folders, or the two official zips holding them)::

    <root>/images_background/<Alphabet>/<characterNN>/<id>_<drawer>.png    30 alphabets, 964 characters
    <root>/images_evaluation/<Alphabet>/<characterNN>/<id>_<drawer>.png    20 alphabets, 659 characters

every character drawn by 20 people. Local files are checked for exactly these counts; downloads are
also checked against the official md5 (zips rebuilt from the same PNGs have another md5).

Pixels. The original code (cbfinn/maml ``data/omniglot_resized/resize_images.py``) resized the
105x105 PNGs to 28x28 with ``Image.resize(..., LANCZOS)``; the PNGs are 1-bit, for which Pillow
ignores the filter and takes the nearest pixel, so its inputs were binary. It read them as
``1 - png / 255`` (``data_generator.py``): ink is 1, paper is 0. The cache stores ``255 - gray`` as
uint8, so the sampled ``x`` is the ink in [0, 1] as in the original. By default the drawing is made
grayscale before resizing, so LANCZOS does anti-alias and thin strokes survive the 3.75x reduction;
``antialias=False`` reproduces the original binary images exactly.

Split. The original code listed the character folders, shuffled them after ``random.seed(1)``, and
cut them into 1100 meta-training, 100 validation and 423 meta-test characters (``data_generator.py``);
the paper reports the 1200 = 1100 + 100 as meta-training. Its listing came from ``os.listdir``, so its
exact split depends on the file system. Here the names ``"<Alphabet>/<characterNN>"`` are sorted, then
shuffled with ``random.Random(1)``, and cut the same way::

    train = shuffled[:1100]   val = shuffled[1100:1200]   trainval = shuffled[:1200]   test = shuffled[1200:]

Rotations. Each character turned by 0, 90, 180 and 270 degrees is a class of its own (the paper,
after Santoro et al. 2016). The original code rotated meta-validation and meta-test classes too, so
``rotations=True`` applies to any split. (It drew one rotation per sampled character, so a task
never holds two turns of one character; here two turns of one character are two classes and may
meet in a task.)
"""

from __future__ import annotations

import hashlib
import http.client
import random
import re
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from fastmaml.errors import ConfigError, DataError
from fastmaml.tasks.images import (
    QUARTER_TURNS,
    FewShotImages,
    FileSource,
    atomic_path,
    cached_images,
    decode_image,
    default_cache_dir,
    fingerprint,
)

OMNIGLOT_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
OMNIGLOT_MD5 = {  # the official zips of brendenlake/omniglot (also used by torchvision)
    "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",
}
PARTS = {"images_background": (30, 964), "images_evaluation": (20, 659)}  # (alphabets, characters)
IMAGES_PER_CHARACTER = 20
NUM_TRAINVAL, NUM_VAL, SPLIT_SEED = 1200, 100, 1
SPLITS = ("train", "val", "trainval", "test")


def download_omniglot(
    root: str | Path,
    base_url: str = OMNIGLOT_URL,
    md5: Mapping[str, str] | None = OMNIGLOT_MD5,
    timeout: float = 60.0,
) -> list[Path]:
    """Fetch ``images_background.zip`` and ``images_evaluation.zip`` into ``root``; returns those fetched.

    Zips already in ``root`` are kept. Each download is checked against ``md5[name]`` (``None``:
    no check) and written atomically, so an interrupted download leaves nothing behind.
    """
    check_download_url(base_url, "base_url")
    root = Path(root)
    made = [folder for folder in (root, *root.absolute().parents) if not folder.exists()]  # deepest first
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot make {root} for the download ({error.strerror}); choose a writable --root") from None
    fetched = []
    try:
        for part in PARTS:
            target = root / f"{part}.zip"
            if not target.is_file():
                _download(f"{base_url.rstrip('/')}/{target.name}", target, (md5 or {}).get(target.name), timeout)
                fetched.append(target)
    except BaseException:
        for folder in made:  # a download that failed leaves no empty folders it made (a fetched zip stays)
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    return fetched


def check_download_url(url: str, option: str = "--url") -> None:
    """ConfigError unless ``url`` is an http://, https:// (with a host) or file:// URL; ``option`` names it."""
    try:
        parts = urllib.parse.urlsplit(url)
        valid = (parts.scheme in ("http", "https") and bool(parts.hostname)) or parts.scheme == "file"
    except ValueError:  # e.g. an unclosed [IPv6 address
        valid = False
    if not valid:
        raise ConfigError(
            f"{option} must be an http://, https:// or file:// URL of the folder holding images_background.zip "
            f"and images_evaluation.zip (e.g. {OMNIGLOT_URL} or file:///data/omniglot_zips), got {url!r}"
        )


def _download(url: str, target: Path, expected_md5: str | None, timeout: float) -> None:
    digest = hashlib.md5()
    with atomic_path(target) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, desc=target.name, unit="B", unit_scale=True, disable=None) as bar:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
        except (OSError, http.client.HTTPException, ValueError) as error:  # URLError, timeouts: OSErrors
            raise DataError(
                f"could not download {url}: {getattr(error, 'reason', error)}; check the network, or fetch "
                f"{target.name} by hand into {target.parent}"
            ) from error
        if expected_md5 is not None and digest.hexdigest() != expected_md5:
            raise DataError(
                f"{url} arrived with md5 {digest.hexdigest()}, expected {expected_md5}: the download is "
                "corrupt or the file changed upstream, and was not kept; run the download again; if it fails again, "
                f"check that the mirror (--url) holds the official zips, or put {target.name} into "
                f"{target.parent} by hand (in Python, md5=None skips this check)"
            )


def check_omniglot(root: str | Path) -> None:
    """DataError unless ``root`` holds the two Omniglot sets (folders or zips) with the official
    structure and counts; reads the file listings only, decodes nothing."""
    _scan(Path(root))


def _scan(root: Path) -> list[tuple[Path, dict[str, list[str]], dict[str, str]]]:
    """Per part: where it is, character -> its PNGs, and the PNGs' stamps (:meth:`FileSource.stamps`,
    for the cache key)."""
    parts = []
    for part, (alphabets, characters) in PARTS.items():
        folder, archive = root / part, root / f"{part}.zip"
        location = folder if folder.is_dir() else archive
        if not location.is_file() and not location.is_dir():
            raise DataError(
                f"Omniglot not found: neither {folder}/ nor {archive} exists; put the official "
                "images_background and images_evaluation zips (or their unpacked folders) there, or "
                f"download them: fastmaml data omniglot --root {root} --download (download=True in Python)"
            )
        with FileSource(location) as source:
            stamps = {n: s for n, s in source.stamps().items() if n.endswith(".png")}
        pattern = re.compile(rf"(?:{re.escape(part)}/)?(([^/]+)/[^/]+)/([^/]+\.png)")
        chars: dict[str, list[str]] = {}
        keyed: dict[str, str] = {}  # keyed by part/alphabet/character/png, whether in a folder or a zip
        for name in sorted(stamps):
            if match := pattern.fullmatch(name):
                chars.setdefault(match[1], []).append(name)
                keyed[f"{part}/{match[1]}/{match[3]}"] = stamps[name]
        found_alphabets = len({c.split("/")[0] for c in chars})
        wrong = [c for c, pngs in chars.items() if len(pngs) != IMAGES_PER_CHARACTER]
        if (found_alphabets, len(chars)) != (alphabets, characters) or wrong:
            detail = f"; {wrong[0]} has {len(chars[wrong[0]])} images" if wrong else ""
            raise DataError(
                f"{location} does not hold the Omniglot {part} set: expected {alphabets} alphabets, "
                f"{characters} characters and {IMAGES_PER_CHARACTER} images per character, found "
                f"{found_alphabets} alphabets and {len(chars)} characters{detail}. Replace it with the "
                f"official file (delete it and run fastmaml data omniglot --root {root} --download, "
                "or pass download=True in Python)"
            )
        parts.append((location, chars, keyed))
    names = [c for _, chars, _ in parts for c in chars]
    if len(set(names)) != len(names):
        raise DataError(f"alphabets appear in both {' and '.join(PARTS)}; use the official Omniglot files")
    return parts


def decode_drawing(data: bytes, where: str, image_size: int, antialias: bool = True) -> np.ndarray:
    """One Omniglot PNG as the cache stores it: uint8 (1, size, size), ink = 255 (the original's
    1 - png / 255), resized with Lanczos (``antialias``) or nearest neighbour."""
    resample = Image.Resampling.LANCZOS if antialias else Image.Resampling.NEAREST
    return 255 - decode_image(data, where, image_size, "L", resample)


def _omniglot_images(
    root: str | Path, cache_dir: str | Path | None, download: bool, image_size: int, antialias: bool
) -> tuple[FewShotImages, Path]:
    root = Path(root)
    if download:
        download_omniglot(root)
    parts = _scan(root)
    names = [c for _, chars, _ in parts for c in chars]
    all_stamps = {n: s for _, _, stamps in parts for n, s in stamps.items()}

    def images() -> Iterator[np.ndarray]:
        for location, chars, _ in parts:
            with FileSource(location) as source:
                for pngs in chars.values():
                    for png in pngs:
                        yield decode_drawing(source.read(png), source.describe(png), image_size, antialias)

    path = Path(cache_dir or default_cache_dir() / "omniglot") / (
        f"omniglot_{image_size}" + ("" if antialias else "_nearest")
    )
    meta = {"dataset": "omniglot", "image_size": image_size, "antialias": antialias, "files": fingerprint(all_stamps)}
    sizes = [IMAGES_PER_CHARACTER] * len(names)
    return cached_images(path, meta, names, sizes, (1, image_size, image_size), images), path.with_suffix(".npy")


def prepare_omniglot(
    root: str | Path,
    cache_dir: str | Path | None = None,
    download: bool = False,
    image_size: int = 28,
    antialias: bool = True,
) -> Path:
    """Check the Omniglot files under ``root`` and decode them once into a cache; returns the ``.npy``.

    ``cache_dir`` defaults to ``default_cache_dir() / "omniglot"``. The cache is rebuilt when it is
    missing, unreadable, or was built from other files or settings.
    """
    return _omniglot_images(root, cache_dir, download, image_size, antialias)[1]


def omniglot_split(names: Sequence[str], split: str) -> list[str]:
    """The characters of ``split`` ("train", "val", "trainval" or "test"): see the module docstring."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
    shuffled = sorted(names)
    random.Random(SPLIT_SEED).shuffle(shuffled)  # mirrors the original code's random.seed(1) shuffle
    num_train = NUM_TRAINVAL - NUM_VAL
    cuts = {"train": (0, num_train), "val": (num_train, NUM_TRAINVAL), "trainval": (0, NUM_TRAINVAL)}
    start, stop = cuts.get(split, (NUM_TRAINVAL, len(shuffled)))
    return shuffled[start:stop]


def load_omniglot(
    root: str | Path,
    split: str,
    image_size: int = 28,
    rotations: bool = True,
    cache_dir: str | Path | None = None,
    download: bool = False,
    antialias: bool = True,
) -> FewShotImages:
    """The Omniglot characters of ``split`` as few-shot tasks (Finn et al. 2017, Sec. 5.2).

    With ``rotations`` each character at 0/90/180/270 degrees is its own class (4x the classes).
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
    everything, _ = _omniglot_images(root, cache_dir, download, image_size, antialias)
    chosen = everything.subset(omniglot_split(everything.class_names, split))
    return chosen.with_rotations(QUARTER_TURNS if rotations else (0,))
