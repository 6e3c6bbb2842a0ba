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
