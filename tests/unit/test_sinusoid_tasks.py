"""Sinusoid tasks: ranges, shapes, the function, seeding."""

import torch

from fastmaml.tasks.sinusoid import SinusoidTasks, evaluate


def test_sample_shapes_ranges_and_function():
    tasks = SinusoidTasks()
    batch, amp, phase = tasks.sample(torch.Generator().manual_seed(0), 500, 5, 7)
    assert batch.support_x.shape == (500, 5, 1) and batch.query_y.shape == (500, 7, 1)
    assert amp.min() >= 0.1 and amp.max() <= 5.0 and amp.max() > 4.5  # the paper's [0.1, 5.0]
    assert phase.min() >= 0 and phase.max() <= torch.pi
    assert batch.support_x.abs().max() <= 5.0
    expected = amp[3] * torch.sin(batch.query_x[3] - phase[3])
    torch.testing.assert_close(batch.query_y[3], expected)
    torch.testing.assert_close(evaluate(batch.support_x, amp, phase), batch.support_y)


def test_same_seed_same_tasks_and_slides_range_is_configurable():
    a = SinusoidTasks().sample(torch.Generator().manual_seed(1), 4, 5, 5)[0]
    b = SinusoidTasks().sample(torch.Generator().manual_seed(1), 4, 5, 5)[0]
    c = SinusoidTasks().sample(torch.Generator().manual_seed(2), 4, 5, 5)[0]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a.support_x, c.support_x)
    _, amp, _ = SinusoidTasks(amplitude=(0.1, 0.5)).sample(torch.Generator().manual_seed(0), 200, 5, 5)
    assert amp.max() <= 0.5
