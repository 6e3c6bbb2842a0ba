"""The reference slides' open questions as reproducible studies: ``fastmaml study NAME [--quick]``.

Each study is one module with a ``run(out, budget, **options) -> Report`` function and two budgets:
``QUICK`` (seconds to a minute, what the tests run) and ``FULL`` (what the README reports). Running
a study prints its tables and writes ``OUT/NAME.json`` (every number, the budget and the machine)
and ``OUT/NAME.png``, and saves what it printed as ``OUT/NAME.txt``; the run folders it trains go
under ``OUT/NAME/``.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastmaml.errors import ConfigError
from fastmaml.studies.common import Budget, Report, machine


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


def run_study(name: str, out: str | Path, *, quick: bool = False, **options: Any) -> dict[str, Any]:
    """Run study ``name`` into ``out``; returns (and writes to ``out/NAME.json``) its report."""
    if name not in STUDIES:
        raise ConfigError(f"unknown study {name!r}; available: {', '.join(STUDIES)}")
    study = STUDIES[name]
    module = importlib.import_module(f"fastmaml.studies.{study.module}")
    budget: Budget = module.QUICK if quick else module.FULL
    options = {k: v for k, v in options.items() if v is not None}
    accepted = inspect.signature(module.run).parameters
    for key in options:
        if key not in accepted:
            raise ConfigError(f"study {name!r} has no option --{key.replace('_', '-')}")
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot make --out {out} ({error.strerror}); choose a writable folder") from None
    start = time.perf_counter()
    with _quick_figures(budget) if quick else contextlib.nullcontext():
        report: Report = module.run(out, budget, **options)
    summary = {
        "study": name,
        "description": study.description,
        "quick": quick,
        "budget": budget.__dict__,
        "wall_s": round(time.perf_counter() - start, 2),
        "machine": machine(),
        "tables": [t.to_dict() for t in report.tables],
        "notes": report.notes,
        "figure": str(report.figure) if report.figure else None,
        "results": report.results,
    }
    (out / f"{name}.json").write_text(json.dumps(summary, indent=2))
    summary["text"] = render(summary, report) + f"\nnumbers: {out / f'{name}.json'}"
    (out / f"{name}.txt").write_text(summary["text"] + "\n", encoding="utf-8")  # what it printed, beside the numbers
    return summary


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
