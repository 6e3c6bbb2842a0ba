"""The reference slides' open questions as reproducible studies: ``fastmaml study NAME [--quick]``.

Each study is one module with a ``run(out, budget, seed=0, **options) -> Report`` function, a
``headlines(results) -> {name: number}`` function (the numbers its notes conclude from) and two
budgets: ``QUICK`` (seconds to a minute, what the tests run) and ``FULL`` (what the README reports).
Running a study prints its tables and writes ``OUT/NAME.json`` (every number, the budget and the
machine) and ``OUT/NAME.png``, and saves what it printed as ``OUT/NAME.txt``; the run folders it
trains go under ``OUT/NAME/``. ``seed`` is the training seed (weights and training tasks); the
meta-test tasks are the same for every seed.

``run_seeds`` runs a study once per training seed (``OUT/seed-S/``, each as above) and writes the
headlines of every seed with their mean and 95% interval over seeds (Student's t) to
``OUT/NAME.seeds.json`` and ``OUT/NAME.seeds.txt``: the intervals of a single run cover the meta-test
tasks' spread, not the training seed's, and the seed's can be as large. A headline that is NaN or
inf at some seed (a diverged adaptation) gets no mean: its row says at how many seeds it was not
finite (``"not_finite"`` in the JSON, whose mean and interval are then null and values "nan" / "inf",
so the file stays strict JSON). ``OUT/NAME.json`` writes a NaN or infinite number as the string
"nan", "inf" or "-inf" too (:func:`strict_json`).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import logging
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fastmaml.config import check_seed
from fastmaml.engine.evaluate import mean_ci95_t
from fastmaml.errors import CheckpointError, ConfigError, TrainingStopped
from fastmaml.studies.common import Budget, Report, Table, fmt, machine, pm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Study:
    name: str
    module: str
    description: str


STUDIES = {
    s.name: s
    for s in (
        Study("order-activation", "order_activation", "first vs second order x ReLU vs sigmoid; Hessian size"),
        Study("inner-steps", "inner_steps", "first-order MAML with N = 1, 2, 3, 5 inner steps"),
        Study("meta-sgd", "meta_sgd", "Meta-SGD vs MAML, 5 and 10 shots; learned alpha per layer"),
        Study("linear", "linear", "y = theta x: the meta-learned theta, derived and measured; steps vs distance"),
        Study("autoencoder", "autoencoder", "MAML on an autoencoder (sinusoid families, Omniglot alphabets)"),
        Study("extrapolation", "extrapolation", "sinusoid amplitude and phase outside the training range"),
    )
}


def _module(name: str, options: dict[str, Any]):
    """The study's module, after checking its name and that it takes every one of ``options``."""
    if name not in STUDIES:
        raise ConfigError(f"unknown study {name!r}; available: {', '.join(STUDIES)}")
    module = importlib.import_module(f"fastmaml.studies.{STUDIES[name].module}")
    accepted = inspect.signature(module.run).parameters
    for key in options:
        if key not in accepted:
            raise ConfigError(f"study {name!r} has no option --{key.replace('_', '-')}")
    return module


def _make_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot make --out {out} ({error.strerror}); choose a writable folder") from None


def _check_unused(out: Path, name: str) -> None:
    """CheckpointError if ``out/NAME``, the folder of the study's runs, holds files already: a study
    that finished there, or one that stopped (its runs are not resumed one by one). Checked before
    the first run trains; each run's own folder check came only when that run was due."""
    folder = out / name
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        held = ("a finished run of this study" if (out / f"{name}.json").is_file() else
                "the runs of a study that stopped before it finished (a study is not resumed)")
        raise CheckpointError(f"{folder} holds {held}; delete {folder} to run the study there again, or choose "
                              "another --out folder")


def run_study(name: str, out: str | Path, *, quick: bool = False, seed: int = 0, **options: Any) -> dict[str, Any]:
    """Run study ``name`` with training seed ``seed`` into ``out``; returns (and writes to
    ``out/NAME.json``) its report. A study stopped by a signal raises TrainingStopped with a message
    of its own: its runs' checkpoints are not a way to continue it."""
    options = {k: v for k, v in options.items() if v is not None}
    module = _module(name, options)
    check_seed(seed)
    budget: Budget = module.QUICK if quick else module.FULL
    out = Path(out)
    _make_out(out)
    _check_unused(out, name)
    start = time.perf_counter()
    try:
        with _quick_figures(budget) if quick else contextlib.nullcontext():
            report: Report = module.run(out, budget, seed=seed, **options)
    except TrainingStopped as stop:  # the run's own message offered `fastmaml train --resume RUN`: no study
        stop.args = ((f"study {name} stopped by {signal.Signals(stop.exit_code - 128).name}; a study is not "
                      f"resumed: delete {out / name} and run it again"),)
        raise
    summary = {
        "study": name,
        "description": STUDIES[name].description,
        "quick": quick,
        "seed": seed,
        "budget": budget.__dict__,
        "wall_s": round(time.perf_counter() - start, 2),
        "machine": machine(),
        "tables": [t.to_dict() for t in report.tables],
        "notes": report.notes,
        "figure": str(report.figure) if report.figure else None,
        "results": report.results,
        "headlines": module.headlines(report.results),
        "options": {key: str(value) for key, value in options.items()},
    }
    (out / f"{name}.json").write_text(json.dumps(strict_json(summary), indent=2, allow_nan=False))
    summary["text"] = render(summary, report) + f"\nnumbers: {out / f'{name}.json'}"
    (out / f"{name}.txt").write_text(summary["text"] + "\n", encoding="utf-8")  # what it printed, beside the numbers
    return summary


