"""Throughput of the few-shot image task sampler (FewShotImages.sample), in tasks per second.

    python benchmarks/sampler_bench.py                     # synthetic images of the real shapes
    python benchmarks/sampler_bench.py --threads 1         # one intra-op thread
    python benchmarks/sampler_bench.py --device cuda       # images and sampling on the GPU
    python benchmarks/sampler_bench.py --omniglot-cache ~/.cache/fastmaml/omniglot/omniglot_28 \
        --miniimagenet-cache ~/.cache/fastmaml/miniimagenet/miniimagenet_train_84

Sampling cost depends on the shapes, not the pixel values, so synthetic images of the paper's sizes
are the default: Omniglot 1200 characters x 20 x 1x28x28 with 4 rotations, 5-way 1-shot, 15
queries, meta-batch 32; MiniImagenet 64 classes x 600 x 3x84x84, 5-way 1-shot, 15 queries,
meta-batch 4. A cache path (without suffix) measures a real memory-mapped cache instead.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fastmaml.tasks import FewShotImages
from fastmaml.tasks.images import QUARTER_TURNS, read_cache

SETTINGS = {  # name: (classes, per class, (C, H, W), rotations, meta_batch_size)
    "omniglot": (1200, 20, (1, 28, 28), QUARTER_TURNS, 32),
    "miniimagenet": (64, 600, (3, 84, 84), (0,), 4),
}
WAYS, SHOTS, QUERIES = 5, 1, 15


def synthetic(classes: int, per_class: int, shape: tuple[int, int, int], rotations: tuple[int, ...]) -> FewShotImages:
    images = torch.randint(0, 256, (classes * per_class, *shape), dtype=torch.uint8)
    return FewShotImages(images, [per_class] * classes, rotations=rotations)


def from_cache(path: Path, rotations: tuple[int, ...]) -> FewShotImages:
    index = json.loads(path.with_suffix(".json").read_text())
    data = read_cache(path, index["meta"])
    if data is None:
        raise SystemExit(f"no valid cache at {path}.npy/.json")
    return data.with_rotations(rotations)


def tasks_per_second(data: FewShotImages, meta_batch_size: int, seconds: float, device: str) -> float:
    generator = torch.Generator(device=device).manual_seed(0)
    for _ in range(5):  # warm-up
        data.sample(generator, meta_batch_size, WAYS, SHOTS, QUERIES)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        data.sample(generator, meta_batch_size, WAYS, SHOTS, QUERIES)
        count += 1
    sync()
    return count * meta_batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per setting")
    parser.add_argument("--omniglot-cache", type=Path)
    parser.add_argument("--miniimagenet-cache", type=Path)
    args = parser.parse_args()
    from fastmaml.engine.distributed import exit_unless_usable

    exit_unless_usable(args.device, __file__)  # one line on a machine without the GPU
    if args.threads:
        torch.set_num_threads(args.threads)
    caches = {"omniglot": args.omniglot_cache, "miniimagenet": args.miniimagenet_cache}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    for name, (classes, per_class, shape, rotations, meta_batch_size) in SETTINGS.items():
        cache = caches[name]
        data = from_cache(cache, rotations) if cache else synthetic(classes, per_class, shape, rotations)
        data = data.to(args.device)
        rate = tasks_per_second(data, meta_batch_size, args.seconds, args.device)
        print(
            f"{name:13s} {WAYS}-way {SHOTS}-shot {QUERIES} queries, meta-batch {meta_batch_size:2d} "
            f"({'cache' if cache else 'synthetic'}): {rate:8.0f} tasks/s = {rate / meta_batch_size:7.1f} meta-batches/s"
        )


if __name__ == "__main__":
    main()
