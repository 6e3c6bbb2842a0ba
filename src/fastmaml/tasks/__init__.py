"""Task distributions that return batched tensors ``[tasks, examples, ...]`` (a ``TaskBatch``)."""

from fastmaml.tasks.folders import load_image_folder, split_classes
from fastmaml.tasks.images import FewShotImages, default_cache_dir
from fastmaml.tasks.miniimagenet import load_miniimagenet, prepare_miniimagenet
from fastmaml.tasks.omniglot import download_omniglot, load_omniglot, omniglot_split, prepare_omniglot
from fastmaml.tasks.sinusoid import SinusoidTasks

__all__ = [
    "FewShotImages",
    "SinusoidTasks",
    "default_cache_dir",
    "download_omniglot",
    "load_image_folder",
    "load_miniimagenet",
    "load_omniglot",
    "omniglot_split",
    "prepare_miniimagenet",
    "prepare_omniglot",
    "split_classes",
]
