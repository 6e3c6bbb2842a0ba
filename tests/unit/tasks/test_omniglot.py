"""Omniglot: the official layout from folders or zips, checks, cache, split, rotations, download."""

import functools
import hashlib
import http.server
import shutil
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastmaml.errors import ConfigError, DataError
from fastmaml.tasks import omniglot
from fastmaml.tasks.omniglot import download_omniglot, load_omniglot, omniglot_split, prepare_omniglot

REAL_DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "omniglot"
TINY = {"images_background": {"Alpha": 2, "Beta": 2}, "images_evaluation": {"Gamma": 2}}  # characters per alphabet
DRAWINGS = 3


@pytest.fixture
def tiny_spec(monkeypatch):
    """Shrink the expected counts to the tiny tree: 6 characters, 4 for trainval (1 of them val), 2 for test."""
    monkeypatch.setattr(omniglot, "PARTS", {p: (len(a), sum(a.values())) for p, a in TINY.items()})
    monkeypatch.setattr(omniglot, "IMAGES_PER_CHARACTER", DRAWINGS)
    monkeypatch.setattr(omniglot, "NUM_TRAINVAL", 4)
    monkeypatch.setattr(omniglot, "NUM_VAL", 1)


def drawing(character: int, drawer: int) -> Image.Image:
    """A 1-bit 35x35 'drawing': a black (ink) bar whose place encodes the character, on white paper."""
    pixels = np.ones((35, 35), dtype=bool)
    pixels[5 * character : 5 * character + 5, 2 + drawer : 30] = False
    return Image.fromarray(pixels)


def write_tree(root: Path) -> Path:
    """The official folder layout with the TINY counts."""
    character = 0
    for part, alphabets in TINY.items():
        for alphabet, characters in alphabets.items():
            for c in range(1, characters + 1):
                folder = root / part / alphabet / f"character{c:02d}"
                folder.mkdir(parents=True)
                for drawer in range(1, DRAWINGS + 1):
                    drawing(character, drawer).save(folder / f"{character + 1:04d}_{drawer:02d}.png")
                character += 1
    return root


def zip_tree(tree: Path, out: Path) -> Path:
    """The two zips, laid out like the official ones (``images_background/<Alphabet>/...``)."""
    out.mkdir(parents=True, exist_ok=True)
    for part in TINY:
        with zipfile.ZipFile(out / f"{part}.zip", "w") as z:
            for path in sorted((tree / part).rglob("*")):
                z.write(path, path.relative_to(tree).as_posix())
    return out


@pytest.fixture
def tree(tmp_path, tiny_spec):
    return write_tree(tmp_path / "tree")


@pytest.fixture
def zips(tmp_path, tree):
    return zip_tree(tree, tmp_path / "zips")


def test_folders_and_zips_give_the_same_images(tree, zips, tmp_path):
    from_folders = load_omniglot(tree, "trainval", rotations=False, cache_dir=tmp_path / "c1")
    from_zips = load_omniglot(zips, "trainval", rotations=False, cache_dir=tmp_path / "c2")
    assert from_folders.class_names == from_zips.class_names
    assert torch.equal(from_folders.images, from_zips.images)
    assert from_zips.images.shape == (4 * DRAWINGS, 1, 28, 28) and from_zips.images.dtype == torch.uint8


def test_ink_is_bright_and_paper_dark(zips, tmp_path):
    data = load_omniglot(zips, "test", rotations=False, cache_dir=tmp_path)
    x = data.images[0, 0].float() / 255
    assert x.mean() < 0.4 and x.max() > 0.9 and x.min() == 0  # mostly paper (0), a bar of ink (1)
    character = sorted(f"{a}/character{c:02d}" for a in ("Alpha", "Beta", "Gamma") for c in (1, 2)).index(
        data.class_names[0]
    )  # drawing(character, ...) numbered the characters in this order
    bar = slice(round(5 * character * 28 / 35) + 1, round((5 * character + 5) * 28 / 35) - 1)
    assert x[bar, 10:20].min() > 0.9


def test_antialias_off_reproduces_binary_images(zips, tmp_path):
    data = load_omniglot(zips, "test", rotations=False, cache_dir=tmp_path, antialias=False)
    assert set(data.images.unique().tolist()) == {0, 255}
    smooth = load_omniglot(zips, "test", rotations=False, cache_dir=tmp_path)
    assert len(smooth.images.unique()) > 2


