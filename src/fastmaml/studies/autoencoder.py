"""MAML on an autoencoder: unsupervised few-shot learning, the reconstruction loss as the task loss.

The slides (Discussion, "Unsupervised learning") propose an autoencoder to make MAML unsupervised:
the input is its own target, so a task is just a few unlabelled examples. Two task families:

- sinusoid families: a task is K curves y = A sin(x − φ) on a fixed grid of 20 points, with noise,
  all from one family (A = A_f·U[0.8, 1.2], φ = φ_f + U[−0.3, 0.3]; A_f ~ U[1, 5], φ_f ~ U[0, π]).
  The code has one unit: one number cannot describe every sinusoid (they span two dimensions), but
  after adapting to a family it can describe that family, which is what MAML has to learn.
- Omniglot alphabets (when the data is there): a task is K = 10 images of one alphabet (28x28, ink
  in [0, 1]); meta-train, validation and meta-test use disjoint alphabets (35, 5 and 10). Its loss and table use
  the squared error summed over an image's 784 pixels (MSE x 784), with α = 0.001.

The baseline is the same autoencoder trained jointly on all tasks (the engine's "pretrained"
baseline), fine-tuned on the K support examples with SGD. Each method gets its best SGD step out
of α × (0.1, 0.3, 1), chosen by the 5-step loss on validation tasks (the jointly trained
autoencoder is sharp: at α it diverges within a few steps). Both are scored by the reconstruction
MSE of the task's query examples after 0, 1 and 5 steps.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastmaml.algorithms import MAML
from fastmaml.config import TrainConfig
from fastmaml.core import TaskBatch
from fastmaml.engine.evaluate import methods_for
from fastmaml.engine.experiment import Experiment
from fastmaml.errors import FastMAMLError
from fastmaml.models.mlp import MLP
from fastmaml.studies.common import Budget, Report, Table, fit, pm, score

log = logging.getLogger(__name__)

FULL = Budget(iterations=10_000, tasks=600)
QUICK = Budget(iterations=200, tasks=100)
OMNIGLOT_FULL = Budget(iterations=1_500, tasks=300, meta_batch_size=10)
OMNIGLOT_QUICK = Budget(iterations=100, tasks=50, meta_batch_size=10)
STEPS = (0, 1, 5)
LR_FACTORS = (0.1, 0.3, 1.0)  # SGD steps tried at meta-test, as multiples of the meta-training α
VAL_TASKS, VAL_SEED = 200, 7_919
SPLIT_SEED = 0  # which alphabets meta-train, validate and meta-test
GRID = 20
NOISE = 0.05


class AutoEncoder(nn.Module):
    """``features -> hidden -> code -> hidden -> features``; the code is linear."""

    exact_under_vmap = True  # its forward calls only torch.nn modules (fastmaml.core.norm.needs_exact_vmap_ops)

    def __init__(self, features: int, code: int, hidden: int, activation: str = "relu") -> None:
        super().__init__()
        self.encoder = MLP(features, code, (hidden,), activation)
        self.decoder = MLP(code, features, (hidden,), activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


def _config(budget: Budget, inner_lr: float, seed: int, outer_lr: float = 0.001) -> TrainConfig:
    return TrainConfig(inner_lr=inner_lr, outer_lr=outer_lr, meta_batch_size=budget.meta_batch_size,
                       iterations=budget.iterations, log_every=min(100, budget.iterations),
                       checkpoint_every=budget.iterations, eval_steps=max(STEPS), threads=1, seed=seed)


def sinusoid_family_experiment(budget: Budget, shots: int = 5, queries: int = 10, seed: int = 0) -> Experiment:
    grid = torch.linspace(-5, 5, GRID)

    def sample(generator: torch.Generator, split: str, num_tasks: int) -> TaskBatch:
        u = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
        amp_f, phase_f = 1 + 4 * u(num_tasks, 1), torch.pi * u(num_tasks, 1)
        n = shots + queries
        amp = amp_f * (0.8 + 0.4 * u(num_tasks, n))
        phase = phase_f + 0.6 * (u(num_tasks, n) - 0.5)
        curves = amp[..., None] * torch.sin(grid - phase[..., None])  # (T, n, GRID)
        curves = curves + NOISE * torch.randn(curves.shape, generator=generator)
        return TaskBatch(curves[:, :shots], curves[:, :shots], curves[:, shots:], curves[:, shots:])

    torch.manual_seed(seed)
    lr = 0.003
    return Experiment("autoencoder-sinusoid", _config(budget, inner_lr=lr, seed=seed), AutoEncoder(GRID, 1, 40),
                      F.mse_loss,
                      sample, {"mse": F.mse_loss}, baseline=AutoEncoder(GRID, 1, 40), baseline_lr=lr)


def omniglot_experiment(root: Path, budget: Budget, shots: int = 10, queries: int = 10, seed: int = 0) -> Experiment:
    """Tasks: K images of one alphabet; 35 alphabets meta-train, 5 validation, 10 meta-test (the same split
    for every training ``seed``, which seeds the weights and the training tasks)."""
    from fastmaml.tasks import load_omniglot

    pools: dict[str, list[Tensor]] = {}
    for split in ("trainval", "test"):
        data = load_omniglot(root, split, rotations=False)
        for name, start, size in zip(data.class_names, data.offsets.tolist(), data.class_sizes.tolist()):
            pools.setdefault(name.split("/")[0], []).append(data.images[start : start + size])
    alphabets = sorted(pools)
    random.Random(SPLIT_SEED).shuffle(alphabets)
    cut = len(alphabets) - 10
    images = {a: torch.cat(pools[a]).flatten(1).float() / 255 for a in alphabets}  # (N, 784) ink in [0, 1]
    splits = {"train": alphabets[: cut - 5], "val": alphabets[cut - 5 : cut], "test": alphabets[cut:]}

    def sample(generator: torch.Generator, split: str, num_tasks: int) -> TaskBatch:
        names = splits[split]
        picks = torch.randint(len(names), (num_tasks,), generator=generator).tolist()
        tasks = []
        for p in picks:
            pool = images[names[p]]
            tasks.append(pool[torch.randperm(len(pool), generator=generator)[: shots + queries]])
        x = torch.stack(tasks)  # (T, shots + queries, 784)
        return TaskBatch(x[:, :shots], x[:, :shots], x[:, shots:], x[:, shots:])

    torch.manual_seed(seed)
    features, lr = 28 * 28, 0.001
    return Experiment("autoencoder-omniglot", _config(budget, inner_lr=lr, seed=seed), AutoEncoder(features, 32, 128),
                      squared_error, sample, {"mse": squared_error}, baseline=AutoEncoder(features, 32, 128),
                      baseline_lr=lr)


def squared_error(prediction: Tensor, target: Tensor) -> Tensor:
    """Squared error summed over an image's pixels, mean over images (the MSE times 784)."""
    return ((prediction - target) ** 2).sum(-1).mean()


