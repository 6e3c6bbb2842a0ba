"""Runs that survive: exact resume (also after SIGKILL), NaN stops with the last checkpoint kept."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fastmaml.cli import main
from fastmaml.engine import checkpoint
from fastmaml.engine.experiment import PRESETS, Preset, register
from fastmaml.engine.run_dir import training_lock
from fastmaml.experiments import sinusoid

FAST = ["--set", "meta_batch_size=5", "--set", "log_every=10", "--no-progress"]


def weights(run):
    tensors, meta = checkpoint.load(run / "checkpoint.safetensors")
    return tensors, meta["step"]


def assert_bit_identical(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_n_steps_resume_m_steps_equals_n_plus_m(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    common = ["train", "sinusoid", *FAST, "--set", "checkpoint_every=20", "--set", "val_every=20", "--set", "val_tasks=5"]
    assert main([*common, "--iterations", "60", "--out", str(full)]) == 0
    assert main([*common, "--iterations", "40", "--out", str(part)]) == 0
    assert main(["train", "--resume", str(part), "--iterations", "60", "--no-progress"]) == 0
    (a, step_a), (b, step_b) = weights(full), weights(part)
    assert step_a == step_b == 60
    assert_bit_identical(a, b)  # weights, optimiser moments, RNG streams
    assert (full / "metrics.jsonl").read_text() == _without_elapsed(part / "metrics.jsonl", full / "metrics.jsonl")


def _without_elapsed(path, reference):
    import json

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    ref = [json.loads(line) for line in reference.read_text().splitlines()]
    for row, r in zip(rows, ref):
        row["elapsed_s"] = r["elapsed_s"]
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    killed, full = tmp_path / "killed", tmp_path / "full"
    args = ["train", "sinusoid", "--iterations", "1500", *FAST, "--set", "checkpoint_every=50"]
    assert main([*args, "--out", str(full)]) == 0
    proc = subprocess.Popen([sys.executable, "-m", "fastmaml", *args, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (killed / "checkpoint.prev.safetensors").exists():
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _, step = checkpoint.load_latest(killed / "checkpoint.safetensors")[:2]
    assert 0 < step["step"] < 1500, "the run should have been killed mid-way"
    assert main(["train", "--resume", str(killed), "--no-progress"]) == 0
    assert_bit_identical(weights(full)[0], weights(killed)[0])


@pytest.fixture
def nan_preset():
    """Sinusoid whose targets turn NaN after 25 meta-batches."""

    def build(config):
        experiment = sinusoid.build(config)
        original, calls = experiment.sample, [0]

        def sample(generator, split, num_tasks):
            batch = original(generator, split, num_tasks)
            calls[0] += split == "train"
            if calls[0] > 25:
                batch = batch._replace(query_y=batch.query_y * float("nan"))
            return batch

        experiment.sample = sample
        return experiment

    preset = register(Preset("nan-test", sinusoid.SinusoidConfig, sinusoid.make_config, build, "test only"))
    yield preset
    PRESETS.pop("nan-test")


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, nan_preset, capsys):
    run = tmp_path / "nan"
    code = main(["train", "nan-test", "--iterations", "100", *FAST, "--set", "checkpoint_every=20", "--out", str(run)])
    err = capsys.readouterr().err
    assert code == 1
    assert "meta-loss became nan" in err and "last good checkpoint (iteration 20)" in err
    assert len(err.strip().splitlines()) == 1
    tensors, step = weights(run)
    assert step == 20 and all(torch.isfinite(t).all() for k, t in tensors.items() if k.startswith("maml/"))


def test_non_finite_loss_before_the_first_checkpoint_says_none_is_kept(tmp_path, nan_preset, capsys):
    """A run failing before its first checkpoint must not claim one is kept."""
    run = tmp_path / "nan-early"
    code = main(["train", "nan-test", "--iterations", "100", *FAST, "--set", "checkpoint_every=50", "--out", str(run)])
    err = capsys.readouterr().err
    assert code == 1
    assert "no checkpoint had been written yet (the first was due at iteration 50)" in err
    assert "last good checkpoint" not in err and len(err.strip().splitlines()) == 1
    assert not list(run.glob("checkpoint*"))


def test_a_resume_that_would_not_train_says_so_and_changes_nothing(tmp_path, capsys):
    """--iterations below the checkpoint's step is an error that leaves the run as it was (before, the
    run's config.json took the smaller number); a resume of a finished run says there is nothing to
    do; a real continuation says from where to where."""
    run = tmp_path / "run"
    assert main(["train", "sinusoid", *FAST, "--iterations", "20", "--out", str(run)]) == 0
    before = {name: (run / name).read_bytes() for name in ("config.json", "metrics.jsonl", "checkpoint.safetensors")}
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--iterations", "10", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{run} is at iteration 20, past the 10 iterations asked for; give --iterations above 20" in err
    assert len(err.splitlines()) == 1
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert f"{run} has already trained its 20 iterations: nothing to train" in capsys.readouterr().out
    assert {name: (run / name).read_bytes() for name in before} == before
    assert main(["train", "--resume", str(run), "--iterations", "30", "--no-progress"]) == 0
    assert "trained sinusoid from iteration 20 to 30 (" in capsys.readouterr().out
    assert weights(run)[1] == 30


def test_a_run_being_trained_cannot_be_resumed_twice(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "sinusoid", "--out", str(run), "--iterations", "2", "--set", "checkpoint_every=2",
                 "--no-progress"]) == 0
    before = {name: (run / name).read_bytes() for name in ("checkpoint.safetensors", "metrics.jsonl", "config.json")}
    with training_lock(run):  # what a training process holds (another process's lock behaves the same)
        code = main(["train", "--resume", str(run), "--iterations", "4", "--no-progress"])
        err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"{run} is being trained by another process (pid {os.getpid()})" in err
    assert {name: (run / name).read_bytes() for name in before} == before  # nothing written
    assert main(["train", "--resume", str(run), "--iterations", "4", "--no-progress"]) == 0  # released


@pytest.fixture
def signalling_preset():
    """Sinusoid that sends its own process ``signals`` while drawing the 25th meta-batch: as a
    scheduler's SIGTERM or a Ctrl-C arriving in the middle of iteration 25."""
    signals = []

    def build(config):
        experiment = sinusoid.build(config)
        original, calls = experiment.sample, [0]

        def sample(generator, split, num_tasks):
            calls[0] += split == "train"
            if calls[0] == 25 and split == "train":
                for sig in signals:
                    os.kill(os.getpid(), sig)
            return original(generator, split, num_tasks)

        experiment.sample = sample
        return experiment

    register(Preset("signal-test", sinusoid.SinusoidConfig, sinusoid.make_config, build, "test only"))
    yield signals
    PRESETS.pop("signal-test")


