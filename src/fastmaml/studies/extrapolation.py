"""Extrapolation: sinusoid tasks whose amplitude or phase lies outside the meta-training range.

The slides (Discussion, end of "Why the authors focused on deep networks?") recall the paper's
remark that the closer a task is to out-of-distribution, the worse MAML does. One model is
meta-trained on A ∈ [0.1, 5], φ ∈ [0, π] (with the pretrained baseline) and scored on tasks with
A in bands above 5, and φ in bands above π (φ = π + δ is the sinusoid −A sin(x − δ), so the
function-space distance to the training range grows with δ up to δ = π/2).

MSE grows with A² even for a fit of the right shape, so the table also gives the normalised MSE of
each band: its mean MSE over its mean of mean(y²) (1.0 = as bad as predicting zero).

The slides ask how to solve this. One remedy is measured for the amplitude axis: a second MAML
model meta-trained and adapted on each task's targets divided by the standard deviation s of its
own support targets (:func:`scale_targets`; s comes from the K labelled examples, so it is known at
meta-test, and a prediction in y's units is the model's output times s). A task of amplitude 9 then
looks like one of the training range (with noise-free targets, exactly like the in-range task drawn
from the same random numbers). Its predictions are scored in y's units, times s, so its columns
weigh the tasks as the others do. Phase is not a scale: there the scaled model does worse.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from fastmaml.core import TaskBatch
from fastmaml.engine.evaluate import methods_for
from fastmaml.engine.experiment import get_preset
from fastmaml.studies.common import (
    Budget,
    Report,
    Table,
    bins,
    fit,
    load,
    pm,
    ratio_ci95,
    score,
    sinusoid_config,
    train_sinusoid,
)
from fastmaml.tasks.sinusoid import SinusoidTasks

FULL = Budget(iterations=15_000, tasks=600)
QUICK = Budget(iterations=200, tasks=50)
TRAIN_AMPLITUDE, TRAIN_PHASE = (0.1, 5.0), (0.0, math.pi)
AMPLITUDE_EDGES = (5.0, 6.0, 7.0, 8.0, 10.0)
PHASE_EDGES = tuple(math.pi + d for d in (0.0, 0.25, 0.5, 1.0, math.pi / 2))
STEPS = (1, 10)


METRICS = {
    "mse": lambda pred, y: ((pred - y) ** 2).mean(),
    "power": lambda pred, y: (y**2).mean(),  # mean(y²): the MSE of predicting zero
}


def _sampler(tasks: SinusoidTasks, shots: int, queries: int):
    def sample(generator: torch.Generator, split: str, num_tasks: int):
        return tasks.sample(generator, num_tasks, shots, queries)[0]

    return sample


def scale_targets(sample):
    """``sample`` with each task's targets divided by the standard deviation s of its support targets;
    s rides along as a second target column, for :data:`SCALED_METRICS` to score in y's units (the
    loss, :func:`scaled_mse`, reads only the first)."""

    def scaled(generator: torch.Generator, split: str, num_tasks: int) -> TaskBatch:
        batch = sample(generator, split, num_tasks)
        s = batch.support_y.std(dim=(1, 2), keepdim=True).clamp_min(1e-3)
        with_s = lambda y: torch.cat([y / s, s.expand_as(y)], dim=-1)  # noqa: E731
        return TaskBatch(batch.support_x, with_s(batch.support_y), batch.query_x, with_s(batch.query_y))

    return scaled


def scaled_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The MSE on scaled targets (the first column of a :func:`scale_targets` target)."""
    return F.mse_loss(prediction, target[..., :1])


SCALED_METRICS = {  # METRICS in y's units: the prediction and the scaled target times s
    "mse": lambda pred, y: (((pred - y[..., :1]) * y[..., 1:]) ** 2).mean(),
    "power": lambda pred, y: ((y[..., :1] * y[..., 1:]) ** 2).mean(),
}


