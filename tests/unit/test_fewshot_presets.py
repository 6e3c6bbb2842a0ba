"""Few-shot image presets: the paper's settings, the original code's loss scale, data roots, splits, errors."""

import csv
import dataclasses
import io
import os
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fastmaml.engine.experiment import get_preset, make_maml
from fastmaml.errors import ConfigError, DataError
from fastmaml.experiments import fewshot
from fastmaml.models.conv import ConvNet, NoConvMLP


def preset_config(name, **kwargs):
    return get_preset(name).make_config(**kwargs)


# --------------------------------------------------------------------------------- the paper's settings
@pytest.mark.parametrize(
    "name, ways, shots, meta_batch, alpha, steps, network",
    [
        ("omniglot", 5, 1, 32, 0.4, 1, "conv"),
        ("omniglot", 5, 5, 32, 0.4, 1, "conv"),
        ("omniglot", 20, 1, 16, 0.1, 5, "conv"),
        ("omniglot", 20, 5, 16, 0.1, 5, "conv"),
        ("omniglot-noconv", 5, 1, 32, 0.4, 1, "mlp"),
        ("omniglot-noconv", 5, 5, 32, 0.4, 1, "mlp"),
    ],
)
def test_omniglot_presets_follow_the_paper(name, ways, shots, meta_batch, alpha, steps, network):
    c = preset_config(name, ways=ways, shots=shots)
    assert (c.dataset, c.network, c.ways, c.shots) == ("omniglot", network, ways, shots)
    assert (c.meta_batch_size, c.inner_lr, c.inner_steps) == (meta_batch, alpha, steps)
    assert c.queries == shots and c.eval_queries == 0  # K query images per class, train and test (original)
    assert (c.image_size, c.channels, c.rotations, c.filters, c.max_pool) == (28, 1, True, 64, False)
    assert (c.outer_lr, c.iterations, c.eval_steps, c.grad_clip) == (0.001, 60_000, 10, 0.0)


@pytest.mark.parametrize("shots, meta_batch", [(1, 4), (5, 2)])
def test_miniimagenet_preset_follows_the_paper(shots, meta_batch):
    c = preset_config("miniimagenet", shots=shots)
    assert (c.dataset, c.ways, c.shots, c.meta_batch_size) == ("miniimagenet", 5, shots, meta_batch)
    assert (c.inner_lr, c.inner_steps, c.queries, c.eval_queries, c.grad_clip) == (0.01, 5, 15, shots, 10.0)
    assert (c.image_size, c.channels, c.filters, c.max_pool, c.rotations) == (84, 3, 32, True, False)
    assert (c.outer_lr, c.iterations, c.eval_steps) == (0.001, 60_000, 10)


