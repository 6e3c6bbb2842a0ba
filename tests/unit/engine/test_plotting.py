"""The return/metric-vs-steps figure: its legend sits outside every panel, its steps are whole."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from fastmaml import plotting


def _report(methods: dict[str, list[float]], metrics=("return", "return_forward")) -> dict:
    return {
        "experiment": "rl",
        "tasks": 40,
        "metrics": {
            method: {name: {"mean": means, "ci95": [5.0] * len(means)} for name in metrics}
            for method, means in methods.items()
        },
    }


# the ant-direction eval whose figure had the legend on the MAML curve (docs/figures at 315)
ANT = {"maml": [8.0, 162.9, 160.8, 164.1], "random": [7.5, 12.9, 12.0, 12.9],
       "pretrained": [6.3, 10.2, 11.2, 11.1], "oracle": [427.9] * 4}


def test_legend_is_below_every_panel_and_lists_every_method():
    fig = plotting.metric_vs_steps_figure(_report(ANT))
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        (legend,) = fig.legends
        box = legend.get_window_extent(renderer)
        assert [t.get_text() for t in legend.get_texts()] == ["MAML", "random", "pretrained, fine-tuned", "oracle"]
        for ax in fig.axes:
            assert ax.get_legend() is None
            panel = ax.get_tightbbox(renderer)  # the panel with its tick labels and axis label
            assert not box.overlaps(panel), (box, panel)
            assert box.y1 <= panel.y0
    finally:
        plt.close(fig)


def test_steps_axis_has_whole_numbers_only():
    fig = plotting.metric_vs_steps_figure(_report(ANT))
    try:
        fig.canvas.draw()
        for ax in fig.axes:
            ticks = [t for t in ax.get_xticks() if -0.5 <= t <= 3.5]
            assert ticks == [0, 1, 2, 3]
    finally:
        plt.close(fig)


@pytest.mark.parametrize("methods", [1, 7])
def test_saved_png_includes_the_legend(tmp_path, methods):
    """bbox_inches="tight" grows the saved image to hold the legend below the panels."""
    report = _report({f"method {i}": [float(i), i + 1.0] for i in range(methods)}, metrics=("loss",))
    path = plotting.metric_vs_steps(report, tmp_path / "f.png")
    image = plt.imread(path)
    fig = plotting.metric_vs_steps_figure(report)
    try:
        width, height = fig.get_size_inches() * 120
    finally:
        plt.close(fig)
    assert image.shape[0] > height  # taller than the panels alone: the legend rows are in the file
    assert abs(image.shape[1] - width) < 0.2 * width


def test_learning_curve_draws_validation_on_its_own_linear_axis_and_says_when_one_row(tmp_path, monkeypatch):
    """A new user's short runs gave a blank figure (one row, a line with no markers) and an accuracy
    drawn on the loss's log axis, without a y label, where it looked flat."""
    import matplotlib.figure

    saved = []
    original = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: (saved.append(fig), original(fig, *a, **k)))
    rows = [{"step": 20, "meta_loss": 6.8, "val_accuracy": 0.88}, {"step": 25, "meta_loss": 3.1},
            {"step": 40, "meta_loss": 1.5, "val_accuracy": 0.955}]
    plotting.learning_curve(rows, tmp_path / "a.png")
    loss_ax, val_ax = saved[-1].axes
    assert loss_ax.get_yscale() == "log" and val_ax.get_yscale() == "linear"
    assert val_ax.get_ylabel() == "validation accuracy" and loss_ax.get_ylabel()
    assert list(val_ax.lines[0].get_ydata()) == [0.88, 0.955] and loss_ax.lines[0].get_marker() == "o"
    plotting.learning_curve([{"step": 30, "meta_loss": 0.6, "baseline_loss": -0.1}], tmp_path / "b.png")
    (only,) = saved[-1].axes
    assert "one logged row (iteration 30)" in only.get_title() and only.get_yscale() == "linear"  # a value <= 0
    assert (tmp_path / "a.png").stat().st_size > 0 and (tmp_path / "b.png").stat().st_size > 0


# ------------------------------------------------------------ several runs' learning curves on one figure
def _rows(losses, every=100, val=None, seconds=1.0):
    rows = [{"step": every * (i + 1), "meta_loss": loss, "elapsed_s": seconds * every * (i + 1)}
            for i, loss in enumerate(losses)]
    for row, acc in zip(rows, val or []):
        if acc is not None:
            row["val_accuracy"] = acc
    return rows