def run(out: Path, budget: Budget, seed: int = 0) -> Report:
    run_dir = out / "extrapolation" / "sinusoid-k10"
    train_s, _ = train_sinusoid(run_dir, budget, baseline=True, seed=seed)
    experiment, maml = load(run_dir)
    config = experiment.config
    methods = methods_for(experiment, maml)
    torch.manual_seed(seed)  # the scaled model starts from the weights the plain one started from
    plain = get_preset("sinusoid").build(sinusoid_config(budget, seed=seed))
    scaled_experiment = dataclasses.replace(plain, name="sinusoid-scaled-targets", sample=scale_targets(plain.sample),
                                            loss_fn=scaled_mse, metrics={"mse": scaled_mse})
    scaled_trainer, scaled_s = fit(scaled_experiment, out / "extrapolation" / "sinusoid-k10-scaled-targets")
    bands = [("in range", "A", TRAIN_AMPLITUDE, TRAIN_PHASE, 0.0)]
    bands += [("amplitude", "A", (lo, hi), TRAIN_PHASE, (lo + hi) / 2 - TRAIN_AMPLITUDE[1])
              for lo, hi in bins(AMPLITUDE_EDGES)]
    bands += [("phase", "φ", TRAIN_AMPLITUDE, (lo, hi), (lo + hi) / 2 - TRAIN_PHASE[1]) for lo, hi in bins(PHASE_EDGES)]
    rows = []
    for axis, symbol, amplitude, phase, distance in bands:
        tasks = SinusoidTasks(amplitude, phase, config.x_range)
        sample = _sampler(tasks, config.shots, config.eval_queries)
        row = {"axis": axis, "amplitude": amplitude, "phase": phase, "distance": distance}
        for method, wrapper in methods.items():
            scores = score(wrapper, experiment, budget.tasks, max(STEPS), sample=sample, metrics=METRICS,
                           per_task=True)
            mse, power = scores["mse"], scores["power"]["per_task"][:, 0]
            for s in STEPS:
                row[f"{method}_mse_{s}"], row[f"{method}_mse_{s}_ci"] = mse["mean"][s], mse["ci95"][s]
                # normalised MSE, mean(MSE) / mean(y²), a ratio of two means over the same tasks
                row[f"{method}_nmse_{s}"], row[f"{method}_nmse_{s}_ci"] = ratio_ci95(mse["per_task"][:, s], power)
        scores = score(scaled_trainer.maml, scaled_experiment, budget.tasks, max(STEPS), sample=scale_targets(sample),
                       metrics=SCALED_METRICS, per_task=True)  # the same tasks, each divided by its support targets' std
        mse, power = scores["mse"], scores["power"]["per_task"][:, 0]
        for s in STEPS:
            row[f"scaled_nmse_{s}"], row[f"scaled_nmse_{s}_ci"] = ratio_ci95(mse["per_task"][:, s], power)
        rows.append(row)
    table = Table(
        f"Meta-trained on A ∈ [0.1, 5], φ ∈ [0, π], K=10, {budget.iterations} iterations, training seed {seed}; "
        f"{budget.tasks} tasks per band; MSE and normalised MSE (mean ± 95% CI)",
        ["band", "distance", "MAML MSE 1", "MAML MSE 10", "MAML NMSE 1", "MAML NMSE 10", "pretrained MSE 10",
         "pretrained NMSE 10", "scaled targets NMSE 1", "scaled targets NMSE 10"],
    )
    for r in rows:
        band = "in range" if r["axis"] == "in range" else (
            f"A ∈ [{r['amplitude'][0]:g}, {r['amplitude'][1]:g}]" if r["axis"] == "amplitude"
            else f"φ ∈ π+[{r['phase'][0] - math.pi:.2f}, {r['phase'][1] - math.pi:.2f}]")
        table.add(band, f"{r['distance']:.2f}", *(pm(r[f"maml_{m}"], r[f"maml_{m}_ci"]) for m in
                                                   ("mse_1", "mse_10", "nmse_1", "nmse_10")),
                  pm(r["pretrained_mse_10"], r["pretrained_mse_10_ci"]),
                  pm(r["pretrained_nmse_10"], r["pretrained_nmse_10_ci"]),
                  pm(r["scaled_nmse_1"], r["scaled_nmse_1_ci"]), pm(r["scaled_nmse_10"], r["scaled_nmse_10_ci"]))
    inside = rows[0]
    far_a = [r for r in rows if r["axis"] == "amplitude"][-1]
    far_p = [r for r in rows if r["axis"] == "phase"][-1]
    notes = [
        f"normalised MSE after 1 step: {inside['maml_nmse_1']:.3g} in range, {far_a['maml_nmse_1']:.3g} at "
        f"A ∈ [{far_a['amplitude'][0]:g}, {far_a['amplitude'][1]:g}], {far_p['maml_nmse_1']:.3g} at φ − π ∈ "
        f"[{far_p['phase'][0] - math.pi:.2f}, {far_p['phase'][1] - math.pi:.2f}]",
        "distance: A − 5 (midpoint of the band) for amplitude, φ − π for phase",
        f"remedy, a MAML model meta-trained and scored with each task's targets divided by its support targets' std "
        f"(scaled targets; trained in {scaled_s:.0f} s): normalised MSE after 1 step {inside['scaled_nmse_1']:.3g} in "
        f"range, {far_a['scaled_nmse_1']:.3g} at A ∈ [{far_a['amplitude'][0]:g}, {far_a['amplitude'][1]:g}] "
        f"(the plain model: {far_a['maml_nmse_1']:.3g}), {far_p['scaled_nmse_1']:.3g} at the farthest phases (plain: "
        f"{far_p['maml_nmse_1']:.3g}): scaling removes what amplitude does, not what phase does (noise-free sinusoid "
        "targets divided by s no longer depend on A: the amplitude bands differ only in how their tasks are weighted)",
    ]
    diverged = [r for r in rows if not r["maml_mse_10"] < float("inf")]
    if diverged:
        notes.append(f"10 steps at α = {config.inner_lr} diverge on some tasks of {len(diverged)} band(s) "
                     "(inf/NaN mean): "
                     "the support gradient grows with A, so a step size that suits the training range overshoots")
    results = {"train_s": train_s, "scaled_train_s": scaled_s, "run_dir": str(run_dir), "bands": rows}
    return Report([table], results, notes, _plot(rows, out / "extrapolation.png"))