def run_seeds(name: str, out: str | Path, seeds: list[int], *, quick: bool = False,
              progress: Callable[[str], Any] | None = None, **options: Any) -> dict[str, Any]:
    """Run study ``name`` once per training seed into ``out/seed-S`` and summarise its headlines over
    the seeds (``out/NAME.seeds.json`` and ``.txt``). A seed whose ``out/seed-S/NAME.json`` exists
    from an earlier call at the same budget is read, not run again, so seeds can be added later.
    ``progress`` receives a line as each seed starts (default: the module's logger, at INFO)."""
    announce = progress or log.info
    options = {k: v for k, v in options.items() if v is not None}
    module = _module(name, options)  # a wrong name or option fails before the first seed trains
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds needs two or more different seeds, got {','.join(map(str, seeds))}")
    for seed in seeds:
        check_seed(seed)
    out = Path(out)
    _make_out(out)
    start = time.perf_counter()
    path = lambda seed: out / f"seed-{seed}" / f"{name}.json"  # noqa: E731
    finished = {seed: _finished(path(seed), quick, seed, options) for seed in seeds}  # all checked before training
    _same_headlines({seed: done for seed, done in finished.items() if done is not None}, path)
    if hasattr(module, "planned_parts") and None in finished.values():  # seeds to train: will they match?
        planned = module.planned_parts(**options)
        for seed, done in finished.items():
            if done is not None and list(done["results"]) != planned:
                raise ConfigError(f"{path(seed)} holds the parts {', '.join(done['results'])}; the seeds to train "
                                  f"would make {', '.join(planned)} (the data this call finds differs: --data, "
                                  "$FASTMAML_OMNIGLOT, $FASTMAML_DATA); run with the same data, or delete "
                                  f"{path(seed).parent} to train that seed again")
    for seed, done in finished.items():
        if done is None:  # a stopped seed's runs: said before any seed trains
            _check_unused(path(seed).parent, name)
    for seed, done in finished.items():
        if done is None:
            announce(f"study {name}: training seed {seed} ({seeds.index(seed) + 1} of {len(seeds)}) into "
                     f"{path(seed).parent}")
            try:
                finished[seed] = run_study(name, path(seed).parent, quick=quick, seed=seed, **options)
            except TrainingStopped as stop:
                stop.args = (f"{stop}; the seeds that finished are reused",)
                raise
        else:
            announce(f"study {name}: training seed {seed}: reusing {path(seed)}")
    _same_headlines(finished, path)
    summaries = list(finished.values())
    rows = []
    table = Table(f"{name}: each headline number at training seeds {', '.join(map(str, seeds))}; mean ± 95% CI "
                  "over the seeds (Student's t)", ["number", *(f"seed {s}" for s in seeds), "mean ± 95% CI"])
    for key in summaries[0]["headlines"]:
        values = [float(s["headlines"][key]) for s in summaries]
        bad = sum(not math.isfinite(v) for v in values)
        if bad:  # a diverged seed (NaN or inf): no mean over the seeds; strict JSON has no NaN
            rows.append({"name": key, "values": [v if math.isfinite(v) else str(v) for v in values],
                         "mean": None, "ci95": None, "not_finite": bad})
            last = f"not finite at {bad} of {len(seeds)}"
        else:
            mean, ci = mean_ci95_t(torch.tensor(values))
            rows.append({"name": key, "values": values, "mean": mean.item(), "ci95": ci.item()})
            last = pm(mean.item(), ci.item())
        table.add(key, *(fmt(v) for v in values), last)
    first = summaries[0]
    summary = {
        "study": name,
        "description": STUDIES[name].description,
        "quick": quick,
        "seeds": seeds,
        "budget": first["budget"],
        "wall_s": round(time.perf_counter() - start, 2),  # this call's: seeds reused from earlier calls cost ~0
        "seeds_wall_s": [s.get("wall_s") for s in summaries],  # each seed's own run (its JSON has its machine)
        "machine": machine(),
        "headlines": rows,
        "runs": [str(out / f"seed-{s}" / f"{name}.json") for s in seeds],
    }
    (out / f"{name}.seeds.json").write_text(json.dumps(summary, indent=2))
    text = [f"study {name} over {len(seeds)} training seeds: {STUDIES[name].description}",
            f"each seed's tables, notes and figure: {out}/seed-S/{name}.txt; meta-test tasks shared by every seed",
            "", table.render(), "", f"numbers: {out / f'{name}.seeds.json'}"]
    if quick:
        text.insert(1, "--quick is a smoke run: its numbers are not the study's")
    summary["text"] = "\n".join(text)
    (out / f"{name}.seeds.txt").write_text(summary["text"] + "\n", encoding="utf-8")
    return summary


