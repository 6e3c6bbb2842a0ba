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


def test_value_clipping_bounds_each_element_and_counts_an_overflow(tmp_path):
    """grad_clip_mode=value (the original's tf.clip_by_value): each element to [-clip, clip], the
    direction bent; norm (the default) scales the whole gradient. An inf element would become ±clip
    unseen: the step is counted as overflowed before clipping."""
    t = trainer(tmp_path)
    params = [p for p in t.maml.parameters() if p.requires_grad]
    steps = {}
    for mode in ("norm", "value"):
        t.config.grad_clip_mode = mode
        for p in params:
            p.grad = torch.zeros_like(p)
        params[0].grad.view(-1)[:2] = torch.tensor([30.0, 0.5])
        opt = torch.optim.SGD(params, lr=1.0)
        before = [p.detach().clone() for p in params]
        t._finish_step(params, opt, 10.0)
        steps[mode] = (before[0] - params[0].detach()).view(-1)[:2]
    assert torch.allclose(steps["value"], torch.tensor([10.0, 0.5]))  # clamped; the small one kept
    assert torch.allclose(steps["norm"], torch.tensor([30.0, 0.5]) * 10 / math.hypot(30.0, 0.5))
    assert t._clipped_overflow.item() == 0
    params[0].grad = torch.zeros_like(params[0])
    params[0].grad.view(-1)[0] = math.inf
    t._finish_step(params, torch.optim.SGD(params, lr=0.0), 10.0)
    assert t._clipped_overflow.item() == 1 and t.nonfinite_state()[0]
