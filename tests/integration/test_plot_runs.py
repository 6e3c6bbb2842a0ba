"""`fastmaml plot RUN_A RUN_B ... --figure F.png`: several runs' learning curves on one figure, read
from their metrics.jsonl (no meta-test, so runs still training can be drawn), and its bad input."""

import json

import pytest
from cli_helpers import one_error_line
from matplotlib import pyplot as plt

from fastmaml import plotting
from fastmaml.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def write_run(folder, rows):
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def fewshot_rows(losses, accuracies):
    return [{"step": 100 * (i + 1), "meta_loss": loss, "elapsed_s": 110.0 * (i + 1), "val_accuracy": acc}
            for i, (loss, acc) in enumerate(zip(losses, accuracies))]


@pytest.fixture
def runs(tmp_path):
    return (write_run(tmp_path / "affine", fewshot_rows([50, 40, 35], [0.40, 0.50, 0.57])),
            write_run(tmp_path / "original", fewshot_rows([45, 30, 22], [0.48, 0.58, 0.70])))


def drawn(monkeypatch):
    """Record the runs, keys and x axis plot_runs hands to the figure, and still write it."""
    calls = []
    real = plotting.runs_curves

    def spy(runs, keys, path, x="iteration"):
        calls.append((runs, keys, x))
        return real(runs, keys, path, x=x)

    monkeypatch.setattr(plotting, "runs_curves", spy)
    return calls


def test_two_runs_share_one_figure_with_loss_and_validation_panels(runs, tmp_path, capsys, monkeypatch):
    calls = drawn(monkeypatch)
    figure = tmp_path / "figures" / "curves.png"  # its folder is made
    assert main(["plot", *map(str, runs), "--figure", str(figure)]) == 0
    assert capsys.readouterr().out.strip() == str(figure)
    assert figure.read_bytes()[:8] == PNG and figure.stat().st_size > 10_000
    ((drawn_runs, keys, x),) = calls
    assert list(drawn_runs) == ["affine", "original"] and keys == ["meta_loss", "val_accuracy"] and x == "iteration"
    assert [r["val_accuracy"] for r in drawn_runs["original"]] == [0.48, 0.58, 0.70]
    assert not (runs[0] / "plots").exists()  # nothing written into the runs


def test_metric_and_time_axis_are_chosen_and_meta_rl_returns_are_drawn_by_default(tmp_path, capsys, monkeypatch):
    calls = drawn(monkeypatch)
    rl = write_run(tmp_path / "cheetah", [{"step": i, "return_pre": -40.0 + i, "return_post": 50.0 + 2 * i,
                                           "policy_std": 1.0, "elapsed_s": 30.0 * i} for i in range(1, 6)])
    assert main(["plot", str(rl), "--figure", str(tmp_path / "a.png")]) == 0
    assert calls[-1][1] == ["return_pre", "return_post"]
    assert main(["plot", str(rl), "--figure", str(tmp_path / "b.png"), "--metric", "policy_std", "--x", "time"]) == 0
    assert calls[-1][1:] == (["policy_std"], "time")
    assert (tmp_path / "b.png").read_bytes()[:8] == PNG


def test_two_folders_of_one_name_are_told_apart_by_their_paths(tmp_path, capsys, monkeypatch):
    calls = drawn(monkeypatch)
    a = write_run(tmp_path / "seed0" / "run", fewshot_rows([3, 2], [0.5, 0.6]))
    b = write_run(tmp_path / "seed1" / "run", fewshot_rows([4, 3], [0.4, 0.5]))
    assert main(["plot", str(a), str(b), "--figure", str(tmp_path / "c.png")]) == 0
    assert list(calls[0][0]) == [str(a), str(b)]


def test_a_run_still_training_is_drawn_up_to_its_last_whole_row(runs, tmp_path, capsys, monkeypatch):
    calls = drawn(monkeypatch)
    with open(runs[1] / "metrics.jsonl", "a") as f:
        f.write('{"step": 400, "meta_lo')  # a row being written
    assert main(["plot", *map(str, runs), "--figure", str(tmp_path / "c.png")]) == 0
    assert [r["step"] for r in calls[0][0]["original"]] == [100, 200, 300]