def test_sigterm_saves_where_it_stopped_and_resume_is_bit_identical(tmp_path, signalling_preset, capsys):
    """The run finishes iteration 25, logs it and saves a checkpoint there (the periodic ones are
    every 20), exits 143 with one line; resumed, it ends bit-identical to a run never stopped."""
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    args = ["--iterations", "60", *FAST, "--set", "checkpoint_every=20"]
    assert main(["train", "sinusoid", *args, "--out", str(full)]) == 0
    capsys.readouterr()
    signalling_preset.append(signal.SIGTERM)
    assert main(["train", "signal-test", *args, "--out", str(stopped)]) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"fastmaml: stopped by SIGTERM at iteration 25, with a checkpoint there in {stopped}; "
                       f"continue with: fastmaml train --resume {stopped}")
    assert weights(stopped)[1] == 25
    assert [json.loads(line)["step"] for line in (stopped / "metrics.jsonl").read_text().splitlines()] == [10, 20, 25]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone with the run
    signalling_preset.clear()  # the resumed run draws its own 25th batch
    assert main(["train", "--resume", str(stopped), "--no-progress"]) == 0
    (a, step_a), (b, step_b) = weights(full), weights(stopped)
    assert step_a == step_b == 60
    assert_bit_identical(a, b)


def test_a_second_ctrl_c_stops_at_once_and_keeps_the_last_checkpoint(tmp_path, signalling_preset, capsys):
    run = tmp_path / "run"
    signalling_preset.extend([signal.SIGINT, signal.SIGINT])
    assert main(["train", "signal-test", "--iterations", "60", *FAST, "--set", "checkpoint_every=20",
                 "--out", str(run)]) == 130
    assert "interrupted; the run continues from its last checkpoint with fastmaml train --resume" in (
        capsys.readouterr().err)
    assert weights(run)[1] == 20


def test_a_second_ctrl_c_before_the_first_checkpoint_says_there_is_none(tmp_path, signalling_preset, capsys):
    """It promised a checkpoint that did not exist (and --resume then found none); the same --out
    starts the run again, though the stopped start logged rows there."""
    run = tmp_path / "run"
    signalling_preset.extend([signal.SIGINT, signal.SIGINT])
    args = ["--iterations", "40", *FAST, "--set", "checkpoint_every=100", "--out", str(run)]
    assert main(["train", "signal-test", *args]) == 130
    err = capsys.readouterr().err
    assert f"it had saved no checkpoint yet: start it again (fastmaml train PRESET ... --out {run})" in err
    assert "continues from its last checkpoint" not in err and not (run / "checkpoint.safetensors").exists()
    signalling_preset.clear()
    assert main(["train", "signal-test", *args]) == 0 and weights(run)[1] == 40