def test_image_presets_use_the_per_task_loop_with_a_worker_per_core_on_the_cpu():
    """Measured on the CPU: the loop with tasks split over threads beats vmap, except on 10-image
    tasks (Omniglot 5-way 1-shot), where vmap in the threads wins (benchmarks/results/fewshot_cpu.md)."""
    from fastmaml.engine.experiment import auto_workers

    for ways, shots in ((20, 1), (5, 5)):
        config = preset_config("omniglot", ways=ways, shots=shots)
        assert config.strategy == "auto" and config.threads == 1 and config.workers == 0
    assert preset_config("omniglot", ways=5, shots=1).strategy == "vmap"
    assert preset_config("omniglot", ways=5, shots=1, queries=15).strategy == "auto"
    assert preset_config("omniglot", ways=5, shots=1, strategy="loop").strategy == "loop"
    assert preset_config("omniglot", strategy="vmap").strategy == "vmap"
    assert preset_config("miniimagenet").strategy == "auto"
    cores = len(os.sched_getaffinity(0))
    assert auto_workers(1) == cores and auto_workers(0) == 1
    assert auto_workers(2) == max(1, cores // 2)


def test_auto_workers_share_the_cores_among_torchrun_processes(monkeypatch):
    from fastmaml.engine.experiment import auto_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert auto_workers(1) == 4 and auto_workers(2) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert auto_workers(1) == 1


def test_user_changes_win_and_root_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = preset_config("omniglot", ways=20, shots=1, inner_steps=2, first_order=True, root="data/omniglot")
    assert (c.inner_steps, c.first_order, c.meta_batch_size) == (2, True, 16)
    assert c.root == str(tmp_path / "data" / "omniglot")
    images = preset_config("images", shots=5)
    assert (images.dataset, images.meta_batch_size, images.eval_queries) == ("folder", 2, 0)
    with pytest.raises(ConfigError, match="unexpected keyword argument 'bogus'"):
        preset_config("omniglot", bogus=1)


def test_models_match_the_presets():
    c = preset_config("omniglot", ways=20)
    model = fewshot.make_model(c)
    assert isinstance(model, ConvNet) and model(torch.rand(3, 1, 28, 28)).shape == (3, 20)
    assert isinstance(fewshot.make_model(preset_config("omniglot-noconv")), NoConvMLP)
    mini = fewshot.make_model(preset_config("miniimagenet"))
    assert mini.max_pool and mini.head.in_features == 32 * 5 * 5


# --------------------------------------------------------------------------------- loss scale
def test_loss_is_the_originals_sum_over_images_divided_by_shots():
    """xent = softmax cross-entropy per image / K, summed (tf.gradients of a vector) = N x the mean."""
    torch.manual_seed(0)
    ways, shots = 5, 3
    logits = torch.randn(ways * shots, ways, requires_grad=True)
    labels = torch.arange(ways).repeat_interleave(shots)
    loss = fewshot.xent_per_shot(shots)(logits, labels)
    per_image = -torch.log_softmax(logits, -1)[torch.arange(ways * shots), labels]
    assert torch.allclose(loss, (per_image / shots).sum())
    assert torch.allclose(loss, ways * F.cross_entropy(logits, labels))
    (grad,) = torch.autograd.grad(loss, logits)
    (mean_grad,) = torch.autograd.grad(F.cross_entropy(logits, labels), logits)
    assert torch.allclose(grad, ways * mean_grad)  # so α = 0.4 here is α = 2.0 with a mean loss


def test_accuracy_metric():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 1.0], [0.0, 1.0]])
    assert fewshot.accuracy(logits, torch.tensor([0, 1, 1, 0])).item() == 0.5


# --------------------------------------------------------------------------------- data roots and errors
def test_root_defaults_to_the_data_env_var(monkeypatch, tmp_path):
    monkeypatch.delenv(fewshot.DATA_ENV, raising=False)
    with pytest.raises(ConfigError, match=r"no data folder for omniglot: pass --root DIR .*set FASTMAML_DATA"):
        fewshot.data_root(preset_config("omniglot"))
    with pytest.raises(ConfigError, match=r"no data folder for folder: pass --root DIR \(or --set root=DIR\)$"):
        fewshot.data_root(preset_config("images"))
    monkeypatch.setenv(fewshot.DATA_ENV, str(tmp_path))
    assert fewshot.data_root(preset_config("miniimagenet")) == tmp_path / "miniimagenet"
    assert fewshot.data_root(preset_config("omniglot", root="/x/y")) == Path("/x/y")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"dataset": "mnist"}, "dataset must be one of omniglot, miniimagenet, folder"),
        ({"network": "resnet"}, "network must be one of conv, mlp"),
        ({"ways": 1}, "ways must be >= 2"),
        ({"shots": 0}, "shots must be >= 1"),
        ({"eval_queries": -1}, "eval_queries must be >= 0"),
        ({"channels": 3}, "omniglot images have 1 channel"),
        ({"splits": (0.5, 0.5, 0.5)}, "splits must be three class fractions"),
        ({"val_from_train": 4}, "val_from_train applies to the miniimagenet dataset only"),
        ({"splits": (0.5, 0.25, 0.25)}, "splits applies to the images preset"),  # was saved and ignored
    ],
)
def test_bad_settings_are_clear_errors_before_any_data_is_read(changes, message):
    config = preset_config("omniglot", root="/does/not/matter", **changes)
    with pytest.raises(ConfigError, match=message):
        config.validate()


def test_missing_omniglot_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="Omniglot not found"):
        preset_config("omniglot", root=str(tmp_path)).validate()


# --------------------------------------------------------------------------------- a class-per-folder tree
def write_tree(root: Path, classes: int = 20, per_class: int = 4, size: int = 16) -> Path:
    for c in range(classes):
        (root / f"c{c:02d}").mkdir(parents=True)
        for i in range(per_class):
            Image.new("L", (size, size), 10 * c + i).save(root / f"c{c:02d}" / f"{i}.png")
    return root


