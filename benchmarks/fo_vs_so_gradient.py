"""How far the first-order meta-gradient is from the exact one, at a run's weights.

For a trained run (or its freshly initialised network, ``--init``), draws meta-training batches of
the run's size and prints, per batch, the cosine between the first-order and the exact second-order
meta-gradient (all parameters flattened), their norm ratio, and the scale of the network's outputs
before adaptation (mean |logit| or |prediction|), which first-order MAML does not see the cost of:
its meta-gradient is the query gradient at the adapted weights, with the adaptation's Jacobian
replaced by the identity.

    python benchmarks/fo_vs_so_gradient.py runs/omniglot-5w1s-fo --batches 5
    python benchmarks/fo_vs_so_gradient.py runs/omniglot-5w1s-fo --batches 5 --init

The runs need their data where they were trained (``--set root=...`` as for ``fastmaml eval``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fastmaml import MAML
from fastmaml.engine.evaluate import load_trained
from fastmaml.engine.run_dir import build_experiment
from fastmaml.studies.order_activation import meta_gradient


def probe(run_dir: Path, batches: int = 5, init: bool = False, seed: int = 0,
          overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The comparison for ``batches`` meta-training batches of the run in ``run_dir`` (see above)."""
    torch.manual_seed(seed)  # the same initialisation (init) every time
    if init:
        experiment, step = build_experiment(run_dir, overrides), 0
    else:
        experiment, _, meta = load_trained(run_dir, overrides=overrides)
        step = meta["step"]
    c = experiment.config
    maml = MAML(experiment.model, experiment.loss_fn, inner_lr=c.inner_lr, inner_steps=c.inner_steps,
                strategy="loop", workers=1, compile=False)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batches):
        batch = experiment.sample(generator, "train", c.meta_batch_size)
        first, second = meta_gradient(maml, batch, True), meta_gradient(maml, batch, False)
        with torch.no_grad():
            scale = sum(experiment.model(x).abs().mean().item() for x in batch[0]) / len(batch[0])  # per task
        rows.append({
            "cosine": torch.nn.functional.cosine_similarity(first, second, dim=0).item(),
            "norm_ratio": (first.norm() / second.norm()).item(),
            "output_scale_before_adaptation": scale,
        })
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    return {"run": str(run_dir), "step": step, "first_order_run": c.first_order, "inner_lr": c.inner_lr,
            "inner_steps": c.inner_steps, "batches": rows, "mean": mean}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--init", action="store_true", help="the run's network as initialised, not trained")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(json.dumps(probe(args.run_dir, args.batches, args.init, args.seed, args.set), indent=1))


if __name__ == "__main__":
    main()