def test_ctrl_c_during_validation_stops_at_that_iteration(tmp_path, capsys):
    """A Ctrl-C arriving while the run validated stopped it only after one more iteration."""
    def build(config):
        experiment = sinusoid.build(config)
        original = experiment.sample

        def sample(generator, split, num_tasks):
            if split == "val" and not sent:
                sent.append(True)
                os.kill(os.getpid(), signal.SIGINT)
            return original(generator, split, num_tasks)

        experiment.sample = sample
        return experiment

    sent = []
    register(Preset("validation-signal-test", sinusoid.SinusoidConfig, sinusoid.make_config, build, "test only"))
    try:
        run = tmp_path / "run"
        code = main(["train", "validation-signal-test", "--iterations", "40", *FAST, "--set", "val_every=10",
                     "--set", "checkpoint_every=100", "--out", str(run)])
    finally:
        PRESETS.pop("validation-signal-test")
    assert code == 130 and sent
    assert f"stopped by SIGINT at iteration 10, with a checkpoint there in {run}" in capsys.readouterr().err
    assert weights(run)[1] == 10


def _fake_validation(monkeypatch, values):
    """Trainer.validate returns ``values`` in turn (a diverging adaptation gives NaN)."""
    from fastmaml.engine.trainer import Trainer

    stream = iter(values)
    monkeypatch.setattr(Trainer, "validate", lambda self: next(stream))


def test_a_nan_validation_is_never_the_best(tmp_path, monkeypatch, capsys):
    """Before, a NaN at the first validation stayed the best for good (nothing compares below a NaN)."""
    _fake_validation(monkeypatch, [float("nan"), 3.0, 2.0, float("nan")])
    run = tmp_path / "run"
    assert main(["train", "sinusoid", "--iterations", "40", *FAST, "--set", "val_every=10", "--out", str(run)]) == 0
    assert "best validation mse 2;" in capsys.readouterr().out
    _, meta = checkpoint.load(run / "best.safetensors")
    assert meta["best"] == {"step": 30, "metric": "mse", "value": 2.0} and meta["step"] == 30


def test_the_best_checkpoint_keeps_its_own_row_so_a_resume_from_it_does_too(tmp_path, monkeypatch):
    """Before, the best checkpoint was written before its iteration's row was added to the rows it
    holds: copied to checkpoint.safetensors (as the messages advise), a resume lost that row."""
    _fake_validation(monkeypatch, [3.0, 1.0, 2.0, 2.5, 2.5])
    run = tmp_path / "run"
    assert main(["train", "sinusoid", "--iterations", "30", *FAST, "--set", "val_every=10", "--out", str(run)]) == 0
    _, meta = checkpoint.load(run / "best.safetensors")
    assert [row["step"] for row in meta["metrics"]] == [10, 20] and meta["metrics"][-1]["val_mse"] == 1.0
    (run / "best.safetensors").replace(run / "checkpoint.safetensors")
    (run / "checkpoint.prev.safetensors").unlink(missing_ok=True)
    assert main(["train", "--resume", str(run), "--iterations", "40", "--no-progress"]) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30, 40]


def test_a_start_stopped_before_its_first_checkpoint_with_a_best_one_starts_again(tmp_path, monkeypatch, capsys):
    """val_every below checkpoint_every: a start killed before its first checkpoint also leaves a best
    checkpoint; `train --out` the same folder starts it again (before: refused, "checkpoints deleted")."""
    run = tmp_path / "run"
    args = ["train", "sinusoid", "--iterations", "30", *FAST, "--set", "val_every=10", "--set", "val_tasks=5",
            "--out", str(run)]
    assert main(args) == 0
    # what a kill at iteration 25 leaves: the config, the rows of 10 and 20, the best checkpoint, no checkpoint
    for path in run.glob("checkpoint*.safetensors"):
        path.unlink()
    rows = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("".join(line + "\n" for line in rows if json.loads(line)["step"] < 30))
    assert (run / "best.safetensors").is_file()
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    assert "it stopped before its first checkpoint" in capsys.readouterr().err
    assert main(args) == 0
    _, meta = checkpoint.load(run / "checkpoint.safetensors")
    assert meta["step"] == 30 and [r["step"] for r in meta["metrics"]] == [10, 20, 30]


def test_a_snapshot_missed_by_a_stop_is_kept_when_the_run_resumes(tmp_path):
    """Stopped after the checkpoint of a snapshot iteration but before its copy to snapshots/, a run
    lost that snapshot for good; the resume now copies the checkpoint it starts from."""
    full, part = tmp_path / "full", tmp_path / "part"
    common = ["train", "sinusoid", *FAST, "--set", "snapshot_every=20", "--set", "checkpoint_every=20"]
    assert main([*common, "--iterations", "40", "--out", str(full)]) == 0
    assert main([*common, "--iterations", "20", "--out", str(part)]) == 0
    (part / "snapshots" / "iteration_000020.safetensors").unlink()  # the copy a kill would have prevented
    assert main(["train", "--resume", str(part), "--iterations", "40", "--no-progress"]) == 0
    for step in (20, 40):
        name = f"snapshots/iteration_{step:06d}.safetensors"
        kept, reference = checkpoint.load(part / name), checkpoint.load(full / name)
        assert kept[1]["step"] == step
        assert_bit_identical({k: v for k, v in kept[0].items() if k.startswith("maml/")},
                             {k: v for k, v in reference[0].items() if k.startswith("maml/")})
