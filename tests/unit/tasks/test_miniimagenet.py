"""mini-ImageNet: Ravi & Larochelle split files, images from a zip or a folder, the 84x84 cache, errors."""

import csv
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastmaml.errors import DataError
from fastmaml.tasks import miniimagenet
from fastmaml.tasks.miniimagenet import load_miniimagenet, prepare_miniimagenet, read_split_csv

REAL_DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "miniimagenet"
SPLIT_CLASSES = {"train": ["n01", "n02", "n03"], "val": ["n04", "n05"], "test": ["n06", "n07"]}
PER_CLASS = 4


def jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (84, 84)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "JPEG", quality=95)
    return out.getvalue()


def colour(label: str, i: int) -> tuple[int, int, int]:
    return (int(label[1:]) * 30, i * 50, 200)


def write_csv(path: Path, classes: dict[str, list[str]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "label"])
        writer.writerows((name, label) for label, names in classes.items() for name in names)


@pytest.fixture
def root(tmp_path):
    """train in train.zip (images/<filename>), test in an images/ folder, val absent; test images are 100x90."""
    root = tmp_path / "mini"
    root.mkdir()
    for split, labels in SPLIT_CLASSES.items():
        classes = {label: [f"{label}{i:08d}.jpg" for i in range(PER_CLASS)] for label in labels}
        write_csv(root / f"{split}.csv", dict(reversed(classes.items())))  # labels sorted on reading
        if split == "train":
            with zipfile.ZipFile(root / "train.zip", "w", zipfile.ZIP_STORED) as z:
                for label, names in classes.items():
                    for i, name in enumerate(names):
                        z.writestr(f"images/{name}", jpeg(colour(label, i)))
        if split == "test":
            (root / "images").mkdir()
            for label, names in classes.items():
                for i, name in enumerate(names):
                    (root / "images" / name).write_bytes(jpeg(colour(label, i), (100, 90)))
    return root


def test_read_split_csv_groups_by_label(root):
    classes = read_split_csv(root / "train.csv")
    assert list(classes) == ["n01", "n02", "n03"]
    assert classes["n02"] == [f"n02{i:08d}.jpg" for i in range(PER_CLASS)]


def test_train_from_zip(root, tmp_path):
    data = load_miniimagenet(root, "train", cache_dir=tmp_path / "cache")
    assert data.class_names == ("n01", "n02", "n03") and data.class_sizes.tolist() == [PER_CLASS] * 3
    assert data.images.shape == (12, 3, 84, 84) and data.images.dtype == torch.uint8
    pixel = data.images[PER_CLASS + 2, :, 40, 40].int()  # class n02, image 2
    assert (pixel - torch.tensor(colour("n02", 2))).abs().max() <= 3  # JPEG is lossy
    batch = data.sample(torch.Generator().manual_seed(0), 2, 3, 1, 3)
    assert batch.support_x.shape == (2, 3, 3, 84, 84) and batch.query_x.shape == (2, 9, 3, 84, 84)


def test_test_from_folder_is_resized_to_84(root, tmp_path):
    data = load_miniimagenet(root, "test", cache_dir=tmp_path)
    assert data.images.shape == (8, 3, 84, 84)
    assert (data.images[0, :, 42, 42].int() - torch.tensor(colour("n06", 0))).abs().max() <= 3


def test_cache_is_written_once_and_reused(root, tmp_path, monkeypatch):
    path = prepare_miniimagenet(root, "train", cache_dir=tmp_path)
    assert path == tmp_path / "miniimagenet_train_84.npy" and path.is_file()
    monkeypatch.setattr(miniimagenet, "decode_image", lambda *a, **k: pytest.fail("decoded again"))
    assert load_miniimagenet(root, "train", cache_dir=tmp_path).images.shape == (12, 3, 84, 84)