@pytest.mark.parametrize("extra, message", [
    (["--figure", "curves.jpg"], "--figure curves.jpg: give a .png path"),
    (["--figure", "c.png", "--metric", "val_loss"], ("--metric val_loss: no run logged it; the runs logged "
                                                      "meta_loss, val_accuracy")),
    (["--metric", "meta_loss"], "--metric and --x choose the curves of --figure PATH.png"),
    (["--x", "time"], "--metric and --x choose the curves of --figure PATH.png"),
    (["--figure", "c.png", "--tasks", "50"], "--tasks sets a run's meta-test for its own figures"),
])
def test_bad_options_get_one_line(runs, tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    err = one_error_line(["plot", *map(str, runs), *extra], capsys)
    assert message in err
    assert not list(tmp_path.glob("c.*"))


def test_bad_run_folders_get_one_line(runs, tmp_path, capsys):
    figure = str(tmp_path / "c.png")
    err = one_error_line(["plot", str(runs[0]), str(tmp_path / "nowhere"), "--figure", figure], capsys)
    assert "nowhere is not a folder: give run folders made by fastmaml train --out" in err
    (tmp_path / "empty").mkdir()
    err = one_error_line(["plot", str(runs[0]), str(tmp_path / "empty"), "--figure", figure], capsys)
    assert "empty has no metrics yet; train it first" in err
    for again in (runs[0], runs[1] / ".." / runs[0].name):  # the same folder by another path
        err = one_error_line(["plot", str(runs[0]), str(again), "--figure", figure], capsys)
        assert f"{again} is given twice; give each run folder once" in err
    timeless = write_run(tmp_path / "old", [{"step": 1, "meta_loss": 1.0}])
    err = one_error_line(["plot", str(runs[0]), str(timeless), "--figure", figure, "--x", "time"], capsys)
    assert "old logged no training time (elapsed_s) in some rows; plot them against --x iteration" in err
    err = one_error_line(["plot", str(timeless), "--figure", figure, "--metric", "step"], capsys)
    assert "--metric step: no run logged it" in err  # the axis, not a metric
    assert not (tmp_path / "c.png").exists()


def test_an_unwritable_figure_folder_gets_one_line(runs, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    err = one_error_line(["plot", *map(str, runs), "--figure", str(blocker / "c.png")], capsys)
    assert f"cannot write --figure {blocker / 'c.png'}: {blocker} is a file, not a folder" in err
    err = one_error_line(["plot", *map(str, runs), "--figure", str(blocker / "deeper" / "c.png")], capsys)
    assert f"{blocker} is a file, not a folder" in err  # "(File exists)" before
    plt.close("all")


def test_plot_after_eval_best_draws_the_best_checkpoint_without_advising_a_new_eval(tmp_path, capsys, caplog,
                                                                                      monkeypatch):
    """README says to make eval.json with --best; plot then warned that the report was behind the run
    and advised `fastmaml eval RUN` (which replaces the best report), and drew the adaptation figure
    from the latest checkpoint while the steps figure showed the best one."""
    from fastmaml.engine import plots

    run = tmp_path / "run"
    assert main(["train", "sinusoid", "--iterations", "40", "--set", "val_every=10", "--set", "val_tasks=5",
                 "--set", "log_every=10", "--out", str(run), "--no-progress"]) == 0
    assert main(["eval", str(run), "--best", "--tasks", "5", "--steps", "1", "--no-progress"]) == 0
    assert json.loads((run / "eval.json").read_text())["checkpoint"] == "best"
    loaded, load = [], plots.load_trained
    monkeypatch.setattr(plots, "load_trained", lambda run_dir, which="checkpoint", **kw: (
        loaded.append(which), load(run_dir, which, **kw))[1])
    with caplog.at_level("WARNING"):
        assert main(["plot", str(run)]) == 0
    assert "brings it up to date" not in caplog.text + capsys.readouterr().err
    assert loaded == ["best"]


def test_plot_after_eval_best_with_the_best_checkpoint_moved(tmp_path, capsys, caplog):
    """plot said the run "kept no best checkpoint: its validation was never a finite number" and to
    drop --best (plot has none) when best.safetensors had been moved; it now draws what needs no model
    and says which file is missing, and eval --best says so too (found by a review)."""
    run = tmp_path / "run"
    assert main(["train", "sinusoid", "--iterations", "20", "--set", "val_every=10", "--set", "val_tasks=5",
                 "--set", "log_every=10", "--out", str(run), "--no-progress"]) == 0
    assert main(["eval", str(run), "--best", "--tasks", "5", "--steps", "1", "--no-progress"]) == 0
    (run / "best.safetensors").rename(tmp_path / "moved.safetensors")
    with caplog.at_level("WARNING"):
        assert main(["plot", str(run)]) == 0
    assert "best.safetensors is missing (deleted or moved?)" in caplog.text
    assert (run / "plots" / "metric_vs_steps.png").is_file()
    capsys.readouterr()
    err = one_error_line(["eval", str(run), "--best", "--tasks", "5", "--no-progress"], capsys)
    assert "is missing (deleted or moved?): the run validated to finite values" in err and "never" not in err
    plt.close("all")


def test_plot_without_eval_json_warns_where_the_meta_test_diverged(tmp_path, capsys, caplog):
    """eval refuses a meta-test whose mean became inf; plot drew the same curve cut off without a word."""
    run = tmp_path / "run"
    assert main(["train", "sinusoid", "--iterations", "4", "--set", "log_every=2", "--out", str(run),
                 "--no-progress"]) == 0
    with caplog.at_level("WARNING"):
        assert main(["plot", str(run)]) == 0  # a sane run: no warning about its meta-test
    assert "the steps figure's meta-test" not in caplog.text and not (run / "eval.json").exists()
    from fastmaml.engine import plots

    diverged = plots.evaluate(run, tasks=5, save=False)
    diverged["metrics"]["maml"]["mse"]["mean"][-1] = float("inf")
    import unittest.mock

    with unittest.mock.patch.object(plots, "evaluate", lambda *a, **k: diverged), caplog.at_level("WARNING"):
        assert main(["plot", str(run)]) == 0
    assert "the steps figure's meta-test (100 tasks, not saved)" in caplog.text and "became inf" in caplog.text
    plt.close("all")