def _evaluate(experiment: Experiment, trainer, budget: Budget) -> dict:
    """Each method fine-tuned with its best SGD step from ``α × LR_FACTORS``, chosen on validation tasks."""
    out = {}
    steps = max(STEPS)
    for method, wrapper in methods_for(experiment, trainer.maml).items():
        best = (float("inf"), experiment.config.inner_lr)
        for factor in LR_FACTORS:
            lr = experiment.config.inner_lr * factor
            candidate = MAML(wrapper.model, experiment.loss_fn, inner_lr=lr)
            val = score(candidate, experiment, VAL_TASKS, steps, seed=VAL_SEED, split="val")["mse"]["mean"][steps]
            if val < best[0]:  # NaN (diverged) is never better
                best = (val, lr)
        chosen = MAML(wrapper.model, experiment.loss_fn, inner_lr=best[1])
        mse = score(chosen, experiment, budget.tasks, steps)["mse"]
        out[method] = {f"mse_{s}": mse["mean"][s] for s in STEPS} | {f"ci_{s}": mse["ci95"][s] for s in STEPS}
        out[method] |= {"curve": mse["mean"], "lr": best[1]}
    return out


def omniglot_folder(data: str | Path | None) -> str | Path | None:
    """The Omniglot folder of the study: ``data`` (``--data``), else ``$FASTMAML_OMNIGLOT``, else
    ``$FASTMAML_DATA/omniglot`` (where ``fastmaml train omniglot`` finds it); None if none is set."""
    if data:
        return data
    if os.environ.get("FASTMAML_OMNIGLOT"):
        return Path(os.environ["FASTMAML_OMNIGLOT"])
    if os.environ.get("FASTMAML_DATA"):
        return Path(os.environ["FASTMAML_DATA"]) / "omniglot"
    return None