@pytest.fixture
def tree_config(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTMAML_CACHE", str(tmp_path / "cache"))
    root = write_tree(tmp_path / "tree")
    return preset_config("images", ways=3, shots=1, root=str(root), queries=2, image_size=16, channels=1)


def test_folder_splits_are_disjoint_and_tasks_have_the_right_shapes(tree_config):
    tree_config.validate()
    names = {s: set(fewshot.load_split(tree_config, s).class_names) for s in fewshot.SPLITS}
    assert [len(names[s]) for s in fewshot.SPLITS] == [13, 3, 4]
    assert not (names["train"] & names["val"] or names["train"] & names["test"] or names["val"] & names["test"])
    experiment = fewshot.build(tree_config)
    assert list(experiment.metrics) == ["accuracy", "loss"] and experiment.higher_is_better
    batch = experiment.sample(torch.Generator().manual_seed(0), "train", 4)
    assert batch.support_x.shape == (4, 3, 1, 16, 16) and batch.query_x.shape == (4, 6, 1, 16, 16)
    assert batch.query_y.tolist()[0] == [0, 0, 1, 1, 2, 2]
    maml = make_maml(experiment)
    loss = maml.meta_loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    again = experiment.sample(torch.Generator().manual_seed(0), "train", 4)
    assert torch.equal(again.support_x, batch.support_x)


def test_eval_queries_default_to_queries(tree_config):
    experiment = fewshot.build(tree_config)
    assert experiment.sample(torch.Generator(), "test", 2).query_x.shape[1] == 3 * 2
    experiment = fewshot.build(dataclasses.replace(tree_config, eval_queries=1))
    assert experiment.sample(torch.Generator(), "val", 2).query_x.shape[1] == 3 * 1
    assert experiment.sample(torch.Generator(), "train", 2).query_x.shape[1] == 3 * 2


def test_too_many_ways_or_images_fail_before_training(tree_config):
    with pytest.raises(ConfigError, match=r"folder val split: ways=4 but only 3 classes are available"):
        dataclasses.replace(tree_config, ways=4).validate()
    dataclasses.replace(tree_config, ways=4, val_every=0).validate()  # no validation: the val split is not needed
    with pytest.raises(ConfigError, match=r"folder train split: shots \+ queries = 1 \+ 5 but class"):
        dataclasses.replace(tree_config, queries=5).validate()


# --------------------------------------------------------------------------------- mini-ImageNet without val
def write_miniimagenet(root: Path, classes: int = 6, per_class: int = 4) -> Path:
    root.mkdir(parents=True)
    names = {f"n{c:02d}": [f"n{c:02d}{i:04d}.jpg" for i in range(per_class)] for c in range(classes)}
    with open(root / "train.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "label"])
        writer.writerows((name, label) for label, files in names.items() for name in files)
    with zipfile.ZipFile(root / "train.zip", "w") as z:
        for c, files in enumerate(names.values()):
            for i, name in enumerate(files):
                data = io.BytesIO()
                Image.new("RGB", (84, 84), (40 * c, 50 * i, 100)).save(data, "JPEG")
                z.writestr(f"images/{name}", data.getvalue())
    return root


def test_miniimagenet_without_val_images_holds_out_training_classes(tmp_path, monkeypatch):

    monkeypatch.setenv("FASTMAML_CACHE", str(tmp_path / "cache"))
    root = write_miniimagenet(tmp_path / "mini")
    config = preset_config("miniimagenet", ways=2, root=str(root), queries=2, eval_queries=1)
    with pytest.raises(DataError, match="validation split not found .* --set val_from_train=16"):
        config.validate()
    dataclasses.replace(config, val_every=0).validate()
    held = dataclasses.replace(config, val_from_train=2)
    held.validate()
    train, val = (set(fewshot.load_split(held, s).class_names) for s in ("train", "val"))
    assert len(train) == 4 and len(val) == 2 and not train & val
    batch = fewshot.build(held).sample(torch.Generator(), "val", 1)
    assert batch.support_x.shape == (1, 2, 3, 84, 84) and batch.query_x.shape == (1, 2, 3, 84, 84)


def test_image_too_small_for_the_network_fails_in_validate():
    config = preset_config("images", root="/does/not/matter", image_size=12)
    with pytest.raises(ConfigError, match="image_size=12 is too small for 4 max-pooled blocks"):
        config.validate()
