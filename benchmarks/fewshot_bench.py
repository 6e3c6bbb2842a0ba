"""Seconds per meta-iteration of the few-shot image presets, as `fastmaml train` runs them.

One iteration = sample a meta-batch from the cached data + meta-loss + backward (``MAML.meta_backward``,
as the trainer does it) + Adam step, built exactly as the preset builds it (fastmaml.experiments.fewshot). Median over ``--repeats`` timed
iterations after ``--warmup``. Real data when ``--omniglot``/``--miniimagenet`` point at it (the
decoded cache is built on first use), otherwise random images of the same shapes.

    python benchmarks/fewshot_bench.py --omniglot ../shared/data/omniglot \
        --miniimagenet ../shared/data/miniimagenet --strategies vmap loop --orders second first
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import time

import torch

from fastmaml.engine.experiment import make_maml
from fastmaml.experiments import fewshot

SETTINGS = {  # name: (preset config maker, ways, shots)
    "omniglot 5w1s": (fewshot.omniglot_config, 5, 1),
    "omniglot 5w5s": (fewshot.omniglot_config, 5, 5),
    "omniglot 20w1s": (fewshot.omniglot_config, 20, 1),
    "omniglot 20w5s": (fewshot.omniglot_config, 20, 5),
    "omniglot-noconv 5w1s": (fewshot.omniglot_noconv_config, 5, 1),
    "omniglot-noconv 5w5s": (fewshot.omniglot_noconv_config, 5, 5),
    "miniimagenet 5w1s": (fewshot.miniimagenet_config, 5, 1),
    "miniimagenet 5w5s": (fewshot.miniimagenet_config, 5, 5),
}


def synthetic_sampler(config: fewshot.FewShotConfig):
    """Random images of the preset's shape: what the sampler returns, without the data set."""
    shape = (config.channels, config.image_size, config.image_size)
    classes = 400 if config.dataset == "omniglot" else 64
    per_class = 20 if config.dataset == "omniglot" else 100
    images = torch.randint(0, 256, (classes * per_class, *shape), dtype=torch.uint8)
    data = fewshot.FewShotImages(images, [per_class] * classes)
    return lambda generator, n: data.sample(generator, n, config.ways, config.shots, config.queries)


def seconds_per_iteration(config: fewshot.FewShotConfig, real: bool, repeats: int, warmup: int) -> float:
    torch.manual_seed(0)
    experiment = fewshot.build(config)
    if real:
        sample = lambda generator, n: experiment.sample(generator, "train", n)
    else:
        sample = synthetic_sampler(config)
    maml = make_maml(experiment)
    opt = torch.optim.Adam(maml.parameters(), lr=config.outer_lr)
    generator = torch.Generator().manual_seed(0)
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        batch = sample(generator, config.meta_batch_size)
        opt.zero_grad(set_to_none=True)
        maml.meta_backward(batch)
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(maml.parameters(), config.grad_clip)
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--omniglot", help="Omniglot root (the two zips); synthetic images without it")
    parser.add_argument("--miniimagenet", help="mini-ImageNet root (train.csv + train.zip); synthetic without it")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), help="substrings of setting names")
    parser.add_argument("--strategies", nargs="+", default=["auto"], choices=["auto", "vmap", "loop", "preset"],
                        help="'preset': the strategy the preset picks (vmap for Omniglot 5-way 1-shot)")
    parser.add_argument("--compile", nargs="+", default=["off"], choices=["off", "on"],
                        help="MAML(compile=...): 'on' compiles in the warm-up iterations")
    parser.add_argument("--orders", nargs="+", default=["second", "first"], choices=["second", "first"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="MAML worker threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    roots = {"omniglot": args.omniglot, "miniimagenet": args.miniimagenet}
    print(f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads by default; "
          f"median of {args.repeats} iterations after {args.warmup} warm-up\n")
    print("| setting | meta-batch | inner steps | order | strategy | threads | workers | compile | data | s / iteration |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, (make, ways, shots) in SETTINGS.items():
        if not any(s in name for s in args.settings):
            continue
        for order in args.orders:
            for threads in args.threads:
                for strategy, workers, compile_ in itertools.product(args.strategies, args.workers, args.compile):
                    torch.set_num_threads(threads)
                    base = make(ways, shots)
                    root = roots[base.dataset]
                    chosen = {} if strategy == "preset" else {"strategy": strategy}
                    config = make(ways, shots, root=root or "/nonexistent", first_order=order == "first",
                                  threads=threads, workers=workers, compile=compile_, **chosen)
                    seconds = seconds_per_iteration(config, root is not None, args.repeats, args.warmup)
                    print(f"| {name} | {config.meta_batch_size} | {config.inner_steps} | {order} | {config.strategy} | "
                          f"{threads} | {workers} | {compile_} | {'real' if root else 'synthetic'} | {seconds:.3f} |",
                          flush=True)


if __name__ == "__main__":
    main()