def test_splits_are_disjoint_and_rotations_quadruple_the_classes(zips, tmp_path):
    kw = dict(cache_dir=tmp_path, rotations=False)
    names = {s: set(load_omniglot(zips, s, **kw).class_names) for s in ("train", "val", "trainval", "test")}
    assert [len(names[s]) for s in ("train", "val", "trainval", "test")] == [3, 1, 4, 2]
    assert names["train"] | names["val"] == names["trainval"] and not names["train"] & names["val"]
    assert not names["trainval"] & names["test"]
    rotated = load_omniglot(zips, "train", cache_dir=tmp_path)
    assert rotated.num_classes == 12 and rotated.rotations == (0, 1, 2, 3)
    batch = rotated.sample(torch.Generator().manual_seed(0), 2, 12, 1, 2)  # every class, rotations included
    assert batch.support_x.shape == (2, 12, 1, 28, 28)


def test_paper_split_sizes_are_fixed_and_do_not_depend_on_listing_order():
    names = [f"A{i // 20}/character{i % 20:02d}" for i in range(1623)]
    splits = {s: omniglot_split(names, s) for s in omniglot.SPLITS}
    assert {s: len(v) for s, v in splits.items()} == {"train": 1100, "val": 100, "trainval": 1200, "test": 423}
    assert splits["trainval"] == splits["train"] + splits["val"]
    assert not set(splits["trainval"]) & set(splits["test"])
    assert omniglot_split(names[::-1], "test") == splits["test"]
    assert splits["train"][:3] != sorted(names)[:3]  # shuffled, not alphabetical
    with pytest.raises(ValueError, match="split must be one of"):
        omniglot_split(names, "validation")


