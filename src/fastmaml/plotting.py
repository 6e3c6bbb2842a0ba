"""PNG figures made from run folders' files: learning curves, metric vs inner steps, adaptation."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402

from fastmaml.engine.checkpoint import replace_atomically  # noqa: E402
from fastmaml.errors import ConfigError  # noqa: E402

LABELS = {"maml": "MAML", "pretrained": "pretrained, fine-tuned", "context": "context vector", "scratch": "from scratch"}


def whole_iterations(ax: plt.Axes, steps: list[int]) -> None:
    """Whole iterations on ``ax``'s x axis; one point gets its own tick (a range below 1 would still
    get fractional ticks)."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(set(steps)) == 1:
        ax.set_xticks(steps)


def save_figure(fig: plt.Figure, path: Path, **options: Any) -> Path:
    """``fig`` as a PNG at ``path``, written through a temporary file: a failed write (a full disk)
    leaves the figure that was there whole, where ``savefig`` into it left a truncated PNG."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=120, **options)
    finally:
        plt.close(fig)
    replace_atomically(Path(path), buffer.getvalue())
    return Path(path)


def plain_log_scale(ax: plt.Axes, values: list[float]) -> None:
    """A log y axis labelled with plain numbers (matplotlib's defaults read 4.6×10¹). Minor ticks are
    labelled when ``values`` (all > 0) lie within one decade, and at 2 and 5 times the powers of ten
    when fewer than two powers of ten lie in their range (losses 0.37-5.5 had one label, "1")."""
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    low, high = min(values), max(values)
    if high / low < 10:
        ax.yaxis.set_minor_formatter(plain)
    elif math.floor(math.log10(high)) - math.ceil(math.log10(low)) < 1:  # at most one power of ten inside
        ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        ax.yaxis.set_minor_formatter(plain)
    else:
        ax.yaxis.set_minor_formatter(NullFormatter())


def learning_curve(rows: list[dict[str, Any]], path: Path) -> Path:
    """Meta-loss and baseline loss against meta-training iterations (log scale), and the validation
    metric, if logged, in a panel of its own (linear scale: an accuracy drawn on the loss's log axis
    looked flat). Points are marked when there are few; a single logged row says how to get more."""
    val_keys = sorted({k for r in rows for k in r if k.startswith("val_")})
    fig, axes = plt.subplots(1, 1 + bool(val_keys), figsize=(6 + 5 * bool(val_keys), 4), squeeze=False)
    ax = axes[0][0]
    steps = [r["step"] for r in rows]
    style = "o-" if len(rows) <= 30 else "-"
    values = []
    for key, label in (("meta_loss", "MAML meta-loss (query, after adaptation)"), ("baseline_loss", "pretrained baseline loss")):
        if any(key in r for r in rows):
            ys = [r.get(key, float("nan")) for r in rows]
            values += [y for y in ys if math.isfinite(y)]  # an inf in an edited log hid every label
            ax.plot(steps, ys, style, markersize=3, label=label)
    ax.set_xlabel("meta-training iteration")
    ax.set_ylabel("training loss (mean since the previous row)")
    if values and min(values) > 0:
        plain_log_scale(ax, values)
    title = "learning curve"
    if len(rows) == 1:
        title = f"one logged row (iteration {steps[0]}): lower log_every for a curve"
    ax.set_title(title, fontsize=9)
    if values:
        ax.legend(fontsize=8)
    for key in val_keys:
        pts = [(r["step"], r[key]) for r in rows if key in r]
        axes[0][1].plot(*zip(*pts), "o-", markersize=3, label=f"validation {key[4:]}")
    for panel in axes[0]:
        whole_iterations(panel, steps)
    if val_keys:
        axes[0][1].set_xlabel("meta-training iteration")
        axes[0][1].set_ylabel(", ".join(f"validation {key[4:]}" for key in val_keys))
        axes[0][1].set_title("validation (held-out tasks)", fontsize=10)
        axes[0][1].legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


CURVE_TITLES = {"meta_loss": "meta-loss (query, after adaptation)", "baseline_loss": "pretrained baseline loss",
                "return_pre": "return before adaptation (training tasks)",
                "return_post": "return after adaptation (training tasks)"}


def runs_curves(runs: dict[str, list[dict[str, Any]]], keys: list[str], path: Path, x: str = "iteration") -> Path:
    """Several runs' learning curves on one figure (``fastmaml plot RUN ... --figure``), saved at ``path``."""
    return save_figure(runs_curves_figure(runs, keys, x), path, bbox_inches="tight")  # the legend below the panels


def runs_curves_figure(runs: dict[str, list[dict[str, Any]]], keys: list[str], x: str = "iteration") -> plt.Figure:
    """The figure of :func:`runs_curves`: one panel per metric in ``keys``, one line per run (label:
    ``runs``' key) in the same colour in every panel, and one legend below the panels. ``x`` is
    "iteration" or "time" (the rows' training seconds, ``elapsed_s``; hours past two). A positive
    loss is drawn on a log scale; a run that never logged a key has no line in its panel."""
    hours = x == "time" and max(r.get("elapsed_s", 0) for rows in runs.values() for r in rows) > 7200
    scale = 3600 if hours else 1

    def where(row: dict[str, Any]) -> float:
        return row["step"] if x == "iteration" else row["elapsed_s"] / scale

    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes[0], keys):
        values = []
        for i, (label, rows) in enumerate(runs.items()):
            pts = [(where(r), r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
            values += [v for _, v in pts]
            if pts:
                ax.plot(*zip(*pts), "o-" if len(pts) <= 30 else "-", markersize=3, label=label,
                        color=colours[i % len(colours)])
        if key.endswith("loss") and values and min(values) > 0:
            plain_log_scale(ax, values)
        if x == "iteration":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("meta-training iteration" if x == "iteration" else
                      f"training time ({'h' if hours else 's'}, validation not included)")
        ax.set_ylabel(key)
        ax.set_title(CURVE_TITLES.get(key, f"validation {key[4:]} (held-out tasks)" if key.startswith("val_") else key),
                     fontsize=10)
    fig.tight_layout()
    handles = {}
    for ax in axes[0]:
        handles.update(zip(*reversed(ax.get_legend_handles_labels())))
    order = [label for label in runs if label in handles]
    fig.legend([handles[label] for label in order], order, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=max(1, min(len(order), 3)), frameon=False)
    return fig


def metric_vs_steps(report: dict[str, Any], path: Path) -> Path:
    """Each method's metric after 0..N inner steps, with 95% confidence intervals (paper Fig. 3)."""
    return save_figure(metric_vs_steps_figure(report), path, bbox_inches="tight")  # the legend below the panels


def metric_vs_steps_figure(report: dict[str, Any]) -> plt.Figure:
    """The figure of :func:`metric_vs_steps`, laid out: one panel per metric, whole-number steps on
    the x axis, and one legend for all panels below them, where it cannot cover a curve or its band
    (inside a panel, matplotlib's "best" place ignored the bands and sat on the MAML curve)."""
    methods = report.get("metrics")
    # every metric any method has, in order of first appearance (a method may lack one: not drawn there)
    metrics = (list(dict.fromkeys(name for values in methods.values() if isinstance(values, dict) for name in values))
               if isinstance(methods, dict) else None)
    if not metrics:  # a hand-edited or cut eval.json: nothing to draw
        raise ConfigError("the eval report has no metrics to plot; run `fastmaml eval RUN_DIR` again to rewrite "
                          "its eval.json")
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4), squeeze=False)
    for ax, name in zip(axes[0], metrics):
        for method, values in report["metrics"].items():
            if not isinstance(values, dict) or name not in values:
                continue
            mean, ci = torch.tensor(values[name]["mean"]), torch.tensor(values[name]["ci95"])
            steps = range(len(mean))
            ax.plot(steps, mean, "o-", label=LABELS.get(method, method))
            ax.fill_between(steps, mean - ci, mean + ci, alpha=0.2)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("inner gradient steps at meta-test")
        ax.set_ylabel(name)
        ax.set_title(f"{report['experiment']}: {name} on {report['tasks']} meta-test tasks "
                     f"({report.get('interval', '95% CI')})")
    fig.tight_layout()
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(labels), 4), frameon=False)
    return fig


def sinusoid_adaptation(curves: dict[str, dict[str, Any]], path: Path) -> Path:
    """The paper's Figure 2: fits after 0, 1 and 10 steps on one task, MAML beside the baseline.

    ``curves[method]`` holds ``x`` (dense grid), ``truth``, ``support_x``, ``support_y`` and
    ``predictions`` {steps: values on the grid}.
    """
    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4), squeeze=False)
    styles = {0: ":", 1: "--", 10: "-."}
    for ax, (method, c) in zip(axes[0], curves.items()):
        ax.plot(c["x"], c["truth"], "r-", label="ground truth", linewidth=2)
        for steps, values in c["predictions"].items():
            label = "pre-update" if steps == 0 else f"{steps} grad step{'s' if steps > 1 else ''}"
            ax.plot(c["x"], values, styles.get(steps, "-"), label=label, linewidth=1.8)
        ax.plot(c["support_x"], c["support_y"], "k^", markersize=8, label="used for grad")
        ax.set_title(f"{LABELS.get(method, method)}, K={len(c['support_x'])}")
        ax.set_xlim(float(min(c["x"])), float(max(c["x"])))  # the grid spans the run's x_range
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)
