"""Few-shot image classification as in the paper (Sec. 5.2): Omniglot, MiniImagenet, any image folder.

Presets (settings from the paper and cbfinn/maml ``main.py``'s usage lines, checked in its source):

- ``omniglot`` -- 4 x [3x3 conv 64, batch norm, ReLU, stride 2], 28x28 ink-on-black images, every
  character rotated by 0/90/180/270 degrees is a class (the original drew distinct characters, then
  one random turn for each, so its tasks never hold one character twice; here about one 20-way
  meta-test task in three holds a character in two turns, and at 20,000 and 25,000 iterations of the
  20-way preset those tasks scored 90.1 ± 0.9% and 91.2 ± 0.8% against 90.6 ± 0.6% and 91.2 ± 0.7%
  for the rest: no difference measured, benchmarks/results/omniglot_turn_pairs.md). 5-way:
  meta-batch 32, α 0.4, 1 inner step; 20-way: meta-batch 16, α 0.1, 5 inner steps (``--ways``
  below 20 takes the 5-way settings). K query images per class, as the original
  (``DataGenerator(update_batch_size*2)``). Split as the original ``data_generator.py``: 1100
  characters meta-train, 100 validation, 423 meta-test (the paper counts the 1200 = 1100 + 100 as
  meta-training).
- ``omniglot-noconv`` -- the same tasks and settings with the MLP 256-128-64-64 (batch norm, ReLU).
- ``miniimagenet`` -- 4 x [3x3 conv 32, batch norm, ReLU, 2x2 max-pool], 84x84 RGB; meta-batch 4
  (1-shot) or 2 (5-shot, the paper; the code's usage line says 4), α 0.01, 5 inner steps,
  15 query images per class at meta-train and K at meta-test (the original's ``update_batch_size+15``
  and ``update_batch_size*2``), meta-gradient clipped at 10. Validation (and ``eval --split val``)
  takes K query images like the meta-test; the original validated with 15, from its training-time
  generator (``--set eval_queries=15`` does that, for validation and meta-test alike).
- ``images`` -- any ``root/<class>/<image>`` tree, classes split 64/16/20 % (``splits``, seeded by
  ``split_seed``) into meta-train/validation/meta-test; MiniImagenet's network and settings by
  default, ``image_size``, ``channels``, ``filters``, ``max_pool``, ``rotations`` configurable. A new
  run records each split's class folders in its config (``train_classes``, ``val_classes``,
  ``test_classes``); eval and resume reuse them, so a class folder added to the tree later joins no
  split (meta-training classes never become meta-test ones) and a removed one is an error.

All: Adam β = 0.001, 60,000 meta-iterations (``--metatrain_iterations=60000`` in every usage line
of the original), 10 inner steps at meta-test, validation every ``val_every`` iterations on the
held-out classes (the best checkpoint is kept), ``--first-order`` for FOMAML. Speed on the CPU
(benchmarks/results/fewshot_cpu.md): one torch thread (``threads=1``; two were 4-18x slower on a
shared 2-core machine) and ``workers`` = one per core (0, auto), which split the meta-batch over
threads: the per-task loop that ``auto`` picks for conv nets on the CPU beat vmap on every preset
but one; on Omniglot 5-way 1-shot's 10-image tasks vmap in the threads won (0.209 against 0.248 s),
so that preset uses vmap. The MLP uses vmap in the threads.

Loss scale and α. The original inner loss is ``softmax_cross_entropy_with_logits(...) /
update_batch_size`` left unreduced (utils.py ``xent``), and ``tf.gradients`` of a vector sums it:
the loss is the cross-entropy *summed* over the N·K support images divided by K, i.e. N times the
mean. Its meta-objective is the same per-image sum over the query images divided by K, averaged over
tasks (``reduce_sum(lossesb) / meta_batch_size``). We use exactly that loss, :func:`xent_per_shot`,
in the inner loop and for the meta-gradient, so the paper's α (0.4, 0.1, 0.01) mean the same step
sizes here. With PyTorch's mean-reduced ``F.cross_entropy`` the same steps would need α·N (2.0, 2.0,
0.05). The ``loss`` metric that evaluation reports is the ordinary mean cross-entropy per image.

Gradient clipping. The original clipped each element of the MiniImagenet meta-gradient to
[-10, 10] (``tf.clip_by_value``, maml.py); fastmaml clips the meta-gradient's global norm at
``grad_clip`` = 10 (the trainer's rule), on the same loss scale; ``grad_clip_mode=value`` clips
each element as the original. The rules differ (a norm clip rescales the whole gradient, a value
clip bends its direction); which one the runs need was not measured here.

Data. ``root`` is the dataset folder (``--root DIR``); empty means ``$FASTMAML_DATA/<dataset>``
(``omniglot`` or ``miniimagenet``). Each dataset is decoded once into a uint8 cache (``cache_dir``,
default ``$FASTMAML_CACHE`` or ``~/.cache/fastmaml``) and loaded once per process; with a CUDA
``device`` the images move to the GPU once and tasks are sampled there, from a GPU generator seeded
by the run's CPU stream, so runs stay reproducible and resumable. MiniImagenet's validation classes
come from ``val.csv`` and its images; where those are absent, ``val_from_train=16`` holds out 16 of
the 64 meta-training classes for validation instead (or ``val_every=0`` turns validation off).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastmaml.config import TrainConfig
from fastmaml.engine.distributed import cuda_or_cpu
from fastmaml.engine.experiment import Experiment, Preset, register
from fastmaml.errors import ConfigError, DataError
from fastmaml.models.conv import NORMS, ConvNet, NoConvMLP, norm_offsets
from fastmaml.tasks import (
    FewShotImages,
    default_cache_dir,
    load_image_folder,
    load_miniimagenet,
    load_omniglot,
    split_classes,
)
from fastmaml.tasks.folders import scan_class_folders

DATASETS = ("omniglot", "miniimagenet", "folder")
NETWORKS = ("conv", "mlp")
SPLITS = ("train", "val", "test")
DATA_ENV = "FASTMAML_DATA"
RECORDED = tuple(f"{split}_classes" for split in SPLITS)  # an image-folder run's split, recorded at its start
log = logging.getLogger(__name__)


@dataclass
class FewShotConfig(TrainConfig):
    """N-way K-shot image classification; the defaults are the paper's Omniglot 5-way 1-shot."""

    dataset: str = "omniglot"  # omniglot | miniimagenet | folder
    root: str = ""  # data folder; "" = $FASTMAML_DATA/<dataset>
    cache_dir: str = ""  # decoded-image cache; "" = $FASTMAML_CACHE or ~/.cache/fastmaml
    ways: int = 5
    shots: int = 1
    queries: int = 1  # query images per class at meta-train
    eval_queries: int = 0  # query images per class at validation and meta-test (0: as queries)
    image_size: int = 28
    channels: int = 1  # 1 grayscale, 3 RGB (folder datasets; fixed by omniglot and miniimagenet)
    rotations: bool = True  # each quarter turn of a class is a class of its own
    antialias: bool = True  # omniglot: LANCZOS on grayscale (False: the original's binary images)
    network: str = "conv"  # conv | mlp (the paper's non-convolutional network)
    filters: int = 64
    max_pool: bool = False  # conv: stride-1 conv + 2x2 max-pool (MiniImagenet) instead of stride 2
    # batch norm: affine (torch's, scale and offset adapted) | original (the original code's: no scale,
    # eps 1e-3, offsets meta-learned but not adapted; models/conv.py)
    norm: str = "affine"
    splits: tuple[float, float, float] = (0.64, 0.16, 0.2)  # folder: class fractions train/val/test
    split_seed: int = 0  # folder and val_from_train: which classes go where
    val_from_train: int = 0  # miniimagenet: hold out this many training classes for validation
    # folder: each split's class folders, recorded when a run starts (from splits and split_seed); eval
    # and resume reuse them, whatever class folders the tree holds by then (empty: not recorded, older runs)
    train_classes: tuple[str, ...] = ()
    val_classes: tuple[str, ...] = ()
    test_classes: tuple[str, ...] = ()
    inner_lr: float = 0.4
    meta_batch_size: int = 32
    iterations: int = 60_000
    val_every: int = 500
    val_tasks: int = 200
    # 1 thread measured faster than 2 for the conv meta-step on 2 shared cores
    # (benchmarks/results/fewshot_cpu.md); set threads=0 for torch's default on bigger machines
    threads: int = 1

    EVAL_KEYS: ClassVar[tuple[str, ...]] = TrainConfig.EVAL_KEYS + ("eval_queries", "root", "cache_dir")

    def execution_keys(self) -> tuple[str, ...]:
        """``fastmaml eval --set`` keys that only say where things are (``config.protocol_overrides``):
        the Omniglot and MiniImagenet loaders check what they read (Omniglot's alphabet and character
        counts, MiniImagenet's split files and image names), so another ``root`` holds the same data
        and a run meta-trained elsewhere (e.g. on a GPU machine) is meta-tested and its report saved.
        A folder data set's ``root`` is the data itself: changing it changes the protocol."""
        return ("root",) if self.dataset in ("omniglot", "miniimagenet") else ()

    def validate(self, data: bool = True) -> None:
        super().validate(data)
        for key, choices in (("dataset", DATASETS), ("network", NETWORKS), ("norm", NORMS)):
            if getattr(self, key) not in choices:
                raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {getattr(self, key)!r}")
        for key in ("ways", "shots", "queries", "image_size", "filters"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("eval_queries", "val_from_train"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.ways < 2:
            raise ConfigError(f"ways must be >= 2 for classification, got {self.ways}")
        fixed = {"omniglot": 1, "miniimagenet": 3}
        if self.dataset in fixed and self.channels != fixed[self.dataset]:
            raise ConfigError(f"{self.dataset} images have {fixed[self.dataset]} channel(s); leave channels at that")
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 (grayscale) or 3 (RGB), got {self.channels}")
        if len(self.splits) != 3 or any(f <= 0 for f in self.splits) or sum(self.splits) > 1 + 1e-9:
            raise ConfigError(
                "splits must be three class fractions train,val,test, each > 0, summing to at most 1; "
                f"got {self.splits}"
            )
        if self.val_from_train and self.dataset != "miniimagenet":
            raise ConfigError("val_from_train applies to the miniimagenet dataset only")
        if self.dataset != "folder" and tuple(self.splits) != type(self).splits:
            raise ConfigError(f"splits applies to the images preset (a tree of class folders); {self.dataset} has "
                              "its own fixed split (README), so leave splits out")
        recorded = [key for key in RECORDED if getattr(self, key)]
        if recorded and self.dataset != "folder":
            raise ConfigError(f"{recorded[0]} is an image-folder run's split (the images preset); {self.dataset} has "
                              "its own fixed split, so leave it out")
        if recorded and len(recorded) != len(RECORDED):
            raise ConfigError(f"{', '.join(RECORDED)} are recorded together when a run starts; "
                              f"{', '.join(k for k in RECORDED if k not in recorded)} is empty: set all three or none")
        make_model(self)  # e.g. an image too small for 4 max-pooled blocks
        if data:
            check_data(self)


# ------------------------------------------------------------------------------------------ loss
def xent_per_shot(shots: int):
    """The original's classification loss: cross-entropy summed over the images, divided by K (shots)."""

    def loss(logits: Tensor, labels: Tensor) -> Tensor:  # (N, ways), (N,) -> scalar
        return F.cross_entropy(logits, labels, reduction="sum") / shots

    return loss


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction of images whose highest logit is their label."""
    return (logits.argmax(-1) == labels).float().mean()


# ------------------------------------------------------------------------------------------ data
def data_root(config: FewShotConfig) -> Path:
    """The dataset folder: ``root``, else ``$FASTMAML_DATA/<dataset>``; a clear error when neither is set."""
    if config.root:
        return Path(config.root).expanduser()
    base = os.environ.get(DATA_ENV)
    if base and config.dataset != "folder":
        return Path(base).expanduser() / config.dataset
    where = f", or set {DATA_ENV} to a folder holding {config.dataset}/" if config.dataset != "folder" else ""
    raise ConfigError(f"no data folder for {config.dataset}: pass --root DIR (or --set root=DIR){where}")


@dataclass(frozen=True)
class DataSpec:
    """The config fields that decide which images a split holds: the key of the per-process cache."""

    dataset: str
    root: str
    cache_dir: str
    image_size: int
    channels: int
    rotations: bool
    antialias: bool
    splits: tuple[float, ...]
    split_seed: int
    val_from_train: int
    classes: tuple[tuple[str, ...], ...] = ()  # folder: each split's recorded class folders (empty: not recorded)

    @property
    def turns(self) -> tuple[int, ...]:
        return (0, 1, 2, 3) if self.rotations else (0,)

    def cache(self, name: str) -> Path:
        """Where the decoded images of ``name`` live: ``<cache_dir or default>/<name>``."""
        return (Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()) / name


def data_spec(config: FewShotConfig) -> DataSpec:
    return DataSpec(
        config.dataset, str(data_root(config).resolve()), config.cache_dir, config.image_size, config.channels,
        config.rotations, config.antialias, tuple(config.splits), config.split_seed, config.val_from_train,
        tuple(tuple(getattr(config, key)) for key in RECORDED) if config.train_classes else (),
    )


def _recorded_split(root: Path, classes: tuple[tuple[str, ...], ...]) -> dict[str, list[str]]:
    """A run's recorded split; DataError if one of its class folders is gone from ``root``. Class
    folders added since join no split (a warning names them): the split is the one the run trained with."""
    recorded = {name for names in classes for name in names}
    if root.is_dir():  # else load_image_folder says the folder is not found
        gone = sorted(name for name in recorded if not (root / name).is_dir())
        if gone:
            raise DataError(
                f"{len(gone)} of the {len(recorded)} class folders in this run's split are gone from {root}: "
                f"{', '.join(gone[:3])}{', ...' if len(gone) > 3 else ''}; restore them (the run's config.json lists "
                f"each split's classes: {', '.join(RECORDED)}), or start a new run on the tree as it is now"
            )
        added = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in
                       recorded)
        if added:
            log.warning("%d class folder(s) in %s are in none of this run's splits (added after it started), so left "
                        "out: %s", len(added), root, ", ".join(added[:3]) + (", ..." if len(added) > 3 else ""))
    return {split: list(names) for split, names in zip(SPLITS, classes)}


@functools.lru_cache(maxsize=8)
def _folder_splits(spec: DataSpec) -> dict[str, FewShotImages]:
    recorded = spec.classes and _recorded_split(Path(spec.root), spec.classes)
    loaded = load_image_folder(
        spec.root,
        image_size=spec.image_size,
        channels=spec.channels,
        splits=recorded or dict(zip(SPLITS, spec.splits)),
        seed=spec.split_seed,
        cache_dir=spec.cache("folders"),
    )
    return {split: images.with_rotations(spec.turns) for split, images in loaded.items()}


def _held_out(names: tuple[str, ...], count: int, seed: int) -> set[str]:
    if count >= len(names):
        raise ConfigError(f"val_from_train={count} leaves no meta-training class (there are {len(names)})")
    shuffled = sorted(names)
    random.Random(seed).shuffle(shuffled)
    return set(shuffled[:count])


@functools.lru_cache(maxsize=16)
def _load_split(spec: DataSpec, split: str, device: str) -> FewShotImages:
    """The images of ``split`` on ``device``: decoded (or read from the cache) once per process."""
    if device != "cpu":
        return _load_split(spec, split, "cpu").to(device)
    root = Path(spec.root)
    if spec.dataset == "omniglot":
        cache = spec.cache("omniglot")
        return load_omniglot(root, split, spec.image_size, spec.rotations, cache, antialias=spec.antialias)
    if spec.dataset == "folder":
        return _folder_splits(spec)[split]
    cache = spec.cache("miniimagenet")
    if spec.val_from_train and split in ("train", "val"):
        train = load_miniimagenet(root, "train", spec.image_size, cache)
        held = _held_out(train.class_names, spec.val_from_train, spec.split_seed)
        names = [n for n in train.class_names if (n in held) == (split == "val")]
        return train.subset(names).with_rotations(spec.turns)
    if split == "val" and not (root / "val.csv").is_file():
        raise DataError(
            f"mini-ImageNet validation split not found ({root / 'val.csv'} is missing); pass "
            "--set val_from_train=16 to hold out 16 meta-training classes for validation, or --set val_every=0"
        )
    return load_miniimagenet(root, split, spec.image_size, cache).with_rotations(spec.turns)


def _device(config: FewShotConfig) -> str:
    """Where the images live: the run's CUDA device when there is one, else the CPU."""
    return cuda_or_cpu(config.device)


def load_split(config: FewShotConfig, split: str) -> FewShotImages:
    """The classes of ``split`` ("train", "val" or "test") for ``config``, cached for the process."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return _load_split(data_spec(config), split, _device(config))


def task_set(config: FewShotConfig) -> dict:
    """What draws a run's meta-test tasks, for ``compare`` (runs that differ here are not paired):
    the data set, ways, shots, queries and rotations; an image-folder run's tree and split too. The
    network, image size and the other training settings may differ: they change the learner, not the tasks."""
    found = {"dataset": config.dataset, "ways": config.ways, "shots": config.shots,
             "queries": query_count(config, "test"), "rotations": config.rotations}
    if config.dataset == "folder":
        found.update(root=config.root, test_classes=config.test_classes, splits=config.splits,
                     split_seed=config.split_seed)
        if config.test_classes:  # the images themselves: a test class edited between two evals is other tasks
            found["test_images_sha1"] = test_images_sha1(data_root(config), config.test_classes)
    return found


def test_images_sha1(root: Path, classes: Sequence[str]) -> str:
    """A hash of the names and bytes of ``classes``' images under ``root`` (their content: a copied tree
    hashes alike): two evals of an image-folder run on different images were paired by compare."""
    files, _ = scan_class_folders(Path(root), set(classes))
    digest = hashlib.sha1()
    for name in sorted(n for names in files.values() for n in names):
        digest.update(name.encode() + b"\0" + (Path(root) / name).read_bytes())
    return digest.hexdigest()[:16]


def query_count(config: FewShotConfig, split: str) -> int:
    return config.queries if split == "train" else config.eval_queries or config.queries


def check_data(config: FewShotConfig) -> None:
    """Fail before training starts when the data is missing or too small for the task shape.

    Loads (and on first use caches) the meta-training split, the validation split when validation
    is on, and the meta-test split (not MiniImagenet's, whose images may come later), then draws one
    task from each: too few classes or images is one clear error, before a run that could never be
    meta-tested trains.
    """
    splits = ("train", "val") if config.val_every else ("train",)
    if config.dataset != "miniimagenet":
        splits += ("test",)
    for split in splits:
        images = _load_split(data_spec(config), split, "cpu")
        try:
            images.sample(torch.Generator().manual_seed(0), 1, config.ways, config.shots, query_count(config, split))
        except ConfigError as error:
            hint = ""
            if split != "train":
                hint = f" (its tasks draw {query_count(config, split)} queries per class: eval_queries, or queries when 0"
                hint += f"; the classes of each split: splits={','.join(map(str, config.splits))})" if (
                    config.dataset == "folder") else ")"
            raise ConfigError(f"{config.dataset} {split} split: {error}{hint}") from None


# ------------------------------------------------------------------------------------------ model
def make_model(config: FewShotConfig) -> nn.Module:
    if config.network == "mlp":
        return NoConvMLP(config.channels * config.image_size**2, config.ways, norm=config.norm)
    return ConvNet(config.channels, config.ways, config.filters, image_size=config.image_size, max_pool=config.max_pool,
                   norm=config.norm)


def build(config: FewShotConfig) -> Experiment:
    device = _device(config)
    device_generator = torch.Generator(device=device) if device != "cpu" else None

    def sample(generator: torch.Generator, split: str, num_tasks: int):
        images = load_split(config, split)
        if device_generator is not None and split == "train":  # the CPU stream seeds the GPU one: reproducible
            device_generator.manual_seed(int(torch.randint(2**62, (), generator=generator)))  # and resumable
            generator = device_generator
        # validation and meta-test tasks are drawn from the CPU stream on any device: a run meta-tested
        # on a GPU meets the tasks it meets on the CPU, which compare pairs task by task
        return images.sample(generator, num_tasks, config.ways, config.shots, query_count(config, split))

    model = make_model(config)
    return Experiment(
        name=f"{config.dataset}-{config.ways}way-{config.shots}shot",
        config=config,
        model=model,
        loss_fn=xent_per_shot(config.shots),
        sample=sample,
        metrics={"accuracy": accuracy, "loss": F.cross_entropy},
        higher_is_better=True,
        outer_only=tuple(norm_offsets(model)),  # norm=original: batch-norm offsets meta-learned, not adapted
        # eval reports name the network (conv and MLP runs share tasks) and what draws the meta-test tasks
        extras={"model": model_label(config, model), "task_set": functools.partial(task_set, config)},
    )


def model_label(config: FewShotConfig, model: nn.Module) -> str:
    """The network in a few words, for eval reports: ``conv 4x64, stride 2`` or ``MLP 256-128-64-64``
    (the MLP's hidden widths read from ``model``), and ``norm`` or ``inner_params`` where not the default."""
    if config.network == "mlp":
        widths = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)][:-1]  # not the output layer
        label = "MLP " + "-".join(map(str, widths))
    else:
        label = f"conv 4x{config.filters}, " + ("max-pool" if config.max_pool else "stride 2")
    label += ", the original's batch norm" if config.norm == "original" else ""
    return label + (f", inner loop adapts {','.join(config.inner_params)}" if config.inner_params else "")


# ------------------------------------------------------------------------------------------ presets
def _with(changes: dict, **settings) -> FewShotConfig:
    """The preset's ``settings`` with the user's ``changes`` on top (a ``--root`` made absolute)."""
    settings.update(changes)
    if settings.get("root"):
        settings["root"] = str(Path(settings["root"]).expanduser().resolve())
    try:
        return FewShotConfig(**settings)
    except TypeError as error:
        raise ConfigError(str(error)) from None


def omniglot_settings(ways: int, shots: int, queries: int | None = None) -> dict:
    """The paper's Omniglot hyper-parameters for N-way K-shot (5-way ones below 20 ways)."""
    twenty = ways >= 20
    queries = shots if queries is None else queries  # K query images per class, as the original
    return {
        "ways": ways,
        "shots": shots,
        "queries": queries,
        "meta_batch_size": 16 if twenty else 32,
        "inner_lr": 0.1 if twenty else 0.4,
        "inner_steps": 5 if twenty else 1,
    }


def omniglot_config(ways: int = 5, shots: int = 1, **changes) -> FewShotConfig:
    settings = omniglot_settings(ways, shots, changes.get("queries"))
    if settings["ways"] * (settings["shots"] + settings["queries"]) <= 10:
        # Tasks of 10 images or fewer (5-way 1-shot, 1 query): vmap in the worker threads beat the
        # per-task loop, 0.209 against 0.248 s per iteration on 2 CPU cores; with more images per
        # task the loop won (5-way 5-shot 0.88 vs 1.16 s, 20-way 1-shot 1.57 vs 1.80 s;
        # benchmarks/results/fewshot_cpu.md). On a GPU auto picks vmap anyway.
        settings["strategy"] = "vmap"
    return _with(changes, dataset="omniglot", **settings)


def omniglot_noconv_config(ways: int = 5, shots: int = 1, **changes) -> FewShotConfig:
    return _with(changes, dataset="omniglot", network="mlp", **omniglot_settings(ways, shots, changes.get("queries")))


def _natural_image_settings(ways: int, shots: int) -> dict:
    return {
        "ways": ways,
        "shots": shots,
        "queries": 15,
        "image_size": 84,
        "channels": 3,
        "rotations": False,
        "filters": 32,
        "max_pool": True,
        "meta_batch_size": 4 if shots == 1 else 2,
        "inner_lr": 0.01,
        "inner_steps": 5,
        "grad_clip": 10.0,
    }


def miniimagenet_config(ways: int = 5, shots: int = 1, **changes) -> FewShotConfig:
    return _with(changes, dataset="miniimagenet", eval_queries=shots, **_natural_image_settings(ways, shots))


def images_config(ways: int = 5, shots: int = 1, **changes) -> FewShotConfig:
    return _with(changes, dataset="folder", **_natural_image_settings(ways, shots))


def train(preset: Preset, config: FewShotConfig, run_dir: str | Path, *, resume: bool = False,
          progress: bool = True) -> dict:
    """The engine's training loop, after recording a new image-folder run's split (each split's class
    folders) in its config: eval and resume reuse it rather than split the tree again as it is then."""
    from fastmaml.engine.distributed import from_rank0_before_group
    from fastmaml.engine.trainer import train as engine_train

    if not resume and config.dataset == "folder" and not config.train_classes:
        # the split load_image_folder draws, from the class folders alone (decoding the images here would
        # hold them twice: the build below reads them under the recorded split, another cache key)
        def drawn_split() -> dict[str, list[str]]:
            classes, _ = scan_class_folders(data_root(config))
            drawn = split_classes(list(classes), dict(zip(SPLITS, config.splits)), config.split_seed)
            return {key: list(drawn[split]) for key, split in zip(RECORDED, SPLITS)}

        # under torchrun rank 0's split for every node (its error too); each node's data is then checked
        split = from_rank0_before_group("folder_split", drawn_split)
        config = dataclasses.replace(config, **{key: tuple(names) for key, names in split.items()})
    return engine_train(preset, config, run_dir, resume=resume, progress=progress)


for _name, _make, _description in (
    ("omniglot", omniglot_config, "Omniglot N-way K-shot, 4-block strided conv (paper Sec. 5.2); --root DIR"),
    ("omniglot-noconv", omniglot_noconv_config, "Omniglot N-way K-shot, MLP 256-128-64-64 (paper's no-conv row)"),
    ("miniimagenet", miniimagenet_config, "MiniImagenet 5-way K-shot, 4-block conv 32 + max-pool; --root DIR"),
    ("images", images_config, "any class-per-folder image tree (--root DIR), split by class"),
):
    register(Preset(name=_name, config_cls=FewShotConfig, make_config=_make, build=build, description=_description,
                    train=train))


def prepare(
    dataset: str, root: str | Path, cache_dir: str | Path | None = None, download: bool = False, url: str | None = None
) -> list[str]:
    """``fastmaml data``: check a dataset (Omniglot: download it first if asked) and cache it; says what it did.

    ``cache_dir`` has the meaning of the config key: the cache goes to ``<cache_dir>/<dataset>``.
    A mini-ImageNet split without its split file or images (not there yet) is skipped and said so;
    any other problem (a malformed split file, a corrupt or missing image) is an error.
    """
    from fastmaml.tasks import miniimagenet, omniglot

    root = Path(root).expanduser()
    cache_base = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    lines = []
    if url and not (download and dataset == "omniglot"):
        raise ConfigError("--url names a mirror for fastmaml data omniglot --download; add --download, or drop --url")
    if dataset == "omniglot":
        if download:
            if url:  # before anything is downloaded or made
                omniglot.check_download_url(url, "--url")
            fetched = omniglot.download_omniglot(root, **({"base_url": url} if url else {}))
            lines += [f"downloaded {p} (md5 checked)" for p in fetched] or [f"zips already in {root}; none downloaded"]
        cache = omniglot.prepare_omniglot(root, cache_dir=cache_base / "omniglot")
        counts = {part: characters for part, (_, characters) in omniglot.PARTS.items()}
        lines.append(
            f"verified Omniglot in {root}: {sum(counts.values())} characters x {omniglot.IMAGES_PER_CHARACTER} "
            f"images ({', '.join(f'{c} in {p}' for p, c in counts.items())})"
        )
        lines.append(f"cache {cache} ({cache.stat().st_size / 1e6:.1f} MB)")
        return lines
    if dataset != "miniimagenet":
        raise ConfigError(f"unknown dataset {dataset!r}; use omniglot or miniimagenet")
    if download:
        raise ConfigError("mini-ImageNet has no official download; put the split CSVs and images in --root DIR")
    prepared = 0
    for split in miniimagenet.SPLITS:
        if not (root / f"{split}.csv").is_file():
            lines.append(f"{split}: {root / f'{split}.csv'} not found; skipped")
            continue
        try:
            cache = miniimagenet.prepare_miniimagenet(root, split, cache_dir=cache_base / "miniimagenet")
        except miniimagenet.ImagesNotFound as error:  # not there yet (as the meta-test images here); other errors fail
            lines.append(f"{split}: skipped: {error}")
            continue
        classes = miniimagenet.read_split_csv(root / f"{split}.csv")
        count = sum(len(files) for files in classes.values())
        size = cache.stat().st_size / 1e6
        lines.append(f"{split}: {len(classes)} classes, {count} images; cache {cache} ({size:.1f} MB)")
        prepared += 1
    if not prepared:
        raise DataError(f"no mini-ImageNet split could be prepared from {root}: " + " | ".join(lines))
    return lines
