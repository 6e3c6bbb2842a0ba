"""Class-per-folder trees: scanning, seeded class splits, channels and size, cache, clear errors."""

import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from fastmaml.errors import DataError
from fastmaml.tasks import folders
from fastmaml.tasks.folders import load_image_folder, split_classes

CLASSES = [f"class_{i}" for i in range(10)]


def write_tree(root: Path, classes=CLASSES, per_class: int = 3) -> Path:
    """Class i, image j: a solid colour (10 i, 20 j, 100); mixed formats and sizes; a stray text file."""
    for i, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for j in range(per_class):
            image = Image.new("RGB", (30 + j, 20), (10 * i, 20 * j, 100))
            image.save(root / name / f"img{j}.{['png', 'jpg', 'bmp'][j % 3]}")
        (root / name / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def tree(tmp_path):
    return write_tree(tmp_path / "tree")


def test_fraction_splits_are_disjoint_seeded_and_cover_the_classes(tree):
    splits = load_image_folder(tree, image_size=8, splits={"train": 0.6, "val": 0.2, "test": 0.2}, seed=3)
    names = {s: set(d.class_names) for s, d in splits.items()}
    assert {s: len(n) for s, n in names.items()} == {"train": 6, "val": 2, "test": 2}
    assert set.union(*names.values()) == set(CLASSES)
    assert not names["train"] & names["val"] and not names["train"] & names["test"] and not names["val"] & names["test"]
    again = load_image_folder(tree, image_size=8, splits={"train": 0.6, "val": 0.2, "test": 0.2}, seed=3)
    assert all(again[s].class_names == splits[s].class_names for s in splits)
    other = split_classes(CLASSES, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=4)
    assert set(other["train"]) != names["train"]


def test_images_size_channels_and_content(tree):
    data = load_image_folder(tree, image_size=8, splits={"all": 1.0})["all"]
    assert data.images.shape == (30, 3, 8, 8) and data.class_sizes.tolist() == [3] * 10  # notes.txt left out
    i = data.class_names.index("class_4")
    first = data.images[int(data.offsets[i]) + 1, :, 4, 4].int()  # img1.jpg of class 4
    assert (first - torch.tensor([40, 20, 100])).abs().max() <= 4
    gray = load_image_folder(tree, image_size=5, channels=1, splits={"all": 1.0})["all"]
    assert gray.images.shape == (30, 1, 5, 5)
    batch = data.sample(torch.Generator().manual_seed(0), 2, 5, 1, 2)
    assert batch.support_x.shape == (2, 5, 3, 8, 8) and batch.query_y.max() == 4


def test_explicit_class_lists(tree):
    splits = load_image_folder(tree, image_size=4, splits={"train": CLASSES[:7], "test": ["class_9", "class_8"]})
    assert splits["test"].class_names == ("class_9", "class_8") and len(splits["train"].class_names) == 7
    with pytest.raises(ValueError, match="'class_1' is in splits 'a' and 'b'; splits must be disjoint"):
        split_classes(CLASSES, {"a": ["class_1"], "b": ["class_1"]})
    with pytest.raises(ValueError, match="names class 'cat', which is not a class folder"):
        split_classes(CLASSES, {"a": ["cat"]})


def test_bad_fractions_are_clear_errors():
    with pytest.raises(ValueError, match="sum to at most 1"):
        split_classes(CLASSES, {"train": 0.8, "test": 0.3})
    with pytest.raises(ValueError, match=r"split 'val' gets no class \(0.01 of 10 classes\)"):
        split_classes(CLASSES, {"train": 0.5, "val": 0.01})
    with pytest.raises(ValueError, match="fractions or to lists of class names"):
        split_classes(CLASSES, {"train": "class_1"})


def test_corrupt_image_names_the_file(tree):
    (tree / "class_2" / "img1.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(ValueError, match=r"cannot read image .*class_2/img1\.jpg"):
        load_image_folder(tree, image_size=8)


def test_bad_trees_and_arguments(tmp_path, tree):
    with pytest.raises(DataError, match="image folder .*missing not found"):
        load_image_folder(tmp_path / "missing", image_size=8)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match="image folder .*afile is a file, not a folder"):
        load_image_folder(tmp_path / "afile", image_size=8)
    (tmp_path / "flat").mkdir()
    with pytest.raises(ValueError, match="has no class folders"):
        load_image_folder(tmp_path / "flat", image_size=8)
    (tree / "empty_class").mkdir()
    with pytest.raises(ValueError, match="class folder .*empty_class holds no images"):
        load_image_folder(tree, image_size=8)
    with pytest.raises(ValueError, match="channels must be 1"):
        load_image_folder(tree, image_size=8, channels=2)


def test_cache_is_reused_until_the_tree_changes(tree, tmp_path, monkeypatch):
    first = load_image_folder(tree, image_size=8, cache_dir=tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").glob("tree_*_8_3ch.npy")] != []

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache is valid")

    with monkeypatch.context() as m:
        m.setattr(folders, "decode_image", no_decoding)
        again = load_image_folder(tree, image_size=8, cache_dir=tmp_path / "cache")
        assert torch.equal(again["train"].images, first["train"].images)
        Image.new("RGB", (5, 5)).save(tree / "class_0" / "img9.png")
        with pytest.raises(AssertionError, match="decoded"):
            load_image_folder(tree, image_size=8, cache_dir=tmp_path / "cache")


def test_jpeg_orientation_and_transparency_are_applied():
    """A phone photo stored sideways with an EXIF orientation tag came out sideways; transparent
    pixels came out in whatever colour they stored (black or white for the same picture)."""
    import io

    import numpy as np

    from fastmaml.tasks.images import decode_image

    # 8 x 4 pixels, left half black, right half white, tagged "rotate 90 clockwise to display" (6)
    sideways = Image.new("L", (8, 4), 0)
    sideways.paste(255, (4, 0, 8, 4))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    sideways.save(buffer, "JPEG", exif=exif.tobytes(), quality=100)
    upright = decode_image(buffer.getvalue(), "photo.jpg", 8, "L")[0].astype(float)
    # displayed upright the picture is 4 wide and 8 tall: black on top, white below
    assert upright[:3].mean() < 40 and upright[5:].mean() > 215, upright
    for stored in ((0, 0, 0, 0), (255, 0, 0, 0)):  # the same transparent background, two stored colours
        png = Image.new("RGBA", (4, 4), stored)
        png.putpixel((0, 0), (0, 0, 255, 255))
        buffer = io.BytesIO()
        png.save(buffer, "PNG")
        rgb = decode_image(buffer.getvalue(), "icon.png", 4, "RGB", resample=Image.Resampling.NEAREST)
        assert rgb[:, 0, 0].tolist() == [0, 0, 255] and np.all(rgb[:, 1:, :] == 255), stored


def test_files_outside_class_folders_are_named_in_a_warning(tree, caplog):
    """Images in a sub-folder of a class, or beside the class folders, were skipped without a word."""
    image = (tree / "class_0" / "img0.png").read_bytes()
    (tree / "stray.png").write_bytes(image)
    (tree / "class_0" / "more").mkdir()
    (tree / "class_0" / "more" / "nested.png").write_bytes(image)
    (tree / "class_0" / "Thumbs.db").write_bytes(b"x")
    (tree / "class_0" / ".DS_Store").write_bytes(b"x")
    with caplog.at_level("WARNING"):
        folders.scan_class_folders(tree)
    # the tree's 10 notes.txt files and the two images; the images are the examples named
    assert "12 file(s) in" in caplog.text and "e.g. class_0/more/nested.png, stray.png" in caplog.text
    assert "Thumbs.db" not in caplog.text and "DS_Store" not in caplog.text


def test_cache_is_rebuilt_when_an_image_changes_at_the_same_size(tree, tmp_path):
    """A BMP edited in place keeps its byte size: the cache (keyed on names and sizes) kept the old pixels."""
    image = tree / "class_0" / "img2.bmp"
    first = load_image_folder(tree, image_size=8, cache_dir=tmp_path / "cache", splits={"all": 1.0})["all"]
    size, mtime = image.stat().st_size, image.stat().st_mtime_ns
    Image.new("RGB", (32, 20), (255, 255, 255)).save(image)
    os.utime(image, ns=(mtime + 2 * 10**9, mtime + 2 * 10**9))  # a later edit (coarse clocks: 2 s later)
    assert image.stat().st_size == size
    again = load_image_folder(tree, image_size=8, cache_dir=tmp_path / "cache", splits={"all": 1.0})["all"]
    i = int(again.offsets[again.class_names.index("class_0")]) + 2
    assert first.images[i].float().mean() < 100 and again.images[i].min() == 255


def test_trees_with_the_same_folder_name_do_not_share_a_cache(tmp_path):
    """Two trees named alike, with the same file names, sizes and times, shared one cache file."""
    trees = []
    for where, colour in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
        root = tmp_path / where / "faces"
        for c in ("x", "y"):
            (root / c).mkdir(parents=True)
            for j in range(2):
                Image.new("RGB", (6, 6), colour).save(root / c / f"{j}.bmp")
                os.utime(root / c / f"{j}.bmp", ns=(10**18, 10**18))
        trees.append(root)
    red, blue = (load_image_folder(t, image_size=4, cache_dir=tmp_path / "cache", splits={"all": 1.0})["all"]
                 for t in trees)
    assert red.images[:, 0].min() == 255 and blue.images[:, 2].min() == 255 and blue.images[:, 0].max() == 0
    assert len(list((tmp_path / "cache").glob("faces_*_4_3ch.npy"))) == 2  # one each: no rebuild when alternating


def test_symlinked_class_folders_are_read(tree, tmp_path, caplog):
    """rglob does not follow folder symlinks: a linked class folder was said to hold no images."""
    shutil.move(tree / "class_3", tmp_path / "class_3")
    (tree / "class_3").symlink_to(tmp_path / "class_3", target_is_directory=True)
    (tree / "class_1" / "loop").symlink_to(tree, target_is_directory=True)
    with caplog.at_level("WARNING"):
        data = load_image_folder(tree, image_size=4, splits={"all": 1.0})["all"]
    assert data.class_sizes.tolist() == [3] * 10 and "class_3" in data.class_names
    assert "a folder it is inside; not followed" in caplog.text


def test_predict_follows_symlinked_folders_and_names_the_files_it_skips(tmp_path, caplog):
    """fastmaml adapt --predict: images in a symlinked sub-folder, and files of other extensions, were
    left out without a word."""
    from fastmaml.experiments.adapt_images import _images_to_predict

    predict = tmp_path / "predict"
    (predict / "cat").mkdir(parents=True)
    (tmp_path / "dogs").mkdir()
    for path in (predict / "cat" / "a.png", tmp_path / "dogs" / "b.png"):
        Image.new("RGB", (4, 4)).save(path)
    (predict / "dog").symlink_to(tmp_path / "dogs", target_is_directory=True)
    (predict / "cat" / "c.heic").write_bytes(b"x")
    (predict / "cat" / "Thumbs.db").write_bytes(b"x")
    (predict / ".notes.txt").write_text("hidden")
    with caplog.at_level("WARNING"):
        found = _images_to_predict(predict)
    assert [p.relative_to(predict).as_posix() for p in found] == ["cat/a.png", "dog/b.png"]
    assert "1 file(s) in --predict" in caplog.text and "cat/c.heic" in caplog.text
    assert "Thumbs.db" not in caplog.text and "notes" not in caplog.text
