"""FewShotImages: task shapes and labels, seeding, rotations as classes, clear errors, the cache."""

import os
import zipfile

import numpy as np
import pytest
import torch

from fastmaml.errors import ConfigError, DataError
from fastmaml.tasks.images import FewShotImages, cached_images, read_cache


def labelled_images(classes: int, per_class: int, size: int = 6) -> FewShotImages:
    """Every pixel of image j of class c is c * per_class + j, so a pixel tells which image it came from."""
    ids = torch.arange(classes * per_class, dtype=torch.uint8)
    images = ids.view(-1, 1, 1, 1).expand(-1, 1, size, size).clone()
    return FewShotImages(images, [per_class] * classes, [f"c{i}" for i in range(classes)])


def image_ids(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 0, 0, 0] * 255).round().long()


def test_shapes_labels_and_range():
    data = labelled_images(10, 7)
    batch = data.sample(torch.Generator().manual_seed(0), meta_batch_size=3, ways=4, shots=2, queries=5)
    assert batch.support_x.shape == (3, 8, 1, 6, 6) and batch.query_x.shape == (3, 20, 1, 6, 6)
    assert batch.support_x.dtype == torch.float32 and batch.support_y.dtype == torch.int64
    assert batch.support_x.min() >= 0 and batch.support_x.max() <= 1
    assert batch.support_y.tolist() == [[0, 0, 1, 1, 2, 2, 3, 3]] * 3
    assert batch.query_y.tolist() == [sorted(list(range(4)) * 5)] * 3
    batch.validate()


def test_images_match_labels_and_are_distinct():
    data = labelled_images(10, 7)
    batch = data.sample(torch.Generator().manual_seed(1), meta_batch_size=16, ways=5, shots=3, queries=4)
    support, query = image_ids(batch.support_x), image_ids(batch.query_x)
    for t in range(16):
        ids = torch.cat([support[t], query[t]])
        labels = torch.cat([batch.support_y[t], batch.query_y[t]])
        assert len(set(ids.tolist())) == len(ids)  # no image twice in a task
        classes = ids // 7
        for label in range(5):  # one class per label, a different class for each label
            assert len(set(classes[labels == label].tolist())) == 1
        assert len(set(classes.tolist())) == 5


def test_same_seed_same_tasks_and_different_seed_different_tasks():
    data = labelled_images(20, 10)
    a, b, c = (data.sample(torch.Generator().manual_seed(s), 4, 5, 1, 3) for s in (7, 7, 8))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a.support_x, c.support_x)


def test_class_to_label_assignment_is_random():
    data = labelled_images(5, 4)  # 5-way on 5 classes: only the label order varies
    batch = data.sample(torch.Generator().manual_seed(0), 32, 5, 1, 1)
    first_class = image_ids(batch.support_x)[:, 0] // 4
    assert len(set(first_class.tolist())) > 1


def test_rotations_are_classes_of_their_own():
    image = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4) * 10  # no symmetry
    data = FewShotImages(image.expand(3, -1, -1, -1).clone(), [3], ["a"], rotations=(0, 1, 2, 3))
    assert data.num_classes == 4
    batch = data.sample(torch.Generator().manual_seed(0), 8, ways=4, shots=1, queries=2)
    x = torch.cat([batch.support_x, batch.query_x], 1)
    y = torch.cat([batch.support_y, batch.query_y], 1)
    expected = [torch.rot90(image[0].float() / 255, k, dims=(-2, -1)) for k in range(4)]
    for t in range(8):
        turns = [next(k for k in range(4) if torch.equal(x[t, i], expected[k])) for i in range(len(x[t]))]
        for label in range(4):  # all images of a class share one rotation; the 4 classes use all 4
            assert len({turns[i] for i in range(len(turns)) if y[t, i] == label}) == 1
        assert set(turns) == {0, 1, 2, 3}