def test_runs_curves_draw_one_line_per_run_per_panel_in_one_colour_with_one_legend_below():
    runs = {"no validation": _rows([60.0, 55.0]),  # first, so the panels' colour cycles would disagree
            "affine": _rows([50.0, 40.0, 30.0], val=[None, 0.4, 0.5]),
            "original": _rows([45.0, 30.0, 20.0], val=[None, 0.5, 0.7])}
    fig = plotting.runs_curves_figure(runs, ["meta_loss", "val_accuracy"])
    try:
        fig.canvas.draw()
        loss_ax, val_ax = fig.axes
        assert [line.get_label() for line in loss_ax.get_lines()] == list(runs)
        assert [line.get_label() for line in val_ax.get_lines()] == ["affine", "original"]  # the first logged none
        assert list(val_ax.get_lines()[1].get_xdata()) == [200, 300]
        assert list(val_ax.get_lines()[1].get_ydata()) == [0.5, 0.7]
        for a, b in zip(loss_ax.get_lines()[1:], val_ax.get_lines()):
            assert a.get_color() == b.get_color()
        assert loss_ax.get_yscale() == "log" and val_ax.get_yscale() == "linear"
        (legend,) = fig.legends
        assert [t.get_text() for t in legend.get_texts()] == list(runs)
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            assert ax.get_legend() is None
            assert legend.get_window_extent(renderer).y1 <= ax.get_tightbbox(renderer).y0
    finally:
        plt.close(fig)


@pytest.mark.parametrize("seconds, unit, last", [(1.0, "(s,", 300.0), (40.0, "(h,", 12000 / 3600)])
def test_runs_curves_against_training_time_switch_to_hours_past_two(seconds, unit, last):
    fig = plotting.runs_curves_figure({"a": _rows([3.0, 2.0, 1.0], seconds=seconds)}, ["meta_loss"], x="time")
    try:
        (ax,) = fig.axes
        assert unit in ax.get_xlabel()
        assert ax.get_lines()[0].get_xdata()[-1] == pytest.approx(last)
    finally:
        plt.close(fig)


# ------------------------------------------------------------ found by a review of the figures (2026-12-08)
def test_a_failed_figure_write_keeps_the_figure_that_was_there(tmp_path, monkeypatch):
    """savefig wrote into the figure's path, so a full disk left a truncated PNG where the previous
    figure had been; the figure is now written whole or not at all."""
    import errno

    import matplotlib.figure

    path = plotting.learning_curve(_rows([3.0, 2.0, 1.0]), tmp_path / "curve.png")
    before = path.read_bytes()

    def full_disk(fig, target, **kwargs):
        with open(target, "wb") if isinstance(target, (str, type(path))) else _nullcontext(target) as f:
            f.write(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full_disk)
    with pytest.raises(OSError):
        plotting.learning_curve(_rows([5.0, 4.0]), path)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("*.tmp*"))


class _nullcontext:
    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self.f

    def __exit__(self, *exc):
        return False


def _y_labels(ax) -> list[str]:
    ax.figure.canvas.draw()
    ticks = ax.yaxis.get_majorticklabels() + ax.yaxis.get_minorticklabels()
    low, high = ax.get_ylim()
    return [t.get_text() for t in ticks if t.get_text() and low <= t.get_position()[1] <= high]


@pytest.mark.parametrize("values, least", [((0.37, 5.5), 3), ((7.0, 60.0), 3), ((0.5, 0.9), 2), ((0.01, 50.0), 3)])
def test_a_log_axis_has_several_labels_whatever_its_range(values, least):
    """Minor labels were off whenever max / min >= 10: losses 0.37-5.5 had the one label "1", 7-60
    (README's 20-way curve) the one label "10"."""
    fig, ax = plt.subplots()
    ax.plot([0, 1], values)
    plotting.plain_log_scale(ax, list(values))
    try:
        assert len(_y_labels(ax)) >= least, _y_labels(ax)
    finally:
        plt.close(fig)


def test_an_infinite_logged_loss_leaves_the_axis_labelled(tmp_path, monkeypatch):
    """An inf in an edited log passed the NaN filter: the axis spanned up to inf and lost every label."""
    drawn = []
    monkeypatch.setattr(plotting, "save_figure", lambda fig, path, **kw: drawn.append(fig) or path)
    plotting.learning_curve(_rows([4.1, float("inf"), 3.5, 3.0]), tmp_path / "c.png")
    try:
        assert _y_labels(drawn[0].axes[0])
    finally:
        plt.close(drawn[0])


def test_a_method_without_a_metric_is_left_out_of_its_panel():
    """A report whose pretrained method lacks `loss` stopped the steps figure with a KeyError."""
    report = _report({"maml": [3.0, 1.0], "pretrained": [3.0, 2.5]}, metrics=("loss", "mse"))
    del report["metrics"]["pretrained"]["loss"]
    fig = plotting.metric_vs_steps_figure(report)
    try:
        panels = {ax.get_ylabel(): [line.get_label() for line in ax.get_lines()] for ax in fig.axes}
        assert panels == {"loss": ["MAML"], "mse": ["MAML", "pretrained, fine-tuned"]}
    finally:
        plt.close(fig)
