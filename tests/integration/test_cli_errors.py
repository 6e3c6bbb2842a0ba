"""Bad input: one line saying what is wrong and what to do, exit code 2, no traceback."""

import json
import subprocess
import sys

import pytest

from fastmaml.cli import main


def run_cli(args, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "sinus", "--out", "X"], "unknown preset 'sinus'; available: "),
        (["train", "sinusoid", "--out", "X", "--set", "lr=1"], "unknown config key 'lr'"),
        (["train", "sinusoid", "--out", "X", "--set", "inner_lr=-1"], "inner_lr must be > 0"),
        (["train", "sinusoid", "--out", "X", "--set", "outer_lr=0"], "outer_lr must be > 0"),
        (["train", "sinusoid", "--out", "X", "--shots", "0"], "shots must be >= 1"),
        (["train", "sinusoid", "--out", "X", "--inner-steps", "0"], "inner_steps must be >= 1"),
        (["train", "sinusoid", "--out", "X", "--ways", "5"], "preset 'sinusoid' has no option --ways"),
        (["train", "sinusoid"], "give exactly one of --out"),
        (["eval", "nowhere"], "not a fastmaml run folder"),
        (["train", "--resume", "nowhere"], "not a fastmaml run folder"),
        (["train", "sinusoid", "--out", "X", "--set", "device=tpu"], "unknown device 'tpu'; use cpu, cuda or cuda:N"),
        (["train", "sinusoid", "--out", "X", "--device", "cuda:x"], "unknown device 'cuda:x'"),
        (["train", "sinusoid", "--out", "X", "--set", "device=meta"], "device 'meta' is not one fastmaml runs on"),
        (["train", "rl", "--env", "nav2d", "--out", "X", "--set", "device=meta"], "'meta' is not one fastmaml runs on"),
        (["train", "rl", "--env", "nav2d", "--out", "X", "--set", "init_std=0"], "init_std must be > 0, got 0.0"),
        (["train", "sinusoid", "--out", "X", "--set", "hidden=40,0"], "hidden layer widths must be >= 1, got 40,0"),
        (["train", "rl", "--env", "nav2d", "--out", "X", "--set", "hidden=0"], "hidden layer widths must be >= 1"),
        (["bench", "--device", "tpu", "--workloads", "sinusoid"], "unknown device 'tpu'"),
        (["plot", "nowhere", "--tasks", "0"], "--tasks must be >= 2 (a 95% interval needs two tasks or more), got 0"),
        (["data", "omniglot", "--root", "x", "--url", "http://127.0.0.1:1/"], "--url names a mirror for fastmaml data"),
        # checked with the config, before the run folder is made (the model's own check left a folder behind)
        (["train", "sinusoid", "--out", "X", "--set", "activation=foo"], "activation must be one of relu, sigmoid, tanh"),
        (["train", "sinusoid", "--out", "X", "--seed", "99999999999999999999999"], "seed must be in [0, 2^63)"),
        (["train", "rl", "--env", "nav2d", "--out", "X", "--seed", "-1"], "seed must be in [0, 2^63), got -1"),
        # nan and inf passed checks written as x > 0 or x < 0 (max_kl=inf trained a policy that never moved)
        (["train", "rl", "--env", "nav2d", "--out", "X", "--set", "max_kl=inf"], "max_kl must be a finite number"),
        (["train", "rl", "--env", "nav2d", "--out", "X", "--set", "cg_damping=nan"], "cg_damping must be a finite"),
        (["train", "sinusoid", "--out", "X", "--set", "inner_lr=inf"], "inner_lr must be a finite number, got inf"),
        (["train", "sinusoid", "--out", "X", "--set", "x_range=-5,inf"], "x_range must be a finite number"),
        (["train", "rl", "--set", "env=cheetah-vel", "--out", "X"], "choose the environment with --env"),
        (["train", "rl", "--env", "nav2d", "--out", "X", "--set", "baselines=oracle,oracle"], "names oracle twice"),
        (["train", "rl", "--env", "nav2d", "--out", "X", "--set", "eval_tasks=1"], "eval_tasks must be >= 2"),
        # finite, but beyond float32 once Adam divides by 1 - beta1: a RuntimeError traceback (exit 1)
        (["train", "sinusoid", "--out", "X", "--set", "outer_lr=1e38"], "outer_lr = 1e+38 is beyond what float32"),
        (["train", "sinusoid", "--out", "X", "--meta-sgd", "--set", "inner_lr=1e39"], "inner_lr = 1e+39 is beyond"),
        (["train", "sinusoid", "--out", "X", "--set", "amplitude=0.1,1e31"], "amplitude = (0.1, 1e+31) is beyond"),
        # torch segfaulted (exit 139, no message) asked for 100,000 threads
        (["train", "sinusoid", "--out", "X", "--set", "threads=100000"], "threads = 100000 is more threads than"),
        (["train", "sinusoid", "--out", "X", "--set", "workers=5000"], "workers = 5000 is more threads than"),
        (["train", "rl", "--env", "cheetah-vel", "--out", "X", "--set", "sim_threads=2000"], "sim_threads = 2000 is"),
    ],
)
def test_bad_input_is_one_clear_line(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(args, capsys)
    assert code == 2
    assert message in err and err.startswith("fastmaml: error:") and len(err.splitlines()) == 1
    assert not (tmp_path / "X").exists()


def test_non_empty_out_unwritable_out_and_corrupt_checkpoint(tmp_path, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    code, err = run_cli(["train", "sinusoid", "--out", str(tmp_path / "busy")], capsys)
    assert code == 2 and "is not empty and is not a fastmaml run folder (no config.json of a run); choose a new" in err
    (tmp_path / "afile").write_text("x")
    code, err = run_cli(["train", "sinusoid", "--out", str(tmp_path / "afile" / "run")], capsys)
    assert code == 2 and "cannot write to --out" in err
    run = tmp_path / "run"
    fast = ["--iterations", "4", "--set", "checkpoint_every=2", "--set", "log_every=2", "--no-progress"]
    assert main(["train", "sinusoid", "--out", str(run), *fast]) == 0
    for name in ("checkpoint.safetensors", "checkpoint.prev.safetensors"):
        (run / name).write_bytes(b"not a checkpoint")
    code, err = run_cli(["eval", str(run), "--tasks", "5"], capsys)
    assert code == 2 and "corrupt or not a fastmaml checkpoint" in err and len(err.splitlines()) == 1
    assert "(the previous checkpoint" in err and "cannot be read either)" in err  # no warning promising it first
    assert "fall back to" not in err and "restore it from a copy, or start a new run" in err
    (run / "snapshots").mkdir()
    for step in (2, 4):
        (run / "snapshots" / f"iteration_{step:06d}.safetensors").write_bytes(b"kept")
    code, err = run_cli(["eval", str(run), "--tasks", "5"], capsys)
    assert f"copy the newest snapshot, {run / 'snapshots' / 'iteration_000004.safetensors'}, to" in err
    code, err = run_cli(["train", "--resume", str(run), "--set", "inner_lr=0.5"], capsys)
    assert code == 2 and "a resumed run keeps its config" in err


def test_resume_may_change_how_not_what_is_computed(tmp_path, capsys):
    run = tmp_path / "run"
    fast = ["--set", "checkpoint_every=2", "--set", "log_every=2", "--no-progress"]
    assert main(["train", "sinusoid", "--out", str(run), "--iterations", "2", *fast]) == 0
    assert main(["train", "--resume", str(run), "--iterations", "4", "--set", "micro_batch_size=5",
                 "--set", "workers=1", "--set", "cuda_graph=false", "--set", "tf32=true", "--no-progress"]) == 0
    assert [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [2, 4]
    code, err = run_cli(["train", "--resume", str(run), "--set", "meta_batch_size=5"], capsys)
    assert code == 2 and "meta_batch_size" in err


def test_no_traceback_from_the_installed_command(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fastmaml", "train", "nope", "--out", str(tmp_path / "r")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("fastmaml: error: unknown preset")


def test_a_hand_edited_config_is_one_clear_line_and_keeps_the_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "sinusoid", "--out", str(run), "--iterations", "2", "--set", "checkpoint_every=2",
                 "--no-progress"]) == 0
    saved = json.loads((run / "config.json").read_text())
    weights = (run / "checkpoint.safetensors").read_bytes()

    def edited(**changes):
        (run / "config.json").write_text(json.dumps({**saved, "config": {**saved["config"], **changes}}))

    edited(inner_lr="fast")  # before: a TypeError traceback from validate()
    for args in (["eval", str(run), "--tasks", "5"], ["train", "--resume", str(run), "--no-progress"]):
        code, err = run_cli(args, capsys)
        assert code == 2 and len(err.splitlines()) == 1
        assert 'config.json is unreadable (inner_lr = "fast" is not a float)' in err
    edited(hidden=[10])  # before: torch's state_dict size-mismatch traceback
    code, err = run_cli(["eval", str(run), "--tasks", "5"], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    # before: "do not fit the model that its config.json describes"; now the config is compared first
    assert "config.json does not match the checkpoint checkpoint.safetensors (hidden = [10] in config.json, " \
        "[40, 40] in the checkpoint)" in err
    # train --resume compares config.json with the config the checkpoint holds; before, a changed
    # value that left the shapes alone (inner_lr) trained on silently with it
    for change, shown in (({"hidden": [10]}, "hidden = [10] in config.json, [40, 40] in the checkpoint"),
                          ({"inner_lr": 0.05}, "inner_lr = 0.05 in config.json, 0.01 in the checkpoint")):
        edited(**change)
        code, err = run_cli(["train", "--resume", str(run), "--iterations", "4", "--no-progress"], capsys)
        assert code == 2 and len(err.splitlines()) == 1
        assert f"config.json does not match the checkpoint it resumes from ({shown})" in err
    edited(iterations=3, log_every=1)  # the schedule may change
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    weights = (run / "checkpoint.safetensors").read_bytes()
    edited(hidden=[10])
    assert run_cli(["train", "--resume", str(run), "--iterations", "4", "--no-progress"], capsys)[0] == 2
    assert (run / "checkpoint.safetensors").read_bytes() == weights
    edited(iterations=2.5, hidden=[40, 40])
    code, err = run_cli(["eval", str(run), "--tasks", "5"], capsys)
    assert code == 2 and "iterations = 2.5 is not a int" in err
    edited(x_range=[-5, 5], hidden=[40, 40])  # an int where a float is due is fine (JSON writes 5.0, people 5)
    assert main(["eval", str(run), "--tasks", "5", "--steps", "1", "--no-progress"]) == 0


def test_a_reader_that_leaves_early_is_no_traceback():
    # `fastmaml presets | head -1`, `fastmaml eval RUN | head`: before, a BrokenPipeError traceback
    proc = subprocess.Popen([sys.executable, "-m", "fastmaml", "presets"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and "Traceback" not in err and err == "", err


def test_console_warnings_go_through_tqdm_only_where_logging_writes_to_the_console(monkeypatch):
    """A warning during a progress bar gets a line of its own (tqdm.write) when the CLI's logging
    writes to the console; logging an embedding program or pytest set up is left as it is."""
    import logging
    import sys

    from fastmaml import cli

    root = logging.getLogger()
    console = logging.StreamHandler(sys.stderr)
    monkeypatch.setattr(root, "handlers", [console])
    with cli._warnings_beside_progress_bars():
        assert len(root.handlers) == 1 and type(root.handlers[0]).__name__ == "_TqdmLoggingHandler"
    assert root.handlers == [console]
    other = logging.NullHandler()
    monkeypatch.setattr(root, "handlers", [other])
    with cli._warnings_beside_progress_bars():
        assert root.handlers == [other]


def test_ctrl_c_outside_train_says_only_that_it_was_interrupted(monkeypatch, capsys):
    from fastmaml import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "presets", interrupted)
    assert cli.main(["presets"]) == 130
    assert capsys.readouterr().err == "fastmaml: interrupted\n"


@pytest.mark.parametrize("world", [1, 2])
def test_only_a_torchrun_process_losing_a_peer_is_one_line(monkeypatch, capsys, world):
    """gloo's "Connection reset by peer" under torchrun (another process stopped) is one line with the
    way on; outside torchrun, and for any other RuntimeError, the traceback stays (a bug to see)."""
    from fastmaml import cli

    gloo = RuntimeError("[/x/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:3477: Connection reset by peer. "
                        "This is typically caused by a remote worker hanging")

    def raising(error):
        def command(args):
            raise error
        return command

    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("RANK", str(world - 1))
    monkeypatch.setitem(cli.COMMANDS, "train", raising(gloo))
    if world == 1:
        with pytest.raises(RuntimeError, match="Connection reset by peer"):
            cli.main(["train", "sinusoid"])
        return
    assert cli.main(["train", "sinusoid"]) == 1
    assert capsys.readouterr().err == (
        "fastmaml: error: another process of this torchrun job stopped; rank 1 lost it (Read error "
        "[127.0.0.1]:3477: Connection reset by peer); that process's output or torchrun's report says why; the run "
        "continues from its last checkpoint with fastmaml train --resume RUN_DIR\n")
    monkeypatch.setitem(cli.COMMANDS, "train", raising(RuntimeError("mat1 and mat2 shapes cannot be multiplied")))
    with pytest.raises(RuntimeError, match="shapes"):
        cli.main(["train", "sinusoid"])


def test_a_start_that_failed_before_its_first_checkpoint_may_start_again_in_its_folder(tmp_path, capsys):
    # a NaN meta-loss at once left config.json behind: a new run there was "not empty, use --resume", and
    # --resume "has no checkpoint, use a new --out"
    run = tmp_path / "run"
    fast = ["--iterations", "4", "--set", "checkpoint_every=2", "--set", "log_every=2", "--no-progress"]
    code, err = run_cli(["train", "sinusoid", "--out", str(run), *fast, "--set", "inner_lr=1e30"], capsys)
    assert code == 1 and "meta-loss became nan" in err and (run / "config.json").is_file()
    code, err = run_cli(["train", "--resume", str(run)], capsys)
    assert code == 2 and f"--out {run} (a folder that holds only a failed start is reused)" in err
    assert main(["train", "sinusoid", "--out", str(run), *fast]) == 0
    assert json.loads((run / "config.json").read_text())["config"]["inner_lr"] == 0.01
    # a folder holding someone else's config.json is not taken over
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"mine": 1}')
    code, err = run_cli(["train", "sinusoid", "--out", str(other), *fast], capsys)
    assert code == 2 and "is not a fastmaml run folder" in err and (other / "config.json").read_text() == '{"mine": 1}'
    # a run with logged rows but no checkpoint, killed while writing its first (rows up to iteration 4,
    # its first checkpoint due at 4), starts again there too, its rows and the killed write's file gone
    killed = tmp_path / "killed"
    assert main(["train", "sinusoid", "--out", str(killed), *fast, "--set", "checkpoint_every=4"]) == 0
    for name in ("checkpoint.safetensors", "checkpoint.prev.safetensors"):
        (killed / name).unlink(missing_ok=True)
    (killed / ".checkpoint.safetensors.999.tmp").write_bytes(b"half a checkpoint")
    assert [json.loads(r)["step"] for r in (killed / "metrics.jsonl").read_text().splitlines()] == [2, 4]
    code, err = run_cli(["train", "--resume", str(killed)], capsys)
    assert code == 2 and f"--out {killed} (a folder that holds only a failed start is reused)" in err
    assert main(["train", "sinusoid", "--out", str(killed), *fast, "--iterations", "6"]) == 0
    assert [json.loads(r)["step"] for r in (killed / "metrics.jsonl").read_text().splitlines()] == [2, 4, 6]
    assert not (killed / ".checkpoint.safetensors.999.tmp").exists()
    # a folder with a checkpoint is a run to resume
    code, err = run_cli(["train", "sinusoid", "--out", str(run), *fast], capsys)
    assert code == 2 and f"is not empty; continue that run with --resume {run}" in err
    # a run whose rows go past its first checkpoint has lost its checkpoints: neither command takes it
    (run / "checkpoint.safetensors").unlink()
    (run / "checkpoint.prev.safetensors").unlink(missing_ok=True)
    rows = (run / "metrics.jsonl").read_text()
    for args in (["train", "--resume", str(run)], ["train", "sinusoid", "--out", str(run), *fast]):
        code, err = run_cli(args, capsys)
        assert code == 2 and "cannot be resumed or started again: it holds more than a start" in err
        assert "(its rows go to iteration 4)" in err and "delete (or move away) the folder" in err
    assert (run / "metrics.jsonl").read_text() == rows


def test_running_out_of_memory_is_one_line(monkeypatch, capsys, tmp_path):
    from fastmaml.engine import trainer

    def allocate(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 40000000000 bytes.")

    monkeypatch.setattr(trainer, "train", allocate)
    code, err = run_cli(["train", "sinusoid", "--out", str(tmp_path / "run"), "--no-progress"], capsys)
    assert code == 1 and len(err.splitlines()) == 1
    assert err.startswith("fastmaml: error: out of memory; make the model, meta_batch_size") and "40000000000" in err


def test_where_a_loss_went_wrong_reads_well():
    from fastmaml.errors import iterations_span

    assert iterations_span(2, 2) == "at iteration 2"  # was "between iterations 2 and 2"
    assert iterations_span(1, 20) == "between iterations 1 and 20"


def test_rl_returns_that_blow_up_are_one_line_that_names_the_kept_checkpoint(tmp_path, capsys):
    # inner_lr=1e30: the adapted policy's returns are NaN and the linear baseline fit refused them with a
    # ValueError traceback
    code, err = run_cli(["train", "rl", "--env", "nav2d", "--iterations", "4", "--set", "inner_lr=1e30",
                         "--set", "meta_batch_size=2", "--set", "trajectories=2", "--set", "baselines=",
                         "--out", str(tmp_path / "run"), "--no-progress"], capsys)
    assert code == 1 and len(err.splitlines()) == 1 and "linear baseline cannot be fitted" in err
    assert "(at iteration 1); training stopped and no checkpoint had been written yet" in err


def test_a_meta_gradient_that_overflows_while_the_loss_stays_finite_stops_the_run(tmp_path, capsys):
    """inner_lr 1e4: meta-losses of 1e25-1e34, an inf meta-gradient that made Adam's state inf (the
    weights then never moved again); before, the run ended with exit 0 and inf in every checkpoint."""
    from fastmaml.engine import checkpoint

    run = tmp_path / "run"
    fast = ["--iterations", "6", "--set", "checkpoint_every=2", "--set", "log_every=2", "--no-progress"]
    assert main(["train", "sinusoid", "--out", str(run), *fast]) == 0
    for clip, mode in (("0", "norm"), ("1", "norm")):  # clipping does not help here: not advised
        advice = "Lower inner_lr or outer_lr, then start a new run."
        out = tmp_path / f"clip{clip}{mode}"
        code, err = run_cli(["train", "sinusoid", "--out", str(out), *fast, "--set", "inner_lr=1e4",
                             "--set", f"grad_clip={clip}", "--set", f"grad_clip_mode={mode}"], capsys)
        assert code == 1 and "the meta-gradient overflowed (inf or NaN) while the meta-loss was " in err, err
        assert advice in err and not (out / "checkpoint.safetensors").exists()
    tensors, _ = checkpoint.load(run / "checkpoint.safetensors")
    assert all(bool(t.isfinite().all()) for t in tensors.values() if t.is_floating_point())
    # clipping each element (the original's rule) keeps that meta-gradient finite (its elements are
    # finite; only its norm overflowed): nothing overflows, the run goes on with the meta-losses it has
    out = tmp_path / "value"
    code, err = run_cli(["train", "sinusoid", "--out", str(out), *fast, "--set", "inner_lr=1e4",
                         "--set", "grad_clip=1", "--set", "grad_clip_mode=value"], capsys)
    assert code == 0, err
    tensors, _ = checkpoint.load(out / "checkpoint.safetensors")
    assert all(bool(t.isfinite().all()) for t in tensors.values() if t.is_floating_point())


def test_importing_the_package_does_not_import_torch():
    """So the command can answer a Ctrl-C during torch's import (about a second) without a traceback."""
    code = "import sys, fastmaml; assert 'torch' not in sys.modules; from fastmaml import MAML, TaskBatch; print(MAML)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "fastmaml.algorithms.maml.MAML" in proc.stdout, proc.stderr


def test_a_ctrl_c_while_the_command_imports_is_one_line(monkeypatch, capsys):
    import types

    from fastmaml import _entry

    class Interrupted(types.ModuleType):
        def __getattr__(self, name):
            raise KeyboardInterrupt  # what a Ctrl-C during `import torch` raises there

    monkeypatch.setitem(sys.modules, "fastmaml.cli", Interrupted("fastmaml.cli"))
    with pytest.raises(SystemExit) as stop:
        _entry.run()
    assert stop.value.code == 130 and capsys.readouterr().err == "fastmaml: interrupted\n"


def test_eval_seed_out_of_range_is_one_line(tmp_path, capsys):
    """eval --seed past 2^63 overflowed inside torch with a traceback; -1 was taken silently."""
    run = tmp_path / "run"
    assert main(["train", "sinusoid", "--out", str(run), "--iterations", "2", "--no-progress"]) == 0
    for seed in ("99999999999999999999", "-1"):
        code, err = run_cli(["eval", str(run), "--tasks", "5", "--seed", seed], capsys)
        assert code == 2 and err.strip() == f"fastmaml: error: seed must be in [0, 2^63), got {seed}"