def test_draw_classes_names_the_classes_sample_draws_from_the_same_generator_state():
    """What the meta-test diagnostics rely on: from a copy of the generator, draw_classes predicts
    each task's character (the image ids) and turn (the rotation seen) label by label."""
    ids = torch.arange(5 * 3, dtype=torch.uint8)
    images = (ids.view(-1, 1, 1, 1) * 16).expand(-1, 1, 4, 4).clone()
    images[:, :, 0, 0] += 1  # one marked corner: the turn is where it went
    data = FewShotImages(images, [3] * 5, [f"c{i}" for i in range(5)], rotations=(0, 1, 2, 3))
    generator = torch.Generator().manual_seed(3)
    copy = torch.Generator()
    copy.set_state(generator.get_state())
    turn, base = data.draw_classes(copy, 6, ways=4)
    batch = data.sample(generator, 6, ways=4, shots=1, queries=1)
    x = batch.support_x  # (6, 4, 1, 4, 4), one image per label in label order
    pixels = (x * 255).round().long()
    assert torch.equal(pixels.amin((-3, -2, -1)) // 16 // 3, base)  # the image's class is the character drawn
    corners = [(0, 0), (3, 0), (3, 3), (0, 3)]  # where rot90 by k turns moves the top-left corner
    seen = torch.tensor([[next(k for k, (r, c) in enumerate(corners) if pixels[t, i, 0, r, c] % 16 == 1)
                          for i in range(4)] for t in range(6)])
    assert torch.equal(seen, turn)
    assert any(len(set(b.tolist())) < 4 for b in base)  # 5 characters x 4 turns: some task repeats one


def test_subset_and_with_rotations():
    data = labelled_images(6, 3)
    part = data.subset(["c4", "c1"])
    assert part.class_names == ("c4", "c1") and part.class_sizes.tolist() == [3, 3]
    assert (part.images[:3, 0, 0, 0] // 3).tolist() == [4, 4, 4]
    assert part.with_rotations((0, 2)).num_classes == 4
    moved = data.to("cpu").sample(torch.Generator().manual_seed(0), 2, 3, 1, 1)
    assert torch.equal(moved.query_x, data.sample(torch.Generator().manual_seed(0), 2, 3, 1, 1).query_x)
    with pytest.raises(ValueError, match="unknown classes"):
        data.subset(["nope"])


def test_unequal_class_sizes_never_index_past_a_class():
    sizes = [2, 9, 3]
    images = torch.cat([torch.full((n, 1, 2, 2), c, dtype=torch.uint8) for c, n in enumerate(sizes)])
    data = FewShotImages(images, sizes)
    batch = data.sample(torch.Generator().manual_seed(0), 64, 3, 1, 1)
    ids = image_ids(torch.cat([batch.support_x, batch.query_x], 1))
    for t in range(64):  # labels map to distinct classes
        assert sorted(ids[t, :3].tolist()) == [0, 1, 2]


def test_errors_say_what_to_change():
    data = labelled_images(4, 5)
    with pytest.raises(ConfigError, match=r"ways=5 but only 4 classes are available; use ways <= 4"):
        data.sample(torch.Generator(), 2, 5, 1, 1)
    with pytest.raises(ConfigError, match=r"ways=3 but only 1 class is available; a split with more classes$"):
        labelled_images(1, 5).sample(torch.Generator(), 2, 3, 1, 1)  # not "use ways <= 1": a task needs 2
    with pytest.raises(ConfigError, match=r"shots \+ queries = 2 \+ 4 but class 'c0' has only 5 images"):
        data.sample(torch.Generator(), 2, 2, 2, 4)
    with pytest.raises(ValueError, match="shots must be a positive integer"):
        data.sample(torch.Generator(), 2, 2, 0, 4)
    with pytest.raises(ValueError, match=r"\(1 x 4 rotations\)"):
        FewShotImages(torch.zeros(2, 1, 3, 3, dtype=torch.uint8), [2], rotations=(0, 1, 2, 3)).sample(
            torch.Generator(), 1, 5, 1, 1
        )
    with pytest.raises(DataError, match="uint8"):
        FewShotImages(torch.zeros(2, 1, 3, 3), [2])
    with pytest.raises(ValueError, match="sum to the 2 images"):
        FewShotImages(torch.zeros(2, 1, 3, 3, dtype=torch.uint8), [3])
    with pytest.raises(ValueError, match="square"):
        FewShotImages(torch.zeros(2, 1, 3, 4, dtype=torch.uint8), [2], rotations=(0, 1))


def test_cache_round_trip_and_rebuild_when_stale(tmp_path):
    calls = []

    def images():
        calls.append(1)
        return (np.full((1, 2, 2), i, np.uint8) for i in range(5))

    path = tmp_path / "c" / "toy"
    args = (["a", "b"], [2, 3], (1, 2, 2), images)
    first = cached_images(path, {"k": 1}, *args)
    again = cached_images(path, {"k": 1}, *args)
    assert len(calls) == 1 and torch.equal(first.images, again.images)
    assert first.images[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4] and first.class_names == ("a", "b")
    cached_images(path, {"k": 2}, *args)  # other settings: rebuilt
    assert len(calls) == 2
    path.with_suffix(".npy").write_bytes(b"garbage")  # corrupt: rebuilt
    assert read_cache(path, {"version": 1, "k": 2}) is None
    cached_images(path, {"k": 2}, *args)
    assert len(calls) == 3
    assert sorted(p.name for p in path.parent.iterdir()) == ["toy.json", "toy.npy"]  # no temporaries left


def test_interrupted_build_leaves_no_index(tmp_path):
    def broken():
        yield np.zeros((1, 2, 2), np.uint8)
        raise ValueError("cannot read image x.png")

    with pytest.raises(ValueError, match="x.png"):
        cached_images(tmp_path / "toy", {}, ["a"], [2], (1, 2, 2), broken)
    assert list(tmp_path.iterdir()) == []


def test_a_cache_folder_that_cannot_be_made_is_a_data_error(tmp_path):
    (tmp_path / "afile").write_text("")  # a file where the cache's folder should go; before: FileExistsError
    with pytest.raises(DataError, match=r"cannot write the image cache .*afile.*choose a writable cache folder"):
        cached_images(tmp_path / "afile" / "sub" / "toy", {}, ["a"], [1], (1, 2, 2),
                      lambda: iter([np.zeros((1, 2, 2), np.uint8)]))


def test_images_that_cannot_fit_in_memory_or_on_the_cache_disk_are_refused_before_decoding(tmp_path, monkeypatch):
    # image_size=100000 was killed by the kernel at 21 GB and left a 1.8 TB sparse cache file behind
    from collections import namedtuple

    from fastmaml.tasks import images as images_module
    from fastmaml.tasks.images import check_fits

    with pytest.raises(DataError, match=r"60 images of 3x100000x100000 pixels need 1676.4 GiB, more than"):
        check_fits(60, (3, 100_000, 100_000), None)
    check_fits(60, (3, 28, 28), tmp_path / "cache.npy")  # 141 kB: fits
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(images_module.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(DataError, match="would need .* GiB and its disk has 0.0 GiB free; lower image_size or set"):
        check_fits(60, (3, 28, 28), tmp_path / "cache.npy")


# ------------------------------------------------------------------------------ reading image files
def test_file_stamps_change_when_a_file_changes_at_the_same_size(tmp_path):
    """An edited BMP keeps its byte size: a fingerprint of names and sizes kept the stale cache."""
    from PIL import Image

    from fastmaml.tasks.images import FileSource, fingerprint

    (tmp_path / "a").mkdir()
    image = tmp_path / "a" / "x.bmp"
    Image.new("RGB", (4, 4), (200, 10, 10)).save(image)
    with FileSource(tmp_path) as source:
        before = fingerprint(source.stamps())
    size, mtime = image.stat().st_size, image.stat().st_mtime_ns
    Image.new("RGB", (4, 4), (0, 0, 0)).save(image)
    os.utime(image, ns=(mtime + 2 * 10**9, mtime + 2 * 10**9))  # a later edit (coarse clocks: 2 s later)
    assert image.stat().st_size == size
    with FileSource(tmp_path) as source:
        assert fingerprint(source.stamps()) != before


def test_zip_stamps_are_stable_and_follow_member_content(tmp_path):
    """A zip member has no mtime of its own: its CRC-32 tells a changed member of the same size, and an
    unchanged zip keeps its fingerprint (no rebuild on every run)."""
    from fastmaml.tasks.images import FileSource, fingerprint

    def zipped(name: str, data: bytes) -> str:
        with zipfile.ZipFile(tmp_path / name, "w") as archive:
            archive.writestr("images/x.bmp", data)
        with FileSource(tmp_path / name) as source:  # as omniglot.py and miniimagenet.py key their caches
            return fingerprint(source.stamps())

    same = zipped("a.zip", b"0123456789")
    assert zipped("b.zip", b"0123456789") == same  # rewritten (a new zip timestamp): same content, same key
    assert zipped("c.zip", b"9876543210") != same  # same name and size, other bytes


def test_symlinked_folders_are_followed_and_loops_are_not(tmp_path, caplog):
    """rglob does not follow folder symlinks (Python < 3.13): a linked class folder 'held no images'."""
    from fastmaml.tasks import images

    (tmp_path / "elsewhere" / "cat").mkdir(parents=True)
    (tmp_path / "elsewhere" / "cat" / "c.png").write_bytes(b"x")
    root = tmp_path / "root"
    (root / "dog").mkdir(parents=True)
    (root / "dog" / "d.png").write_bytes(b"y")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "h.png").write_bytes(b"z")
    (root / "cat").symlink_to(tmp_path / "elsewhere" / "cat", target_is_directory=True)
    (root / "dog" / "loop").symlink_to(root, target_is_directory=True)
    with caplog.at_level("WARNING"), images.FileSource(root) as source:
        assert sorted(source.stamps()) == ["cat/c.png", "dog/d.png"]
    assert "dog/loop links to" in caplog.text and "not followed (a loop)" in caplog.text
    assert [p.relative_to(root).as_posix() for p in images.walk_files(root)] == ["cat/c.png", "dog/d.png"]


def test_a_damaged_zip_member_is_a_data_error_naming_the_zip_and_the_member(tmp_path):
    """A bad CRC or a broken deflate stream came out as a zipfile/zlib traceback."""
    from fastmaml.tasks.images import FileSource

    for compression in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        path = tmp_path / f"images{compression}.zip"
        payload = bytes(range(256)) * 8
        with zipfile.ZipFile(path, "w", compression) as archive:
            archive.writestr("images/x.jpg", payload)
        raw = bytearray(path.read_bytes())
        start = raw.index(b"images/x.jpg") + len("images/x.jpg")  # the member's data follows its local header
        for i in range(start + 10, start + 60):
            raw[i] ^= 0x5A
        path.write_bytes(bytes(raw))
        with FileSource(path) as source, pytest.raises(
            DataError, match=rf"{path.name} is damaged: its member images/x.jpg cannot be read .*download the zip again"
        ):
            source.read("images/x.jpg")


def test_16_bit_and_float_images_are_rescaled_not_clipped_to_white():
    """PIL's convert clips 16-bit ("I;16"), "I" and "F" images to 0..255: a 0..65535 gradient came out white."""
    import io

    from PIL import Image

    from fastmaml.tasks.images import decode_image

    ramp = np.arange(256).reshape(16, 16)
    sixteen = (ramp * 257).astype(np.uint16)  # 0..65535
    for fmt in ("PNG", "TIFF", "PPM"):  # PIL opens these as "I;16", "I;16" and "I"
        buffer = io.BytesIO()
        Image.fromarray(sixteen).save(buffer, fmt)
        for mode, channels in (("L", 1), ("RGB", 3)):
            decoded = decode_image(buffer.getvalue(), f"ramp.{fmt}", 16, mode, resample=Image.Resampling.NEAREST)
            assert decoded.shape == (channels, 16, 16) and np.array_equal(decoded[0], ramp), (fmt, mode)
    for values in (ramp / 255, ramp * 257):  # "F" (taken as 0..1) and "I" (taken as 0..65535), as TIFF
        buffer = io.BytesIO()
        Image.fromarray(values.astype(np.float32 if values.max() <= 1 else np.int32)).save(buffer, "TIFF")
        assert Image.open(io.BytesIO(buffer.getvalue())).mode in ("F", "I")
        decoded = decode_image(buffer.getvalue(), "ramp.tif", 16, "L", resample=Image.Resampling.NEAREST)
        assert np.array_equal(decoded[0], ramp)