def test_missing_images_name_what_to_put_where(root, tmp_path):
    with pytest.raises(DataError, match=r"8 of the 8 images listed in .*val\.csv .* val images in .*val\.zip"):
        load_miniimagenet(root, "val", cache_dir=tmp_path)  # only the generic images/ folder, which lacks them
    (root / "images").rename(root / "test_images")
    with pytest.raises(DataError, match=r"test images not found: none of .*test\.zip, .*images, .*images\.zip.* "
                                        r"scored on its validation classes: fastmaml eval RUN --split val"):
        load_miniimagenet(root, "test", cache_dir=tmp_path)
    with pytest.raises(DataError, match=r"val images not found: .* validate on held-out training classes: --set "
                                        r"val_from_train=16"):  # as in ../shared, which has train.zip alone
        load_miniimagenet(root, "val", cache_dir=tmp_path)
    (root / "test_images").rename(root / "images")
    (root / "images" / "n0700000003.jpg").unlink()
    with pytest.raises(DataError, match=r"1 of the 8 images listed in .*test\.csv .*n0700000003\.jpg"):
        load_miniimagenet(root, "test", cache_dir=tmp_path)
    (root / "train.csv").unlink()
    with pytest.raises(DataError, match=r"split file .*train\.csv not found"):
        load_miniimagenet(root, "train", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        load_miniimagenet(root, "validation", cache_dir=tmp_path)


def test_bad_csv_and_corrupt_image_are_clear_errors(root, tmp_path):
    (root / "val.csv").write_text("file,class\na.jpg,n04\n")
    with pytest.raises(ValueError, match="must start with the header 'filename,label'"):
        read_split_csv(root / "val.csv")
    (root / "val.csv").write_text("filename,label\na.jpg\n")
    with pytest.raises(ValueError, match="line 2: expected 'filename,label'"):
        read_split_csv(root / "val.csv")
    (root / "images" / "n0600000001.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"cannot read image .*n0600000001\.jpg"):
        load_miniimagenet(root, "test", cache_dir=tmp_path)
    assert not list(tmp_path.glob("*.json"))  # no index for a half-built cache


def test_real_split_files():
    if not (REAL_DATA / "train.csv").is_file():
        pytest.skip(f"real mini-ImageNet not found at {REAL_DATA.resolve()} (the shared/ folder beside the checkout)")
    splits = {s: read_split_csv(REAL_DATA / f"{s}.csv") for s in miniimagenet.SPLITS}
    assert {s: len(c) for s, c in splits.items()} == {"train": 64, "val": 16, "test": 20}
    assert all(len(names) == 600 for classes in splits.values() for names in classes.values())
    assert not set(splits["train"]) & set(splits["val"]) and not set(splits["train"]) & set(splits["test"])
    assert not set(splits["val"]) & set(splits["test"])


def test_real_train_images_decode(tmp_path):
    """A few real images (decoding all 38,400 takes about 14 s: see benchmarks/results/sampler_cpu.md)."""
    if not (REAL_DATA / "train.zip").is_file():
        pytest.skip(f"real mini-ImageNet images not found at {REAL_DATA.resolve()}")
    classes = read_split_csv(REAL_DATA / "train.csv")
    root = tmp_path / "mini"
    root.mkdir()
    write_csv(root / "train.csv", {label: classes[label][:3] for label in list(classes)[:2]})
    (root / "train.zip").symlink_to(REAL_DATA / "train.zip")
    data = load_miniimagenet(root, "train", cache_dir=tmp_path / "cache")
    assert data.images.shape == (6, 3, 84, 84)
    assert 20 < data.images.float().mean() < 235 and data.images.float().std() > 10
    assert len({tuple(np.asarray(i).ravel()[:500]) for i in data.images}) == 6  # six different photos


def test_an_image_listed_twice_is_refused_naming_both_lines(root, tmp_path):
    """One image listed twice would be loaded twice: a task could hold it as a support and a query image."""
    first = "n0100000000.jpg"
    (root / "train.csv").write_text(f"filename,label\n{first},n01\nn0100000001.jpg,n01\n\n{first},n02\n")
    with pytest.raises(DataError, match=rf"lists {first} twice, on lines 2 and 5; .* delete one of those lines"):
        read_split_csv(root / "train.csv")
    (root / "train.csv").write_text(f"filename,label\n{first},n01\n{first} , n01\n")  # same class, spaces
    with pytest.raises(DataError, match=rf"lists {first} twice, on lines 2 and 3"):
        load_miniimagenet(root, "train", cache_dir=tmp_path)


def test_split_file_encoding_bom_and_line_numbers(root):
    """A byte-order mark (as spreadsheets save UTF-8) is read; another encoding is one clear error; line
    numbers are the file's own, blank lines counted."""
    (root / "val.csv").write_bytes("\ufefffilename,label\r\na.jpg,n04\r\n".encode())
    assert read_split_csv(root / "val.csv") == {"n04": ["a.jpg"]}
    (root / "val.csv").write_bytes("filename,label\nd\xe9j\xe0.jpg,n04\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"cannot read .*val\.csv as a UTF-8 CSV file .*save it as UTF-8"):
        read_split_csv(root / "val.csv")
    (root / "val.csv").write_text("filename,label\n\na.jpg,n04\n\n\nb.jpg\n")
    with pytest.raises(DataError, match=r"val\.csv line 6: expected 'filename,label', got 'b\.jpg'"):
        read_split_csv(root / "val.csv")