def test_cache_is_reused_and_rebuilt_when_invalid_or_stale(zips, tree, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    path = prepare_omniglot(zips, cache_dir=cache)
    assert path == cache / "omniglot_28.npy" and path.with_suffix(".json").is_file()
    first = load_omniglot(zips, "test", cache_dir=cache)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache is valid")

    with monkeypatch.context() as m:
        m.setattr(omniglot, "decode_image", no_decoding)
        assert torch.equal(load_omniglot(zips, "test", cache_dir=cache).images, first.images)
        path.write_bytes(b"not an array")  # invalid cache: rebuilt, so decoding is needed
        with pytest.raises(AssertionError, match="decoded"):
            load_omniglot(zips, "test", cache_dir=cache)
    assert torch.equal(load_omniglot(zips, "test", cache_dir=cache).images, first.images)
    drawing(0, 3).save(next(tree.rglob("*_01.png")))  # the source changed: rebuilt from the folders
    with monkeypatch.context() as m:
        m.setattr(omniglot, "decode_image", no_decoding)
        with pytest.raises(AssertionError, match="decoded"):
            prepare_omniglot(tree, cache_dir=cache)


def test_incomplete_or_missing_data_is_a_clear_error(tree, tmp_path):
    nowhere = tmp_path / "nowhere"
    with pytest.raises(DataError, match=f"fastmaml data omniglot --root {nowhere} --download .download=True in Python"):
        load_omniglot(nowhere, "train", cache_dir=tmp_path)
    next((tree / "images_evaluation").rglob("*.png")).unlink()
    with pytest.raises(ValueError, match=r"images_evaluation set: .* found 1 alphabets .* has 2 images"):
        load_omniglot(tree, "train", cache_dir=tmp_path)
    shutil.rmtree(tree / "images_background" / "Beta")
    with pytest.raises(ValueError, match="expected 2 alphabets, 4 characters .* found 1 alphabets and 2 characters"):
        load_omniglot(tree, "train", cache_dir=tmp_path)


def test_corrupt_zip_is_a_clear_error(zips, tmp_path):
    (zips / "images_evaluation.zip").write_bytes(b"PK but not really a zip")
    with pytest.raises(ValueError, match=r"images_evaluation\.zip is not a readable zip file"):
        load_omniglot(zips, "train", cache_dir=tmp_path)


# ------------------------------------------------------------------------------------------- download
@pytest.fixture
def server(zips):
    """Serve the tiny zips on 127.0.0.1 (never the internet)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(zips))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def md5s(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.glob("*.zip")}


def test_download_checks_md5_and_feeds_the_loader(server, zips, tmp_path):
    root = tmp_path / "downloaded"
    fetched = download_omniglot(root, base_url=server, md5=md5s(zips))
    assert sorted(p.name for p in fetched) == ["images_background.zip", "images_evaluation.zip"]
    assert md5s(root) == md5s(zips)
    assert download_omniglot(root, base_url=server, md5=md5s(zips)) == []  # present: not fetched again
    assert len(load_omniglot(root, "test", rotations=False, cache_dir=tmp_path / "c").class_names) == 2


def test_download_with_wrong_md5_fails_and_leaves_nothing(server, tmp_path):
    root = tmp_path / "downloaded"
    with pytest.raises(ValueError, match=r"arrived with md5 [0-9a-f]{32}, expected 68d2efa1.*md5=None"):
        download_omniglot(root, base_url=server)  # the official md5 cannot match the tiny zips
    assert not root.exists()  # before: an empty folder it had made stayed behind
    root.mkdir()  # a folder that was there before the download stays
    with pytest.raises(ValueError, match="arrived with md5"):
        download_omniglot(root, base_url=server)
    assert list(root.iterdir()) == []


def test_download_network_failure_is_a_clear_error(server, tmp_path):
    with pytest.raises(DataError, match=r"could not download http://127\.0\.0\.1:\d+/missing/images_background"):
        download_omniglot(tmp_path / "d", base_url=server + "missing", md5=None)
    with pytest.raises(DataError, match="check the network"):
        download_omniglot(tmp_path / "d" / "deeper", base_url="http://127.0.0.1:9/", md5=None, timeout=5)
    assert not (tmp_path / "d").exists()  # neither folder it made is left
    (tmp_path / "afile").write_text("")
    with pytest.raises(DataError, match="cannot make .*afile.* for the download"):  # before: FileExistsError
        download_omniglot(tmp_path / "afile" / "omniglot", base_url=server, md5=None)


def test_wrong_md5_says_what_a_command_line_user_can_do(server, tmp_path):
    # before: "pass md5=None", which fastmaml data omniglot --download has no way to do
    with pytest.raises(DataError) as caught:
        download_omniglot(tmp_path / "d", base_url=server)
    message = str(caught.value)
    assert "was not kept; run the download again; if it fails again, check that the mirror (--url) holds the " \
           f"official zips, or put images_background.zip into {tmp_path / 'd'} by hand" in message
    assert message.endswith("(in Python, md5=None skips this check)") and "\n" not in message


@pytest.mark.parametrize("url", ["notaurl", "ftp://127.0.0.1/omniglot", "http://", "http://[::1", "127.0.0.1:8000"])
def test_a_base_url_that_is_no_http_or_file_url_is_a_clear_error(url, tmp_path):
    # before: ValueError: unknown url type: 'notaurl/images_background.zip' (a traceback in the CLI)
    with pytest.raises(ConfigError, match=r"base_url must be an http://, https:// or file:// URL of the folder "
                                          r"holding images_background\.zip and images_evaluation\.zip \(e\.g\. https://"):
        download_omniglot(tmp_path / "d", base_url=url, md5=None)
    assert not (tmp_path / "d").exists()  # checked before anything is made or fetched


def test_prepare_with_download_fetches_what_is_missing(server, zips, tmp_path, monkeypatch):
    local = functools.partial(download_omniglot, base_url=server, md5=md5s(zips))
    monkeypatch.setattr(omniglot, "download_omniglot", local)
    path = prepare_omniglot(tmp_path / "fresh", cache_dir=tmp_path / "c", download=True)
    assert path.is_file() and (tmp_path / "fresh" / "images_background.zip").is_file()


# ------------------------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def real_cache(tmp_path_factory):
    """The full Omniglot cache, built once per test session (about 8 s on a 2-core CPU)."""
    if not (REAL_DATA / "images_background.zip").is_file():
        pytest.skip(f"real Omniglot not found at {REAL_DATA.resolve()} (the shared/ folder beside the checkout)")
    cache = tmp_path_factory.mktemp("omniglot_cache")
    start = time.perf_counter()
    prepare_omniglot(REAL_DATA, cache_dir=cache)
    return cache, time.perf_counter() - start


def test_real_omniglot_counts_and_splits(real_cache):
    cache, seconds = real_cache
    assert seconds < 120
    counts = {}
    for split in omniglot.SPLITS:
        data = load_omniglot(REAL_DATA, split, cache_dir=cache)
        assert set(data.class_sizes.tolist()) == {20} and data.images.shape[1:] == (1, 28, 28)
        counts[split] = len(data.class_names)
    assert counts == {"train": 1100, "val": 100, "trainval": 1200, "test": 423}
    everything = (
        load_omniglot(REAL_DATA, "trainval", cache_dir=cache).class_names
        + load_omniglot(REAL_DATA, "test", cache_dir=cache).class_names
    )
    assert len(set(everything)) == 1623 and len({c.split("/")[0] for c in everything}) == 50
    data = load_omniglot(REAL_DATA, "train", cache_dir=cache)
    assert data.num_classes == 4400
    ink = data.images.float().mean().item() / 255
    assert 0.03 < ink < 0.2  # thin dark strokes on white paper become a little bright ink on black