def planned_parts(data: str | Path | None = None) -> list[str]:
    """The parts (``results`` keys) a run with ``--data`` ``data`` makes: the Omniglot one where a
    data folder is given or set (``--seeds`` checks the finished seeds against it before training)."""
    return ["sinusoid families", *(["Omniglot alphabets"] if omniglot_folder(data) else [])]


def run(out: Path, budget: Budget, data: str | Path | None = None, seed: int = 0) -> Report:
    root = out / "autoencoder"
    quick = budget.iterations < FULL.iterations
    results, notes = {}, []
    if data is not None:  # asked for by name: a wrong folder fails now, not after the sinusoid part
        from fastmaml.tasks.omniglot import check_omniglot

        check_omniglot(data)
    experiment = sinusoid_family_experiment(budget, seed=seed)
    trainer, wall = fit(experiment, root / "sinusoid")
    results["sinusoid families"] = _evaluate(experiment, trainer, budget) | {"train_s": wall}

    data = omniglot_folder(data)
    omni_budget = OMNIGLOT_QUICK if quick else OMNIGLOT_FULL
    if not data:
        notes.append("Omniglot part skipped: no data folder given (pass --data DIR, or set FASTMAML_DATA to the "
                     "folder holding omniglot/, or FASTMAML_OMNIGLOT to the folder holding images_background and "
                     "images_evaluation)")
    else:
        try:
            experiment = omniglot_experiment(Path(data), omni_budget, seed=seed)
        except FastMAMLError as error:
            notes.append(f"Omniglot part skipped: {error}")
        else:
            trainer, wall = fit(experiment, root / "omniglot")
            # its own budget, recorded: the summary's "budget" is the sinusoid part's
            results["Omniglot alphabets"] = (_evaluate(experiment, trainer, omni_budget)
                                             | {"train_s": wall, "budget": dataclasses.asdict(omni_budget)})
    table = Table(
        "Reconstruction MSE on the query examples of meta-test tasks (mean ± 95% CI) after N SGD steps on the "
        f"support examples; training seed {seed}",
        ["tasks", "method", "SGD step", *(f"{s} steps" for s in STEPS), "train time (both)"],
    )
    for family, r in results.items():
        tasks = budget.tasks if family.startswith("sinusoid") else omni_budget.tasks
        iterations = budget.iterations if family.startswith("sinusoid") else omni_budget.iterations
        for method in ("maml", "pretrained"):
            m = r[method]
            table.add(f"{family} ({tasks} tasks, {iterations} it.)", "MAML" if method == "maml" else "pretrained",
                      m["lr"], *(pm(m[f"mse_{s}"], m[f"ci_{s}"]) for s in STEPS), f"{r['train_s']:.0f} s")
        notes.append(f"{family}: after 5 steps MAML {r['maml']['mse_5']:.4g} (step {r['maml']['lr']:g}) vs "
                     f"pretrained {r['pretrained']['mse_5']:.4g} (step {r['pretrained']['lr']:g})")
    return Report([table], results, notes, _plot(results, out / "autoencoder.png"))


def headlines(results: dict) -> dict[str, float]:
    """Each family's query MSE after 1 and 5 steps for both methods, for ``--seeds``."""
    names = {"maml": "MAML", "pretrained": "pretrained"}
    return {f"{family}: {names[method]} MSE after {s} step{'' if s == 1 else 's'}": r[method][f"mse_{s}"]
            for family, r in results.items() for method in names for s in STEPS[1:]}


def _plot(results: dict, path: Path) -> Path:
    from fastmaml.plotting import plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, (family, r) in zip(axes[0], results.items()):
        for method in ("maml", "pretrained"):
            curve = r[method]["curve"]
            label = "MAML" if method == "maml" else "pretrained, fine-tuned"
            line = ax.plot(range(len(curve)), curve, "o-", label=label)
            ax.errorbar(STEPS, [r[method][f"mse_{s}"] for s in STEPS], yerr=[r[method][f"ci_{s}"] for s in STEPS],
                        fmt="none", capsize=4, color=line[0].get_color())  # 95% CIs: is a gap inside them?
        ax.set_xlabel("SGD steps on the support examples")
        ax.set_ylabel("reconstruction MSE (query)" if "sinusoid" in family else
                      "squared error per image, summed over its pixels (query)")
        ax.set_title(f"autoencoder: {family}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