NOT_FINITE = ("nan", "inf", "-inf")  # how NAME.json writes a diverged number: strict JSON has no NaN or Infinity


def strict_json(value: Any) -> Any:
    """``value`` with each NaN or infinite float written as the string "nan", "inf" or "-inf" (a
    divergence a study measures, e.g. Meta-SGD after 10 steps): json.dumps wrote bare NaN and
    Infinity tokens, which strict parsers (jq, JavaScript) refuse. ``float()`` reads them back."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: strict_json(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def _finished(path: Path, quick: bool, seed: int, options: dict[str, Any]) -> dict[str, Any] | None:
    """The summary an earlier run wrote at ``path``, if it is one of this budget, seed and options;
    None if there is none. Another budget, seed or options there is an error (mixing them would be
    silent)."""
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
        found = (summary["quick"], summary["seed"])
        numbers = summary["headlines"].values()
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) or v in NOT_FINITE for v in numbers):
            raise TypeError("a headline that is not a number")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError(f"{path} is not a finished study of this fastmaml version; delete its folder "
                          f"{path.parent} to run that seed again") from None
    if found != (quick, seed):
        raise ConfigError(f"{path} holds a {'--quick ' if found[0] else ''}run at seed {found[1]}, not a "
                          f"{'--quick ' if quick else ''}run at seed {seed}; choose another --out folder")
    asked = {key: str(value) for key, value in options.items()}
    if summary.get("options", {}) != asked:
        raise ConfigError(f"{path} was run with the options {summary.get('options', {})}, not {asked}; choose "
                          f"another --out folder, or delete {path.parent} to run that seed again")
    return summary


def _same_headlines(summaries: dict[int, dict[str, Any]], path: Callable[[int], Path]) -> None:
    """ConfigError unless every seed's summary reports the same numbers (names) as the first."""
    first = next(iter(summaries), None)
    for seed, summary in summaries.items():
        if list(summary["headlines"]) != list(summaries[first]["headlines"]):
            raise ConfigError(f"{path(seed)} reports other numbers than {path(first)} (its study ran with other "
                              "data, e.g. the autoencoder without its Omniglot part, or by another fastmaml "
                              f"version); delete the folder {path(seed).parent} or the other one, and run --seeds "
                              "again")


@contextlib.contextmanager
def _quick_figures(budget: Budget):
    """Every figure a ``--quick`` study saves says so at its foot: a 200-iteration smoke run drawn
    beside the slides' full-budget numbers read as fastmaml being 30x worse. (The studies save their
    figures with ``Figure.savefig``; the stamp is added only while the study runs.)"""
    import matplotlib.figure

    original = matplotlib.figure.Figure.savefig
    stamp = f"--quick: {budget.iterations} iterations, {budget.tasks} meta-test tasks (a smoke run, not the study's numbers)"

    def savefig(fig, *args, **kwargs):  # below the axes, in a margin of its own: no tick label under it
        fig.text(0.5, -0.01, stamp, ha="center", va="top", fontsize=8, color="firebrick")
        return original(fig, *args, **{"bbox_inches": "tight", **kwargs})

    matplotlib.figure.Figure.savefig = savefig
    try:
        yield
    finally:
        matplotlib.figure.Figure.savefig = original


def render(summary: dict[str, Any], report: Report) -> str:
    budget = ", ".join(f"{k}={'the experiment default' if k == 'outer_lr' and not v else v}"
                       for k, v in summary["budget"].items())
    m = summary["machine"]
    threads = m["torch_threads"]
    lines = [f"study {summary['study']}: {summary['description']}",
             f"budget: {budget}{' (--quick)' if summary['quick'] else ''}; wall time {summary['wall_s']:.0f} s on "
             f"{m['cpu']} ({m['cpu_count']} cores, {threads} torch thread{'' if threads == 1 else 's'}, torch {m['torch']})"]
    if summary["quick"]:
        lines.append("--quick is a smoke run: its numbers are not comparable with the slides' columns, which are "
                     "full-budget results (run without --quick for those)")
    for table in report.tables:
        lines += ["", table.render()]
    if report.notes:
        lines += [""] + [f"- {n}" for n in report.notes]
    if report.figure:
        lines += ["", f"figure: {report.figure}"]
    return "\n".join(lines)
