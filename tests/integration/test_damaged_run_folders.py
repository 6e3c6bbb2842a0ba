"""A run folder damaged by hand (a corrupt eval.json or config.json, a file where a folder belongs):
one line saying what is wrong and what to do, exit code 2, no traceback."""

import json
import os
import shutil

import pytest
from cli_helpers import one_error_line

from fastmaml import plotting
from fastmaml.cli import main
from fastmaml.engine.run_dir import keep_snapshot
from fastmaml.errors import CheckpointError, ConfigError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny sinusoid run with a checkpoint, a snapshot and an eval.json."""
    run = tmp_path_factory.mktemp("damaged") / "sin"
    fast = ["--set", "checkpoint_every=2", "--set", "log_every=2", "--set", "snapshot_every=2", "--no-progress"]
    assert main(["train", "sinusoid", "--out", str(run), "--iterations", "4", *fast]) == 0
    assert main(["eval", str(run), "--tasks", "5", "--no-progress"]) == 0
    return run


@pytest.fixture
def run(trained, tmp_path, capsys):
    """A copy of the tiny run, free to damage."""
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    capsys.readouterr()
    return copy


def test_plot_with_an_eval_json_that_is_not_json(run, capsys):
    (run / "eval.json").write_text('{"broken')
    err = one_error_line(["plot", str(run)], capsys)
    assert f"{run / 'eval.json'} is not a readable eval report" in err and f"run `fastmaml eval {run}` again" in err


def test_plot_with_an_eval_json_without_metrics(run, capsys):
    report = json.loads((run / "eval.json").read_text())
    report["metrics"] = {}
    (run / "eval.json").write_text(json.dumps(report))
    err = one_error_line(["plot", str(run)], capsys)
    assert "is not an eval report (no metrics)" in err and f"run `fastmaml eval {run}` again" in err


@pytest.mark.parametrize("damage, said", [
    (lambda m: m.pop("mean"), "maml mse lacks a list of numbers under 'mean' or 'ci95'"),
    (lambda m: m.update(ci95="wide"), "maml mse lacks a list of numbers under 'mean' or 'ci95'"),
    (lambda m: m.update(ci95=m["ci95"][:1]), "maml mse has 11 means and 1 intervals"),
])
@pytest.mark.parametrize("command", ["plot", "compare"])
def test_an_eval_json_edited_into_another_shape_is_one_line(run, command, damage, said, capsys):
    """A method's metric without "mean" (or a "ci95" that is not numbers) was a KeyError or
    TypeError traceback in compare and plot."""
    report = json.loads((run / "eval.json").read_text())
    assert len(report["metrics"]["maml"]["mse"]["mean"]) == 11  # 0 ... 10 steps
    damage(report["metrics"]["maml"]["mse"])
    (run / "eval.json").write_text(json.dumps(report))
    err = one_error_line([command, str(run)], capsys)
    assert f"{run / 'eval.json'} is not a readable eval report ({said}); run `fastmaml eval {run}` again" in err


def test_an_eval_json_without_its_iteration_is_one_line(run, capsys):
    report = json.loads((run / "eval.json").read_text())
    del report["step"]
    (run / "eval.json").write_text(json.dumps(report))
    err = one_error_line(["compare", str(run)], capsys)
    assert "not a readable eval report (no iteration: 'step' is missing or not a whole number)" in err


def test_metric_vs_steps_figure_of_a_report_without_metrics():
    for report in ({"metrics": {}}, {"metrics": {"maml": {}}}, {}):
        with pytest.raises(ConfigError, match="no metrics to plot; run `fastmaml eval RUN_DIR` again"):
            plotting.metric_vs_steps_figure(report)


def test_plot_where_plots_is_a_file(run, capsys):
    shutil.rmtree(run / "plots", ignore_errors=True)
    (run / "plots").write_text("not a folder")
    err = one_error_line(["plot", str(run)], capsys)
    assert f"{run / 'plots'} is a file, not a folder" in err and "move the file plots away" in err


def test_eval_where_eval_json_is_a_folder_keeps_the_report(run, capsys):
    (run / "eval.json").unlink()
    (run / "eval.json").mkdir()
    err = one_error_line(["eval", str(run), "--tasks", "5", "--no-progress"], capsys)
    tmp = f"eval.json.{os.getpid()}.tmp"
    assert f"{run / 'eval.json'} is a folder" in err and f"rename {tmp} to eval.json" in err
    assert json.loads((run / tmp).read_text())["tasks"] == 5  # the report is not lost


def test_an_eval_does_not_take_the_temporary_file_of_another_eval_of_the_run(run, capsys):
    """Two evals of one run at once wrote the same eval.json.tmp: one could rename the other's
    half-written file into place, or find it gone. Each writes its own now."""
    (run / "eval.json").unlink()
    other = run / "eval.json.tmp"  # another eval's report, being written under the name every eval used
    other.write_text('{"tasks": 7, "half')
    assert main(["eval", str(run), "--tasks", "5", "--no-progress"]) == 0
    assert json.loads((run / "eval.json").read_text())["tasks"] == 5
    assert other.read_text() == '{"tasks": 7, "half'
    assert sorted(p.name for p in run.glob("*.tmp")) == [other.name]


def test_resume_where_snapshots_is_a_file_fails_before_training(run, capsys):
    shutil.rmtree(run / "snapshots")
    (run / "snapshots").write_text("not a folder")
    metrics = (run / "metrics.jsonl").read_text()
    err = one_error_line(["train", "--resume", str(run), "--iterations", "8", "--no-progress"], capsys)
    assert f"{run / 'snapshots'} is a file, not a folder" in err and f"fastmaml train --resume {run}" in err
    assert (run / "metrics.jsonl").read_text() == metrics  # nothing trained


def test_keep_snapshot_where_snapshots_is_a_file(run):
    shutil.rmtree(run / "snapshots")
    (run / "snapshots").write_text("not a folder")
    with pytest.raises(CheckpointError, match="is a file, not a folder"):
        keep_snapshot(run, 4)


@pytest.mark.parametrize("command", [["eval"], ["plot"], ["train", "--iterations", "8", "--resume"]])
def test_config_json_that_is_not_utf8(run, command, capsys):
    (run / "config.json").write_bytes(b"\xff\xfe\x00bad")
    err = one_error_line([*command, str(run)], capsys)
    assert f"{run / 'config.json'} is unreadable (" in err and "restore it or start a new run" in err


@pytest.mark.parametrize("command", [["eval", "--tasks", "5"], ["plot"]])
def test_hand_edited_config_value_is_validated_as_train_resume_does(run, command, capsys):
    saved = json.loads((run / "config.json").read_text())
    saved["config"]["shots"] = -4
    (run / "config.json").write_text(json.dumps(saved))
    err = one_error_line([*command, str(run)], capsys)
    assert err == "fastmaml: error: shots must be >= 1, got -4"


def test_adapt_validates_a_hand_edited_config(run, tmp_path, capsys):
    saved = json.loads((run / "config.json").read_text())
    saved["config"]["shots"] = -4
    (run / "config.json").write_text(json.dumps(saved))
    points = tmp_path / "points.csv"
    points.write_text("x,y\n0.5,1.0\n")
    err = one_error_line(["adapt", str(run), "--support", str(points), "--predict", str(points),
                          "--out", str(tmp_path / "out.csv")], capsys)
    assert err == "fastmaml: error: shots must be >= 1, got -4"


def test_plot_says_when_eval_json_is_older_than_the_training(run, capsys, caplog):
    # eval.json from iteration 4; the run trained on to 8: plot drew iteration 4's figure without a word
    assert main(["train", "--resume", str(run), "--iterations", "8", "--no-progress"]) == 0
    assert main(["plot", str(run)]) == 0
    assert "meta-tests iteration 4 and the run has trained to 8; the steps figure shows 4" in caplog.text


def test_a_resume_from_prev_sets_the_unreadable_checkpoint_aside_so_prev_stays_good(run, capsys, caplog):
    """Before: the next save linked the unreadable newest file to checkpoint.prev, replacing the good
    one (and a kill between that save's two renames left no readable checkpoint at all)."""
    from fastmaml.engine import checkpoint

    good_prev = (run / "checkpoint.prev.safetensors").read_bytes()
    assert checkpoint.load(run / "checkpoint.prev.safetensors")[1]["step"] == 2
    data = (run / "checkpoint.safetensors").read_bytes()
    (run / "checkpoint.safetensors").write_bytes(data[: len(data) // 2])
    (run / ".checkpoint.safetensors.999.tmp").write_bytes(data[:100])  # a killed write's leftover
    assert main(["train", "--resume", str(run), "--iterations", "4", "--no-progress"]) == 0  # 2 -> 4, one save
    capsys.readouterr()
    # one warning that says what it does, not "delete it to fall back to ..." while falling back
    assert "is corrupt or not a fastmaml checkpoint (" in caplog.text and "fall back" not in caplog.text
    assert "using the previous checkpoint, " in caplog.text and "moved the unreadable" in caplog.text
    assert (run / "checkpoint.unreadable.safetensors").read_bytes() == data[: len(data) // 2]
    assert (run / "checkpoint.prev.safetensors").read_bytes() == good_prev  # the good one survived the save
    assert checkpoint.load(run / "checkpoint.safetensors")[1]["step"] == 4
    assert not list(run.glob(".*.tmp"))


def test_a_metrics_file_that_became_a_folder_is_one_line_with_exit_1(run, capsys):
    """OSErrors (a full disk, a folder made read-only) were tracebacks."""
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").mkdir()
    (run / "metrics.jsonl" / "x").write_text("")
    code = main(["train", "--resume", str(run), "--iterations", "6", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "metrics.jsonl" in err
    assert f"writable; the run continues from its last checkpoint with fastmaml train --resume {run}" in err


def test_a_kill_while_config_json_is_rewritten_leaves_the_old_file(run, monkeypatch):
    from fastmaml.engine import checkpoint
    from fastmaml.engine.run_dir import read_config, write_config

    before = (run / "config.json").read_text()
    preset, config = read_config(run)

    def killed(path, data):
        path.write_bytes(data[:10])
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "write_synced", killed)
    with pytest.raises(KeyboardInterrupt):
        write_config(run, preset.name, config)
    assert (run / "config.json").read_text() == before and not list(run.glob(".config.json.*"))


def test_a_file_system_without_hard_links_still_keeps_prev(run, monkeypatch):
    from fastmaml.engine import checkpoint

    def no_links(*_):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(checkpoint.os, "link", no_links)
    newest = (run / "checkpoint.safetensors").read_bytes()
    assert main(["train", "--resume", str(run), "--iterations", "5", "--no-progress"]) == 0
    assert (run / "checkpoint.prev.safetensors").read_bytes() == newest


def test_a_bad_row_inside_metrics_is_named(run, caplog):
    from fastmaml.engine.run_dir import read_metrics

    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    assert len(read_metrics(run)) == 1
    assert "line 2, is not a metrics row; the 1 rows after it are left out" in caplog.text
    caplog.clear()
    (run / "metrics.jsonl").write_text("\n".join([*lines, '{"step": 6, "meta_lo']))  # cut short by a kill: no news
    assert len(read_metrics(run)) == len(lines) and not caplog.text


def test_plot_of_a_failed_start_leaves_it_reusable(tmp_path, capsys):
    run = tmp_path / "failed"
    assert main(["train", "sinusoid", "--out", str(run), "--iterations", "2", "--set", "inner_lr=1e30",
                 "--no-progress"]) == 1
    capsys.readouterr()
    err = one_error_line(["plot", str(run)], capsys)
    assert "has no metrics yet" in err and not (run / "plots").exists()  # before: an empty plots/ was made


def test_a_checkpoint_without_a_runs_state_is_one_line(run, capsys):
    """A readable safetensors file whose metadata lacks the optimiser state was a KeyError traceback."""
    from fastmaml.engine import checkpoint

    tensors, meta = checkpoint.load(run / "checkpoint.safetensors")
    del meta["optimizers"]
    checkpoint.save(run / "checkpoint.safetensors", tensors, meta, keep_previous=False)
    err = one_error_line(["train", "--resume", str(run), "--iterations", "6", "--no-progress"], capsys)
    assert "does not hold a run's full state (KeyError: 'optimizers'); move checkpoint.safetensors away" in err
    (run / "checkpoint.safetensors").unlink()  # as it says: .prev (iteration 2) takes over
    assert main(["train", "--resume", str(run), "--iterations", "6", "--no-progress"]) == 0


def test_a_folder_fastmaml_did_not_write_is_never_cleared(tmp_path, capsys):
    """metrics.jsonl, plots/ and .tmp files are common names: without a run's config.json they are not ours."""
    foreign = tmp_path / "foreign"
    (foreign / "plots").mkdir(parents=True)
    (foreign / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    (foreign / "plots" / "curve.png").write_bytes(b"png")
    (foreign / ".notes.tmp").write_text("mine")
    err = one_error_line(["train", "sinusoid", "--out", str(foreign), "--iterations", "2", "--no-progress"], capsys)
    assert "is not empty and is not a fastmaml run folder" in err
    assert sorted(p.name for p in foreign.rglob("*")) == [".notes.tmp", "curve.png", "metrics.jsonl", "plots"]


def test_without_a_lock_the_rows_of_a_start_are_not_cleared(tmp_path, capsys, monkeypatch):
    """Where flock fails (some network file systems) a second start cannot tell whether the first still
    runs before its first checkpoint: it refuses instead of deleting that start's rows."""
    from fastmaml.engine import run_dir as run_dir_module

    run = tmp_path / "run"
    assert main(["train", "sinusoid", "--out", str(run), "--iterations", "4", "--set", "checkpoint_every=4",
                 "--set", "log_every=2", "--no-progress"]) == 0
    for name in ("checkpoint.safetensors", "checkpoint.prev.safetensors"):
        (run / name).unlink(missing_ok=True)
    (run / ".checkpoint.safetensors.77.tmp").write_bytes(b"its first checkpoint, killed mid-write")
    rows = (run / "metrics.jsonl").read_text()

    def no_locks(*_):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(run_dir_module.fcntl, "flock", no_locks)
    err = one_error_line(["train", "sinusoid", "--out", str(run), "--iterations", "4", "--no-progress"], capsys)
    assert "cannot lock the folder to tell whether it still runs" in err and (run / "metrics.jsonl").read_text() == rows


def test_a_second_unreadable_checkpoint_is_set_aside_beside_the_first(run, capsys):
    for garbage in (b"garbage 1", b"garbage 2"):
        (run / "checkpoint.safetensors").write_bytes(garbage)
        assert main(["train", "--resume", str(run), "--iterations", "4", "--no-progress"]) == 0
        # that save made a good newest checkpoint and kept the last good one as .prev
    assert (run / "checkpoint.unreadable.safetensors").read_bytes() == b"garbage 1"
    assert (run / "checkpoint.unreadable.2.safetensors").read_bytes() == b"garbage 2"


def test_a_state_error_from_prev_does_not_advise_prev(run, capsys):
    from fastmaml.engine import checkpoint

    tensors, meta = checkpoint.load(run / "checkpoint.prev.safetensors")
    del meta["optimizers"]
    checkpoint.save(run / "checkpoint.prev.safetensors", tensors, meta, keep_previous=False)
    (run / "checkpoint.safetensors").write_bytes(b"unreadable")
    err = one_error_line(["train", "--resume", str(run), "--iterations", "6", "--no-progress"], capsys)
    assert "checkpoint.prev.safetensors does not hold a run's full state" in err
    assert "restore a good checkpoint from a copy, or start a new run in another folder" in err


def test_an_os_error_that_is_not_about_files_keeps_its_traceback(monkeypatch):
    import errno

    from fastmaml import cli

    def refused(_):
        raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")

    monkeypatch.setitem(cli.COMMANDS, "presets", refused)
    with pytest.raises(ConnectionRefusedError):
        main(["presets"])


def test_a_finished_run_whose_checkpoints_are_gone_is_not_a_failed_start(tmp_path, capsys):
    """A run shorter than checkpoint_every logs its last row where its first checkpoint is due: with
    its checkpoints deleted it looked like a failed start, and --out deleted its rows and best checkpoint."""
    run = tmp_path / "run"
    assert main(["train", "sinusoid", "--out", str(run), "--iterations", "6", "--set", "log_every=2",
                 "--set", "val_every=3", "--set", "val_tasks=5", "--no-progress"]) == 0
    for name in ("checkpoint.safetensors", "checkpoint.prev.safetensors"):
        (run / name).unlink(missing_ok=True)
    best, rows = (run / "best.safetensors").read_bytes(), (run / "metrics.jsonl").read_text()
    capsys.readouterr()
    for args in (["train", "sinusoid", "--out", str(run), "--iterations", "6", "--no-progress"],
                 ["train", "--resume", str(run)]):
        err = one_error_line(args, capsys)
        assert "cannot be resumed or started again" in err and "copy best.safetensors to checkpoint.safetensors" in err
    assert (run / "best.safetensors").read_bytes() == best and (run / "metrics.jsonl").read_text() == rows


def test_a_start_killed_while_writing_its_config_starts_again(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".train.lock").write_text("123\n")
    (run / ".config.json.123.tmp").write_text('{"experiment": "sin')  # the write a kill cut short
    assert main(["train", "sinusoid", "--out", str(run), "--iterations", "2", "--no-progress"]) == 0
    assert not list(run.glob(".config.json.*"))


def test_checkpoint_metadata_that_is_not_an_object_is_unreadable(tmp_path):
    import safetensors.torch
    import torch

    from fastmaml.engine import checkpoint

    path = tmp_path / "c.safetensors"
    safetensors.torch.save_file({"x": torch.zeros(1)}, str(path), metadata={"format": checkpoint.FORMAT, "meta": "[1]"})
    with pytest.raises(CheckpointError, match="its metadata is a list, not an object"):
        checkpoint.load(path)


def test_a_resume_removes_a_killed_writes_leftover_beside_a_linked_metrics_file_but_not_a_live_ones(
        run, tmp_path, capsys):
    """metrics.jsonl linked to a file elsewhere is written through the link, so a write killed there
    leaves its temporary file beside the linked file, out of reach of the run folder's clean-up. A
    leftover of an ended process goes; one of a live process (another run sharing the file) stays."""
    import subprocess
    import sys

    kept = tmp_path / "logs"
    kept.mkdir()
    shutil.move(run / "metrics.jsonl", kept / "sin.jsonl")
    (run / "metrics.jsonl").symlink_to(kept / "sin.jsonl")
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True, check=True)
    (kept / f".sin.jsonl.{int(ended.stdout)}.tmp").write_text('{"step": 2, "meta_lo')
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (kept / f".sin.jsonl.{alive.pid}.tmp").write_text('{"step": 2')
        assert main(["train", "--resume", str(run), "--iterations", "4", "--no-progress"]) == 0
    finally:
        alive.kill()
        alive.wait()
    capsys.readouterr()
    assert sorted(p.name for p in kept.iterdir()) == [f".sin.jsonl.{alive.pid}.tmp", "sin.jsonl"]
    assert (run / "metrics.jsonl").is_symlink()
    assert [json.loads(line)["step"] for line in (kept / "sin.jsonl").read_text().splitlines()][-1] == 4


@pytest.mark.parametrize("command", [["eval", "--tasks", "5"], ["plot"], ["adapt"]])
def test_a_config_edited_since_the_checkpoint_is_refused_by_eval_plot_and_adapt(run, command, tmp_path, capsys):
    """eval built the meta-test from a hand-edited config.json (inner_lr 0.05 for the run's 0.01) and
    saved the report as the run's own; resume refused such an edit, eval, plot and adapt did not."""
    saved = json.loads((run / "config.json").read_text())
    saved["config"]["inner_lr"] = 0.05
    (run / "config.json").write_text(json.dumps(saved))
    (run / "eval.json").unlink()
    if command == ["adapt"]:
        points = tmp_path / "points.csv"
        points.write_text("x,y\n0.5,1.0\n")
        command = ["adapt", "--support", str(points), "--predict", str(points), "--out", str(tmp_path / "out.csv")]
    err = one_error_line([command[0], str(run), *command[1:]], capsys)
    assert f"{run}/config.json does not match the checkpoint checkpoint.safetensors" in err
    assert "inner_lr = 0.05 in config.json, 0.01 in the checkpoint" in err
    assert "edited by hand or the checkpoint is another run's; restore the one that changed" in err
    assert not (run / "eval.json").exists()
    saved["config"]["inner_lr"] = 0.01  # restored: a meta-test setting changes with --set, as the error says
    (run / "config.json").write_text(json.dumps(saved))
    assert main(["eval", str(run), "--tasks", "5", "--no-progress", "--set", "inner_lr=0.05"]) == 0


def test_a_snapshot_from_before_a_resume_that_extended_the_run_still_meta_tests(run, capsys):
    # iterations may change on resume: the snapshot's config says 4, config.json 6, and that is no edit
    assert main(["train", "--resume", str(run), "--iterations", "6", "--no-progress"]) == 0
    assert main(["eval", str(run), "--iteration", "2", "--tasks", "5", "--no-progress"]) == 0


def test_plot_without_a_checkpoint_draws_what_needs_no_model(run, capsys, caplog):
    """plot wrote learning_curve.png, then failed on the missing checkpoint (exit 2): now it draws the
    figures that need no model and says why the others are missing."""
    shutil.rmtree(run / "plots", ignore_errors=True)
    for name in ("checkpoint.safetensors", "checkpoint.prev.safetensors"):
        (run / name).unlink(missing_ok=True)
    assert main(["plot", str(run)]) == 0  # a run whose checkpoint went: eval.json still gives the steps figure
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["learning_curve.png", "metric_vs_steps.png"]
    assert "has no checkpoint (deleted or moved?): drew the learning curve and the steps figure of its eval.json" \
        in caplog.text and "restore its checkpoint.safetensors" in caplog.text
    # a start before its first checkpoint (due at 2): one row, nothing else; plot leaves it reusable
    caplog.clear()
    shutil.rmtree(run / "plots")
    shutil.rmtree(run / "snapshots")
    (run / "eval.json").unlink()
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    saved = json.loads((run / "config.json").read_text())
    saved["config"]["log_every"] = 1
    (run / "config.json").write_text(json.dumps(saved))
    (run / "metrics.jsonl").write_text('{"step": 1, "meta_loss": 3.0, "elapsed_s": 0.1}\n')
    assert main(["plot", str(run)]) == 0
    assert [p.name for p in (run / "plots").iterdir()] == ["learning_curve.png"]
    assert "has no checkpoint yet (the first is due at iteration 2): drew the learning curve;" in caplog.text
    assert main(["train", "sinusoid", "--out", str(run), "--iterations", "2", "--no-progress"]) == 0


def test_eval_refuses_more_threads_than_it_can_start(run, capsys):
    # torch.set_num_threads(100000) segfaulted: exit 139 and no message
    err = one_error_line(["eval", str(run), "--tasks", "5", "--set", "threads=100000"], capsys)
    assert "threads = 100000 is more threads than fastmaml starts (at most 1024)" in err


@pytest.mark.parametrize("edit, said", [
    ({"step": "4"}, 'step = "4", not an iteration count'),  # a TypeError traceback on resume
    ({"step": 4.0}, "step = 4.0, not an iteration count"),  # a ValueError traceback ({step:06d})
    ({"step": -5}, "step = -5, not an iteration count"),  # trained "from iteration -5", exit 0
    ({"elapsed_s": None}, "elapsed_s = null, not a time in seconds"),
    ({"metrics": {}}, "metrics is not a list of rows with an iteration each"),  # AttributeError traceback
    ({"best": 5}, "best = 5, not a validation result"),  # trained, then a TypeError traceback
    ({"experiment": "table"}, 'it holds a "table" run, this one is "sinusoid"'),  # resumed silently
    ({"config": None}, "its config is not a mapping of settings"),
])
@pytest.mark.parametrize("command", ["resume", "eval"])
def test_a_checkpoint_whose_metadata_was_edited_is_one_line(run, edit, said, command, capsys):
    """A readable checkpoint whose metadata holds values of other types than a run writes gave
    tracebacks later (or trained on, or saved a report "at iteration x"); now one line at load."""
    from fastmaml.engine import checkpoint

    for name in ("checkpoint.safetensors", "checkpoint.prev.safetensors"):
        tensors, meta = checkpoint.load(run / name)
        checkpoint.save(run / name, tensors, {**meta, **edit}, keep_previous=False)
    args = (["train", "--resume", str(run), "--iterations", "6", "--no-progress"] if command == "resume"
            else ["eval", str(run), "--tasks", "5", "--no-progress"])
    err = one_error_line(args, capsys)
    assert "checkpoint.safetensors does not hold a run's full state" in err and said in err, err


def test_eval_best_of_a_run_whose_validation_was_never_finite_says_so(run, capsys):
    """It said "only runs that validate keep one (train with --set val_every=N ...)" to a run that had
    validated: a NaN or inf validation is never the best, so none was kept."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (run / "metrics.jsonl").write_text("".join(json.dumps({**r, "val_mse": float("nan")}) + "\n" for r in rows))
    assert not (run / "best.safetensors").exists()
    err = one_error_line(["eval", str(run), "--best", "--tasks", "5"], capsys)
    assert f"kept no best checkpoint: its validation was never a finite number ({len(rows)} checks, the last at " \
           f"iteration {rows[-1]['step']}); drop --best" in err
