"""Config overrides: types, unknown keys, validation."""

import pytest
import torch

from fastmaml.config import apply_overrides, from_dict, to_dict
from fastmaml.errors import ConfigError
from fastmaml.experiments.sinusoid import SinusoidConfig, make_config


def test_overrides_parse_types_and_round_trip():
    config = apply_overrides(make_config(5), ["amplitude=0.1,0.5", "first_order=true", "hidden=64,64,64", "outer_lr=3e-4"])
    assert config.amplitude == (0.1, 0.5) and config.first_order is True and config.hidden == (64, 64, 64)
    assert config.outer_lr == 3e-4 and config.shots == 5 and config.baseline_lr == 0.01
    assert from_dict(SinusoidConfig, to_dict(config)) == config


@pytest.mark.parametrize(
    "override, message",
    [
        ("nope=1", "unknown config key 'nope'"),
        ("shots=many", "bad value for shots"),
        ("amplitude=1", "bad value for amplitude"),
        ("first_order=maybe", "bad value for first_order"),
        ("shots", "expects key=value"),
    ],
)
def test_bad_overrides_are_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(make_config(), [override])


@pytest.mark.parametrize(
    "override, message",
    [
        ("inner_lr=-0.1", "inner_lr must be > 0"),
        ("outer_lr=0", "outer_lr must be > 0"),
        ("shots=0", "shots must be >= 1"),
        ("inner_steps=0", "inner_steps must be >= 1"),
        ("amplitude=5,1", "low < high"),
        ("strategy=fast", "strategy must be"),
    ],
)
def test_validation_rejects_out_of_range_values(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(make_config(), [override]).validate()


def test_tf32_is_set_for_cuda_only():
    from fastmaml.engine.distributed import set_tf32

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        set_tf32("cpu", False)  # a CPU run leaves the process's CUDA flags alone
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        set_tf32("cuda:0", False)  # the trainer's default on a GPU: exact convolutions and matmuls
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        set_tf32("cuda", True)
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_train_and_eval_restore_the_tf32_flags_and_eval_applies_the_runs_setting(tmp_path, monkeypatch):
    """train set the process's TF32 flags and never restored them; eval accepted --set tf32=... and
    never applied it, so a GPU meta-test ran with PyTorch's default TF32 convolutions where training
    had them off (found by a review). Both now hold the run's setting for their own duration."""
    from fastmaml.cli import main
    from fastmaml.engine import distributed, evaluate

    run = tmp_path / "run"
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    seen = []
    real = distributed.set_tf32
    monkeypatch.setattr(distributed, "set_tf32", lambda device, allowed: (seen.append(allowed), real(
        "cuda", allowed))[1])  # as on a GPU: the flags change
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        assert main(["train", "sinusoid", "--iterations", "2", "--out", str(run), "--no-progress"]) == 0
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32  # restored
        assert main(["eval", str(run), "--tasks", "3", "--no-progress", "--set", "tf32=true"]) == 0
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        evaluate.evaluate(run, tasks=3, save=False)
        assert seen == [False, True, False]  # train (off), eval --set tf32=true, eval (the run's: off)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_eval_keeps_another_accelerator_the_machine_has(monkeypatch):
    """eval_device moved an mps run to the CPU even where the machine had MPS (found by a review)."""
    from types import SimpleNamespace

    from fastmaml.engine.evaluate import eval_device

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert eval_device(SimpleNamespace(device="mps"), ["device=mps"]) == "mps"
    assert eval_device(SimpleNamespace(device="mps")) == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert eval_device(SimpleNamespace(device="mps")) == "cpu"  # a run made on a Mac, scored elsewhere
