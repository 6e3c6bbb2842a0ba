"""Trainer.nonfinite_state: the weights and Adam moments checked at each log row."""

import math

import torch

from fastmaml.engine.experiment import get_preset
from fastmaml.engine.trainer import Trainer


def trainer(tmp_path) -> Trainer:
    preset = get_preset("sinusoid")
    config = preset.make_config(shots=5)
    config.meta_batch_size, config.compile = 4, "off"
    torch.manual_seed(0)
    t = Trainer(preset.build(config), tmp_path)
    batch = t.experiment.sample(t.generator, "train", 4)
    t.meta_step(batch)
    t.baseline_step(batch)
    return t


def test_finite_state_passes_and_an_inf_moment_is_found(tmp_path):
    t = trainer(tmp_path)
    assert t.nonfinite_state() == [False, False]
    weight = next(iter(t.maml.parameters()))
    state = t.opt.state[weight]
    state["exp_avg_sq"][0, 0] = 1e25  # large but finite: an L2 norm of it overflowed float32
    with torch.no_grad():
        weight[0, 0] = -3e25
    assert t.nonfinite_state() == [False, False]
    state["step"].fill_(math.inf)  # Adam's step count (a CPU scalar beside CUDA moments) is not read
    assert t.nonfinite_state() == [False, False]
    state["exp_avg_sq"][0, 0] = math.inf  # what a squared gradient past float32's range leaves
    assert t.nonfinite_state() == [True, False]
    baseline_weight = next(iter(t.baseline.parameters()))
    with torch.no_grad():
        baseline_weight[0, 0] = math.nan
    assert t.nonfinite_state() == [True, True]


def test_a_parameter_without_elements_is_skipped(tmp_path):
    t = trainer(tmp_path)
    t.maml.model.register_parameter("empty", torch.nn.Parameter(torch.zeros(0)))  # max of nothing: an error
    assert t.nonfinite_state() == [False, False]