def headlines(results: dict) -> dict[str, float]:
    """Normalised MSEs of the training range and the farthest band of each axis, for ``--seeds``."""
    rows = results["bands"]
    picks = {"in range": rows[0], "farthest amplitude band": [r for r in rows if r["axis"] == "amplitude"][-1],
             "farthest phase band": [r for r in rows if r["axis"] == "phase"][-1]}
    out = {}
    for band, r in picks.items():
        for key, name in (("maml_nmse_1", "MAML NMSE after 1 step"), ("maml_nmse_10", "MAML NMSE after 10 steps"),
                          ("pretrained_nmse_10", "pretrained NMSE after 10 steps"),
                          ("scaled_nmse_1", "MAML, scaled targets, NMSE after 1 step"),
                          ("scaled_nmse_10", "MAML, scaled targets, NMSE after 10 steps")):
            out[f"{band}: {name}"] = r[key]
    return out


def _plot(rows: list[dict], path: Path) -> Path:
    from fastmaml.plotting import plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    inside = rows[0]
    for ax, axis, label in ((axes[0], "amplitude", "A − 5"), (axes[1], "phase", "φ − π (radians)")):
        pts = [inside] + [r for r in rows if r["axis"] == axis]
        d = [r["distance"] for r in pts]
        for key, style, name in (("maml_nmse_1", "o-", "MAML, 1 step"), ("maml_nmse_10", "s-", "MAML, 10 steps"),
                                 ("pretrained_nmse_10", "^--", "pretrained, 10 steps"),
                                 ("scaled_nmse_1", "o:", "MAML, targets scaled per task, 1 step"),
                                 ("scaled_nmse_10", "s:", "MAML, targets scaled per task, 10 steps")):
            mean = torch.tensor([r[key] for r in pts])
            ci = torch.tensor([r[f"{key}_ci"] for r in pts])
            line = ax.plot(d, mean, style, label=name)[0]
            ax.fill_between(d, mean - ci, mean + ci, alpha=0.2)
            diverged = [x for x, m in zip(d, mean.tolist()) if not torch.isfinite(torch.tensor(m))]
            if diverged:  # an inf or NaN mean is not drawn: mark where the line stops for that reason
                ax.plot(diverged, [1.0] * len(diverged), "^", color=line.get_color(), markersize=9,
                        transform=ax.get_xaxis_transform(), clip_on=False,
                        label=f"{name}: diverged on some tasks (mean inf or NaN)")
        ax.set_xlabel(f"distance outside the training range: {label} (0: inside)")
        ax.set_ylabel("MSE / mean(y²)")
        ax.set_title(f"extrapolation in {axis}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
