"""End to end through the CLI: train, eval, plot; MAML must learn something measurable in seconds."""

import csv
import json
import math
import shutil

import pytest
import torch

from fastmaml.algorithms.maml import cpu_compiler
from fastmaml.cli import main
from fastmaml.engine import evaluate as evaluate_module

FAST = ["--set", "meta_batch_size=10", "--set", "outer_lr=0.01", "--set", "log_every=50", "--set", "checkpoint_every=200", "--no-progress"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "sinusoid"
    assert main(["train", "sinusoid", "--shots", "10", "--iterations", "600", "--out", str(run), *FAST]) == 0
    return run


def test_train_writes_config_metrics_and_checkpoints(trained_run):
    config = json.loads((trained_run / "config.json").read_text())
    assert config["experiment"] == "sinusoid" and config["config"]["iterations"] == 600
    assert config["config"]["amplitude"] == [0.1, 5.0] and config["config"]["baseline_lr"] == 0.02
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(50, 601, 50))
    assert rows[-1]["meta_loss"] < rows[0]["meta_loss"]
    assert (trained_run / "checkpoint.safetensors").is_file()
    assert (trained_run / "checkpoint.prev.safetensors").is_file()


def test_eval_json_shows_fast_adaptation_beating_the_pretrained_baseline(trained_run, capsys):
    assert main(["eval", str(trained_run), "--tasks", "200", "--steps", "5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    maml, pretrained = report["metrics"]["maml"]["mse"], report["metrics"]["pretrained"]["mse"]
    assert len(maml["mean"]) == 6 and len(maml["ci95"]) == 6 and report["tasks"] == 200
    # one inner step helps MAML a lot, and more than it helps the jointly pretrained network
    assert maml["mean"][1] < 0.6 * maml["mean"][0]
    assert maml["mean"][1] < 0.6 * pretrained["mean"][1]
    assert maml["mean"][5] < maml["mean"][1]
    assert json.loads((trained_run / "eval.json").read_text())["metrics"] == report["metrics"]
    # every task's value is kept (6 significant digits), for paired comparisons on the same tasks
    per_task = torch.tensor(maml["per_task"], dtype=torch.float64)
    assert per_task.shape == (6, 200)
    assert torch.allclose(per_task.mean(dim=1), torch.tensor(maml["mean"], dtype=torch.float64), rtol=1e-5)


def test_eval_table_shows_paired_differences_against_the_pretrained_baseline(trained_run, capsys):
    assert main(["eval", str(trained_run), "--tasks", "50", "--steps", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "mse: maml minus each method, task by task on the same tasks (paired)" in out
    assert "maml - pretrained" in out


def test_eval_table_of_many_steps_shows_a_bounded_set_of_rows_and_the_json_keeps_every_step(trained_run, capsys):
    assert main(["eval", str(trained_run), "--tasks", "5", "--steps", "200", "--no-progress", "--set",
                 "threads=1"]) == 0
    out = capsys.readouterr().out
    rows = [line.split()[0] for line in out.splitlines() if line.strip() and line.split()[0].isdigit()]
    mse_rows = [int(r) for r in rows[:len(rows) // 2]]  # the method table, then the paired table
    assert mse_rows[:11] == list(range(11)) and mse_rows[-1] == 200 and len(mse_rows) == 30
    assert mse_rows == sorted(set(mse_rows))
    assert "30 of the 201 step rows shown; --json prints every step" in out
    report = json.loads((trained_run / "eval.json").read_text())
    assert len(report["metrics"]["maml"]["mse"]["mean"]) == 201


def test_eval_shows_a_progress_bar_over_every_method_unless_told_not_to(trained_run, capsys):
    assert main(["eval", str(trained_run), "--tasks", "250", "--steps", "1", "--set", "threads=1"]) == 0
    err = capsys.readouterr().err
    assert "eval sinusoid" in err and "500/500" in err  # 250 tasks for maml and for pretrained, in chunks of 100
    assert main(["eval", str(trained_run), "--tasks", "250", "--steps", "1", "--no-progress"]) == 0
    assert "eval sinusoid" not in capsys.readouterr().err


def test_eval_table_and_plots(trained_run, capsys):
    assert main(["eval", str(trained_run), "--tasks", "20"]) == 0
    out = capsys.readouterr().out
    assert "maml" in out and "pretrained" in out and "±" in out
    assert main(["plot", str(trained_run)]) == 0
    for name in ("learning_curve.png", "metric_vs_steps.png", "adaptation.png"):
        path = trained_run / "plots" / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_plot_of_several_runs_writes_each_runs_figures_or_one_figure_of_their_curves(trained_run, tmp_path, capsys):
    copy = shutil.copytree(trained_run, tmp_path / "copy", ignore=shutil.ignore_patterns("plots"))
    assert main(["plot", str(trained_run), str(copy)]) == 0
    printed = capsys.readouterr().out.split()
    for run in (trained_run, copy):
        assert str(run / "plots" / "adaptation.png") in printed
    figure = tmp_path / "curves.png"
    assert main(["plot", str(trained_run), str(copy), "--figure", str(figure), "--x", "time"]) == 0
    assert capsys.readouterr().out.strip() == str(figure)
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 10_000


def test_eval_set_changes_the_meta_test_step_and_keeps_eval_json(trained_run, capsys):
    assert main(["eval", str(trained_run), "--tasks", "50", "--steps", "1", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)["metrics"]["maml"]["mse"]["mean"]
    saved = (trained_run / "eval.json").read_text()
    args = ["eval", str(trained_run), "--tasks", "50", "--steps", "1", "--json", "--set", "inner_lr=1e-6"]
    assert main(args) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    tiny = report["metrics"]["maml"]["mse"]["mean"]
    assert report["overrides"] == ["inner_lr=1e-6"] and "not saved" in captured.err
    assert tiny[0] == pytest.approx(plain[0])  # the same tasks and initialisation
    assert plain[1] < 0.6 * plain[0] and tiny[1] == pytest.approx(tiny[0], rel=1e-3)  # a step of 1e-6 does nothing
    assert (trained_run / "eval.json").read_text() == saved


def test_eval_set_threads_or_strategy_only_is_the_runs_own_report_and_saved(trained_run, capsys):
    """threads, workers, strategy and chunk_size change how meta-testing runs, not what it computes."""
    (trained_run / "eval.json").unlink(missing_ok=True)
    assert main(["eval", str(trained_run), "--tasks", "30", "--steps", "2", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    args = ["eval", str(trained_run), "--tasks", "30", "--steps", "2", "--json",
            "--set", "threads=1", "--set", "strategy=loop", "--set", "workers=2"]
    assert main(args) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert "overrides" not in report and "not saved" not in captured.err
    for method, metrics in plain["metrics"].items():
        assert report["metrics"][method]["mse"]["mean"] == pytest.approx(metrics["mse"]["mean"], rel=1e-4)
    assert json.loads((trained_run / "eval.json").read_text())["metrics"] == report["metrics"]
    # mixed with a protocol change, only that one is listed and nothing is saved
    args = ["eval", str(trained_run), "--tasks", "30", "--steps", "2", "--json",
            "--set", "threads=1", "--set", "inner_lr=1e-6"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["overrides"] == ["inner_lr=1e-6"]
    assert "meta-tested with inner_lr=1e-6; not saved" in captured.err
    assert json.loads((trained_run / "eval.json").read_text())["metrics"] == report["metrics"]


def test_eval_of_a_run_trained_on_cuda_uses_its_gpu_where_there_is_one_and_the_cpu_elsewhere(
    trained_run, tmp_path, capsys, monkeypatch
):
    """A run made with --device cuda is meta-tested on that GPU where the machine has one (the model
    used to stay on the CPU, even beside a GPU), and on the CPU elsewhere, e.g. a GPU run scored on a
    laptop; asking for CUDA with --set device=cuda where there is none is one clear error."""
    gpu_run = tmp_path / "gpu_run"
    shutil.copytree(trained_run, gpu_run)
    (gpu_run / "eval.json").unlink(missing_ok=True)
    config = json.loads((gpu_run / "config.json").read_text())
    config["config"]["device"] = "cuda"
    (gpu_run / "config.json").write_text(json.dumps(config))
    devices = []
    curves = evaluate_module.adaptation_curves

    def spy(wrapper, *args, **kwargs):
        devices.append({p.device.type for p in wrapper.parameters()})
        return curves(wrapper, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "adaptation_curves", spy)
    assert main(["eval", str(gpu_run), "--tasks", "40", "--steps", "2", "--json"]) == 0
    on_run_device = json.loads(capsys.readouterr().out)["metrics"]
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert devices == [{expected}, {expected}]  # maml and the pretrained baseline
    assert (gpu_run / "eval.json").is_file()
    # the sinusoid tasks are drawn on the CPU either way, so the numbers match the run's on its GPU;
    # the device says where meta-testing runs, not what it computes: the report is the run's own, saved
    assert main(["eval", str(gpu_run), "--tasks", "40", "--steps", "2", "--json", "--set", "device=cpu"]) == 0
    captured = capsys.readouterr()
    on_cpu = json.loads(captured.out)["metrics"]
    assert devices[-1] == {"cpu"}
    assert "overrides" not in json.loads(captured.out) and "not saved" not in captured.err
    assert json.loads((gpu_run / "eval.json").read_text())["metrics"] == on_cpu
    for method, metrics in on_cpu.items():
        assert on_run_device[method]["mse"]["mean"] == pytest.approx(metrics["mse"]["mean"], rel=1e-3)
    if not torch.cuda.is_available():
        assert main(["eval", str(gpu_run), "--tasks", "5", "--set", "device=cuda"]) == 2
        err = capsys.readouterr().err.strip()
        assert "sees no CUDA GPU" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "setting, message",
    [
        ("hidden=10,10", "eval --set cannot change 'hidden'"),
        ("iterations=5", "eval --set cannot change 'iterations'"),
        ("inner_lr=0", "inner_lr must be > 0"),
    ],
)
def test_eval_set_refuses_keys_that_do_not_belong_to_meta_testing(trained_run, capsys, setting, message):
    assert main(["eval", str(trained_run), "--tasks", "5", "--set", setting]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_presets_lists_sinusoid(capsys):
    assert main(["presets"]) == 0
    assert "sinusoid" in capsys.readouterr().out


@pytest.mark.skipif(cpu_compiler() is None,
                    reason="torch.compile's CPU backend needs a C++ compiler on PATH and there is none "
                           "(the eager fallback is tested in tests/unit/core/test_compile.py)")
def test_compile_on_trains_and_says_so_auto_stays_eager_for_short_runs(tmp_path, capsys):
    common = ["train", "sinusoid", "--iterations", "100", *FAST]
    assert main([*common, "--out", str(tmp_path / "on"), "--set", "compile=on"]) == 0
    if torch.__version__ >= (2, 5):
        assert "meta-loss compiled with torch.compile" in capsys.readouterr().out
    else:  # torch 2.4 cannot compile the meta-loss as one graph: it warns and trains eagerly
        assert "compiled" not in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "on" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["meta_loss"] < rows[0]["meta_loss"]
    assert main([*common, "--out", str(tmp_path / "auto")]) == 0  # 100 < 1,000 iterations: eager
    assert "compiled" not in capsys.readouterr().out


def test_adapt_fits_a_new_sine_from_ten_points(trained_run, tmp_path, capsys):
    xs = [-4.5 + 0.9 * i for i in range(11)]
    sine = lambda x: 3.0 * math.sin(x - 1.0)  # noqa: E731
    support, predict, out = tmp_path / "support.csv", tmp_path / "predict.csv", tmp_path / "out" / "p.csv"
    support.write_text("x,y\n" + "".join(f"{x},{sine(x)}\n" for x in xs[:10]))
    grid = [-5 + 0.25 * i for i in range(41)]
    predict.write_text("x,y,prediction\n" + "".join(f"{x},{sine(x)},old\n" for x in grid))
    assert main(["adapt", str(trained_run), "--support", str(support), "--predict", str(predict), "--out", str(out),
                 "--steps", "10"]) == 0
    summary = capsys.readouterr().out
    assert "adapted to 10 support points with 10 steps; wrote 41 predictions" in summary
    after, before = (float(part.split()[0]) for part in summary.split("MSE on those points ")[1].split(" ("))
    assert after < 0.5 * before  # ten points and ten steps fit the new sine far better than the initialisation
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 41 and list(rows[0]) == ["x", "y", "prediction", "y_prediction"]
    assert rows[0]["prediction"] == "old"
    mse = sum((float(r["y_prediction"]) - float(r["y"])) ** 2 for r in rows) / len(rows)
    assert mse == pytest.approx(after, rel=1e-3)

    support.write_text("x,z\n1,2\n")
    assert main(["adapt", str(trained_run), "--support", str(support), "--predict", str(predict), "--out", str(out)]) == 2
    assert "no column 'y'" in capsys.readouterr().err
    support.write_text("x,y\n1,two\n")
    assert main(["adapt", str(trained_run), "--support", str(support), "--predict", str(predict), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "line 2, column 'y': 'two' is not a finite number" in err and len(err.splitlines()) == 1
    support.write_text("x,y\n1,2\nnan,3\n")
    assert main(["adapt", str(trained_run), "--support", str(support), "--predict", str(predict), "--out", str(out)]) == 2
    assert "line 3, column 'x': 'nan' is not a finite number" in capsys.readouterr().err
    support.write_text("x,y\n1,2\n\n\n3,oops\n")  # blank lines count: the line a text editor shows
    assert main(["adapt", str(trained_run), "--support", str(support), "--predict", str(predict), "--out", str(out)]) == 2
    assert "line 5, column 'y': 'oops' is not a finite number" in capsys.readouterr().err
    # points to predict with y left empty are predicted, not refused; those with a y are scored
    support.write_text("x,y\n" + "".join(f"{x},{sine(x)}\n" for x in xs[:10]))
    predict.write_text("x,y\n0.5,\n1.5,\n2.5,1.0\n")
    assert main(["adapt", str(trained_run), "--support", str(support), "--predict", str(predict), "--out", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "wrote 3 predictions" in summary and "MSE on the 1 of 3 points with" in summary
    predict.write_text("x,y\n0.5,\n1.5,NA\n")
    assert main(["adapt", str(trained_run), "--support", str(support), "--predict", str(predict), "--out", str(out)]) == 0
    assert "MSE" not in capsys.readouterr().out and len(out.read_text().splitlines()) == 3
    # the rl flags, and a missing support set, get one line each
    assert main(["adapt", str(trained_run), "--goal", "1", "--out", str(out)]) == 2
    assert "--goal applies to rl runs; the sinusoid preset's runs adapt to --support" in capsys.readouterr().err
    assert main(["adapt", str(trained_run), "--predict", str(predict), "--out", str(out)]) == 2
    assert "adapt needs --support for a sinusoid run" in capsys.readouterr().err


def test_adapt_set_changes_the_step_size_and_refuses_other_keys(trained_run, tmp_path, capsys):
    support, predict = tmp_path / "support.csv", tmp_path / "predict.csv"
    support.write_text("x,y\n" + "".join(f"{x},{2 * math.sin(x)}\n" for x in (-3, -1, 0, 2, 4)))
    predict.write_text("x,y\n" + "".join(f"{x / 4},{2 * math.sin(x / 4)}\n" for x in range(-20, 21)))

    def adapt(*more: str) -> tuple[float, float]:
        assert main(["adapt", str(trained_run), "--support", str(support), "--predict", str(predict),
                     "--out", str(tmp_path / "p.csv"), *more]) == 0
        summary = capsys.readouterr().out
        after, before = (float(part.split()[0]) for part in summary.split("MSE on those points ")[1].split(" ("))
        return after, before

    after, before = adapt()
    assert after != before
    tiny = adapt("--set", "inner_lr=1e-12")
    assert tiny[1] == before and tiny[0] == pytest.approx(before, rel=1e-6)  # a step of ~0 leaves the initialisation
    assert adapt("--set", "inner_lr=0.001")[0] != after
    # a step size far too large: one line, nothing written (before: all-NaN predictions and exit 0)
    assert main(["adapt", str(trained_run), "--support", str(support), "--predict", str(predict),
                 "--out", str(tmp_path / "nan.csv"), "--set", "inner_lr=1e30", "--steps", "5"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("fastmaml: error: adapting for 5 steps at inner_lr 1e+30 made the weights inf or NaN; lower "
                   "--set inner_lr or --steps (nothing was written)") and not (tmp_path / "nan.csv").exists()
    assert main(["adapt", str(trained_run), "--support", str(support), "--predict", str(predict),
                 "--out", str(tmp_path / "p.csv"), "--set", "hidden=5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("fastmaml: error: adapt --set cannot change 'hidden'; keys that change how a SinusoidConfig run "
                   "adapts: inner_lr")


def test_snapshots_are_kept_every_n_iterations_and_meta_tested_on_their_own(tmp_path, capsys):
    """``snapshot_every`` keeps the checkpoint of every Nth iteration (the paper's RL numbers come
    from such a snapshot of a longer run); ``eval --iteration N`` meta-tests one and saves its report
    beside it, not as the run's eval.json."""
    from fastmaml.engine import checkpoint

    run, short = tmp_path / "snap", tmp_path / "short"
    common = ["train", "sinusoid", "--set", "meta_batch_size=4", "--set", "log_every=10", "--set",
              "checkpoint_every=25", "--no-progress"]
    assert main([*common, "--iterations", "30", "--set", "snapshot_every=10", "--out", str(run)]) == 0
    names = sorted(p.name for p in (run / "snapshots").iterdir())
    assert names == [f"iteration_0000{n}.safetensors" for n in (10, 20, 30)]
    # a snapshot is the checkpoint its iteration had: a run that stopped there saved the same tensors
    assert main([*common, "--iterations", "20", "--out", str(short)]) == 0
    (a, meta_a), (b, meta_b) = (checkpoint.load(path) for path in (run / "snapshots" / names[1],
                                                                   short / "checkpoint.safetensors"))
    assert meta_a["step"] == meta_b["step"] == 20 and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()
    assert main(["eval", str(run), "--iteration", "20", "--tasks", "20", "--steps", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["step"] == 20 and report["checkpoint"] == "iteration 20"
    saved = json.loads((run / "snapshots" / "iteration_000020.eval.json").read_text())
    assert saved["metrics"] == report["metrics"] and not (run / "eval.json").exists()
    assert main(["eval", str(short), "--tasks", "20", "--steps", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"] == report["metrics"]  # the same weights, the same report
    assert main(["eval", str(run), "--iteration", "15"]) == 2
    assert "no snapshot of iteration 15; it kept iterations 10, 20, 30" in capsys.readouterr().err
    assert main(["eval", str(short), "--iteration", "10"]) == 2
    assert "it kept none (train with --set snapshot_every=N" in capsys.readouterr().err
    # adapt from a snapshot: the same predictions as from the run that stopped at its iteration
    points = tmp_path / "points.csv"
    points.write_text("x,y\n" + "".join(f"{x / 2:.2f},{math.sin(x / 2):.4f}\n" for x in range(-8, 9)))
    outs = [tmp_path / "from_snapshot.csv", tmp_path / "from_short.csv"]
    assert main(["adapt", str(run), "--iteration", "20", "--support", str(points), "--predict", str(points),
                 "--out", str(outs[0])]) == 0
    assert main(["adapt", str(short), "--support", str(points), "--predict", str(points), "--out", str(outs[1])]) == 0
    assert outs[0].read_text() == outs[1].read_text()
    # snapshot_every may change on resume
    assert main(["train", "--resume", str(run), "--iterations", "40", "--set", "snapshot_every=5", "--no-progress"]) == 0
    assert len(list((run / "snapshots").glob("*.safetensors"))) == 5  # 10, 20, 30, 35, 40


@pytest.mark.parametrize("where", ["checkpoint.safetensors", "config.json", "metrics.jsonl", "eval.json",
                                   "best.safetensors", "snapshots/x.csv", "support", "predict"])
def test_adapt_never_writes_over_the_runs_files_or_its_inputs(trained_run, tmp_path, capsys, where):
    # an adapt --out RUN/checkpoint.safetensors once wrote its CSV there, exit 0, and the run was lost
    support, predict = tmp_path / "support.csv", tmp_path / "predict.csv"
    support.write_text("x,y\n" + "".join(f"{x},{math.sin(x)}\n" for x in range(5)))
    predict.write_text("x\n0.5\n1.5\n")
    out = {"support": support, "predict": predict}.get(where, trained_run / where)
    before = {p: p.read_bytes() for p in [*trained_run.rglob("*"), support, predict] if p.is_file()}
    assert main(["adapt", str(trained_run), "--support", str(support), "--predict", str(predict),
                 "--out", str(out)]) == 2
    assert "would overwrite" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in before} == before and not (trained_run / "best.safetensors").exists()
    # a new file directly in the run folder is allowed, and may be written again
    for _ in range(2):
        assert main(["adapt", str(trained_run), "--support", str(support), "--predict", str(predict),
                     "--out", str(trained_run / "predictions.csv")]) == 0
    (trained_run / "predictions.csv").unlink()


def test_bench_never_writes_its_report_over_a_runs_files(trained_run, capsys):
    # bench --out RUN/checkpoint.safetensors wrote its markdown there, exit 0; the next resume lost iterations
    checkpoint = trained_run / "checkpoint.safetensors"
    before = checkpoint.read_bytes()
    for out in (checkpoint, trained_run / "snapshots" / "report.md"):
        assert main(["bench", "--workloads", "sinusoid", "--repeats", "1", "--out", str(out)]) == 2
        assert "would overwrite a file of the run" in capsys.readouterr().err
    assert checkpoint.read_bytes() == before


def test_eval_refuses_a_single_task_and_a_non_finite_meta_test(trained_run, capsys):
    # one task reported a 95% interval of exactly 0; inner_lr=1e30 printed a table of nan (and NaN in --json)
    assert main(["eval", str(trained_run), "--tasks", "1", "--no-progress"]) == 2
    assert "--tasks must be >= 2 (a 95% interval needs two tasks or more), got 1" in capsys.readouterr().err
    saved = (trained_run / "eval.json").read_text() if (trained_run / "eval.json").exists() else None
    assert main(["eval", str(trained_run), "--tasks", "3", "--set", "inner_lr=1e30", "--json", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "maml's mse became nan after 1 inner step; lower the inner learning rate" in captured.err
    assert ((trained_run / "eval.json").read_text() if (trained_run / "eval.json").exists() else None) == saved


def test_a_smaller_eval_does_not_replace_the_runs_full_report(tmp_path, capsys, caplog):
    """`fastmaml eval RUN --tasks 10` silently replaced a 40-task eval.json, and `fastmaml compare`
    then refused the runs (tasks=40 against 10)."""
    run = tmp_path / "run"
    assert main(["train", "sinusoid", "--iterations", "20", "--set", "log_every=10", "--out", str(run),
                 "--no-progress"]) == 0
    assert main(["eval", str(run), "--tasks", "30", "--no-progress"]) == 0
    assert "saved to" in capsys.readouterr().err
    with caplog.at_level("WARNING"):
        assert main(["eval", str(run), "--tasks", "10", "--steps", "2", "--no-progress"]) == 0
    err = capsys.readouterr().err + caplog.text
    assert "a report of 10 tasks and 2 steps not saved" in err and "30 tasks and 10 steps" in err
    report = json.loads((run / "eval.json").read_text())
    assert (report["tasks"], report["steps"]) == (30, 10)
    assert main(["eval", str(run), "--tasks", "40", "--no-progress"]) == 0  # a larger one replaces it
    assert "(replacing the report there)" in capsys.readouterr().err
    assert json.loads((run / "eval.json").read_text())["tasks"] == 40


def test_a_first_order_run_says_so_when_it_ends(tmp_path, capsys):
    assert main(["train", "sinusoid", "--first-order", "--iterations", "5", "--no-progress",
                 "--out", str(tmp_path / "fo")]) == 0
    assert "trained sinusoid (first order) for 5 iterations" in capsys.readouterr().out


def test_verbose_logs_one_line_per_logged_row(tmp_path, caplog):
    """With --no-progress (a batch job) nothing was printed until the run ended, even with -v."""
    with caplog.at_level("INFO"):
        assert main(["-v", "train", "sinusoid", "--iterations", "20", "--set", "log_every=10", "--no-progress",
                     "--out", str(tmp_path / "run")]) == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("iteration ")]
    assert len(lines) == 2 and lines[0].startswith("iteration 10: meta_loss=") and "baseline_loss=" in lines[1]


def test_a_meta_sgd_run_refuses_another_inner_lr_in_eval_and_adapt(tmp_path, capsys):
    run = tmp_path / "meta-sgd"
    assert main(["train", "sinusoid", "--meta-sgd", "--iterations", "4", "--out", str(run), *FAST]) == 0
    support = tmp_path / "support.csv"
    support.write_text("x,y\n0,1\n1,2\n")
    capsys.readouterr()
    for args in (["eval", str(run), "--tasks", "5", "--no-progress"],
                 ["adapt", str(run), "--support", str(support), "--predict", str(support), "--out",
                  str(tmp_path / "p.csv")]):
        assert main([*args, "--set", "inner_lr=0.1"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == ("fastmaml: error: --set inner_lr: this Meta-SGD run learned its inner learning rates; they "
                       "are used")
    assert not (tmp_path / "p.csv").exists()


def test_a_diverging_meta_sgd_meta_test_suggests_fewer_steps_not_another_inner_lr():
    from fastmaml.engine.evaluate import check_finite_report
    from fastmaml.errors import NonFiniteLossError

    report = {"metrics": {"maml": {"mse": {"mean": [1.0, 0.5, 0.7, math.inf]}}}}
    with pytest.raises(NonFiniteLossError, match=r"after 3 inner steps; meta-test with fewer steps \(--steps 2\)"):
        check_finite_report(report, learned_lr=True)
    with pytest.raises(NonFiniteLossError, match=r"after 3 inner steps; lower the inner learning rate"):
        check_finite_report(report)
    report["metrics"]["maml"]["mse"]["mean"] = [1.0, math.nan]
    with pytest.raises(NonFiniteLossError, match="diverge in one step: meta-test an earlier snapshot"):
        check_finite_report(report, learned_lr=True)


def test_compare_refuses_sinusoid_runs_of_other_tasks(tmp_path, capsys):
    """Two sinusoid runs with other amplitude ranges were compared 'paired over the same tasks' (every
    sinusoid report is experiment 'sinusoid'); eval.json now says what drew its tasks (task_set)."""
    runs = {}
    for name, extra in (("a", []), ("b", []), ("small", ["--set", "amplitude=0.1,0.5"])):
        runs[name] = tmp_path / name
        assert main(["train", "sinusoid", "--iterations", "5", *extra, "--out", str(runs[name]), "--no-progress"]) == 0
        assert main(["eval", str(runs[name]), "--tasks", "5", "--steps", "1", "--no-progress"]) == 0
    assert json.loads((runs["small"] / "eval.json").read_text())["task_set"]["amplitude"] == [0.1, 0.5]
    capsys.readouterr()
    assert main(["compare", str(runs["a"]), str(runs["b"])]) == 0
    assert main(["compare", str(runs["a"]), str(runs["small"])]) == 2
    err = capsys.readouterr().err
    assert "were meta-tested on different tasks (amplitude [0.1, 0.5] against [0.1, 5.0])" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args, shots, queries, baseline_lr", [
    (["--shots", "5"], 5, 5, 0.01),
    (["--set", "shots=5"], 5, 5, 0.01),  # before: 10 query points and the K=10 baseline step, without a word
    (["--queries", "5"], 10, 5, 0.02),  # before: a TypeError traceback ("multiple values for 'queries'")
    (["--shots", "5", "--set", "queries=7"], 5, 7, 0.01),  # a derived key given too wins
    (["--set", "shots=20", "--set", "baseline_lr=0.005"], 20, 20, 0.005),
])
def test_set_shots_derives_the_same_settings_as_the_shots_flag(tmp_path, args, shots, queries, baseline_lr):
    run = tmp_path / "run"
    assert main(["train", "sinusoid", *args, "--out", str(run), "--iterations", "1", "--no-progress"]) == 0
    config = json.loads((run / "config.json").read_text())["config"]
    assert (config["shots"], config["queries"], config["baseline_lr"]) == (shots, queries, baseline_lr)


def test_set_ways_takes_the_20_way_omniglot_settings_as_the_ways_flag_does():
    """What cmd_train does with --set: its values go into make_config with the flags."""
    from fastmaml.config import parse_overrides
    from fastmaml.engine.experiment import get_preset

    preset = get_preset("omniglot")
    by_flag = preset.make_config(ways=20)
    by_set = preset.make_config(**parse_overrides(preset.config_cls, ["ways=20"]))
    assert by_set == by_flag and (by_set.meta_batch_size, by_set.inner_lr, by_set.inner_steps) == (16, 0.1, 5)


@pytest.mark.parametrize("which, text", [("predict", "x\n1\n1e39\n"), ("support", "x,y\n1,2\n3,1e39\n")])
def test_adapt_refuses_numbers_too_large_for_float32(trained_run, tmp_path, capsys, which, text):
    """1e39 is finite as a Python float and inf in float32: the prediction was NaN with exit 0 (or the
    error blamed the step size)."""
    files = {"support": tmp_path / "support.csv", "predict": tmp_path / "predict.csv"}
    files["support"].write_text("x,y\n1,2\n2,1\n")
    files["predict"].write_text("x\n1\n")
    files[which].write_text(text)
    capsys.readouterr()
    assert main(["adapt", str(trained_run), "--support", str(files["support"]), "--predict", str(files["predict"]),
                 "--out", str(tmp_path / "out.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{files[which]}, line 3, column " in err and "'1e39' is too large for float32" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "out.csv").exists()


def test_adapt_refuses_seed_for_a_run_that_is_not_rl(trained_run, tmp_path, capsys):
    """--seed (the action noise of an rl adapt) was taken and ignored; --goal, --method, --trajectories were refused."""
    points = tmp_path / "points.csv"
    points.write_text("x,y\n1,2\n")
    capsys.readouterr()
    assert main(["adapt", str(trained_run), "--support", str(points), "--predict", str(points), "--out",
                 str(tmp_path / "out.csv"), "--seed", "123"]) == 2
    assert "--seed applies to rl runs; the sinusoid preset's runs adapt to --support" in capsys.readouterr().err


def test_the_adaptation_figure_spans_the_runs_x_range(tmp_path, monkeypatch):
    """The axis was fixed at [-5, 5]: with x_range=0,20 most of the curve and support points fell outside."""
    import matplotlib.figure

    from fastmaml import plotting

    seen = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: seen.append(fig.axes[0].get_xlim()))
    x = torch.linspace(0, 20, 50)
    curves = {"maml": {"x": x, "truth": torch.sin(x), "support_x": x[::5], "support_y": torch.sin(x[::5]),
                       "predictions": {0: x * 0, 1: x * 0}}}
    plotting.sinusoid_adaptation(curves, tmp_path / "a.png")
    assert seen == [(0.0, 20.0)]


def test_a_quick_look_at_another_checkpoint_does_not_replace_the_full_report(tmp_path, capsys, caplog):
    """The guard kept only a report of the same iteration and kind: `eval --best --tasks 5` replaced a
    40-task report of the latest checkpoint, and a quick look at the latest then replaced that."""
    run = tmp_path / "run"
    assert main(["train", "sinusoid", "--iterations", "20", "--set", "val_every=10", "--set", "val_tasks=5",
                 "--set", "log_every=10", "--out", str(run), "--no-progress"]) == 0
    assert main(["eval", str(run), "--tasks", "40", "--no-progress"]) == 0
    with caplog.at_level("WARNING"):
        assert main(["eval", str(run), "--best", "--tasks", "5", "--no-progress"]) == 0
        assert main(["eval", str(run), "--tasks", "5", "--no-progress"]) == 0
    assert caplog.text.count("holds a report of 40 tasks and 10 steps (checkpoint at iteration 20)") == 2
    report = json.loads((run / "eval.json").read_text())
    assert (report["tasks"], report["checkpoint"], report["step"]) == (40, "checkpoint", 20)
    assert main(["eval", str(run), "--best", "--tasks", "40", "--no-progress"]) == 0  # as large: --best's becomes it
    assert json.loads((run / "eval.json").read_text())["checkpoint"] == "best"
