"""The MAML wrapper's API: adapt, adaptation curves, validation of arguments and shapes."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastmaml import MAML, TaskBatch
from fastmaml.core import sgd_step


def batch(tasks=4, shots=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TaskBatch(*(torch.randn(tasks, shots, 1, generator=g) for _ in range(4)))


def test_adapt_defaults_to_inner_steps_and_accepts_more():
    torch.manual_seed(0)
    maml = MAML(nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)), F.mse_loss, inner_lr=0.1, inner_steps=2)
    task = batch().task(0)
    manual = maml.params()
    for _ in range(5):
        manual = sgd_step(manual, torch.func.grad(maml.loss)(manual, task.support_x, task.support_y), 0.1)
    torch.testing.assert_close(maml.adapt(task.support_x, task.support_y, steps=5), manual)
    two = maml.adapt(task.support_x, task.support_y)
    assert not torch.allclose(two["0.weight"], manual["0.weight"])
    assert torch.equal(maml.adapt(task.support_x, task.support_y, steps=0)["0.weight"], maml.model[0].weight)
    # forward with adapted params lowers the support loss
    before = F.mse_loss(maml(task.support_x), task.support_y)
    after = F.mse_loss(maml(task.support_x, manual), task.support_y)
    assert after < before


def test_adapt_names_support_tensors_that_disagree():
    maml = MAML(nn.Linear(1, 1), F.mse_loss, inner_lr=0.1)
    # before: torch's broadcasting warning, then "The size of tensor a (10) must match ..."
    with pytest.raises(ValueError, match=r"support_x\(10, 1\) and support_y\(9, 1\) must agree"):
        maml.adapt(torch.randn(10, 1), torch.randn(9, 1))
    with pytest.raises(ValueError, match="as tensors"):
        maml.adapt([[0.0]], torch.randn(1, 1))


def test_adaptation_curve_matches_manual_steps_per_task():
    torch.manual_seed(0)
    maml = MAML(nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)), F.mse_loss, inner_lr=0.1)
    b = batch()
    with torch.no_grad():
        curve = maml.adaptation_curve(b, steps=3)
    assert curve.shape == (4, 4)
    task = b.task(2)
    for k in range(4):
        adapted = maml.adapt(task.support_x, task.support_y, steps=k)
        torch.testing.assert_close(curve[2, k], F.mse_loss(maml(task.query_x, adapted), task.query_y))
    loop = MAML(maml.model, F.mse_loss, inner_lr=0.1, strategy="loop")
    with torch.no_grad():
        torch.testing.assert_close(loop.adaptation_curve(b, steps=3), curve)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(inner_lr=0.0), "inner_lr must be > 0"),
        (dict(inner_lr=-1.0), "inner_lr must be > 0"),
        (dict(inner_lr=0.1, inner_steps=0), "inner_steps must be an integer >= 1"),
        (dict(inner_lr=0.1, inner_steps=2.5), r"inner_steps must be an integer >= 1, got 2.5"),  # was cut to 2
        (dict(inner_lr=torch.tensor(0.1, requires_grad=True)), "to learn inner learning rates pass meta_sgd=True"),
        (dict(inner_lr=0.1, strategy="fast"), "strategy must be one of"),
        (dict(inner_lr=0.1, chunk_size=0), "chunk_size"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MAML(nn.Linear(1, 1), F.mse_loss, **kwargs)


def test_bad_shapes_raise_clear_errors():
    maml = MAML(nn.Linear(1, 1), F.mse_loss, inner_lr=0.1)
    good = batch()
    with pytest.raises(ValueError, match="same number of tasks"):
        maml.meta_loss(TaskBatch(good.support_x, good.support_y, good.query_x[:2], good.query_y[:2]))
    with pytest.raises(ValueError, match="must agree on"):
        maml.meta_loss(TaskBatch(good.support_x, good.support_y[:, :3], good.query_x, good.query_y))
    with pytest.raises(ValueError, match="task and an example dimension"):
        maml.meta_loss(TaskBatch(good.support_x[:, 0, 0], good.support_y, good.query_x, good.query_y))


def test_chunked_vmap_equals_full_vmap():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    b = TaskBatch(*(t.double() for t in batch(tasks=7)))
    full = MAML(model, F.mse_loss, inner_lr=0.1, strategy="vmap").meta_loss(b, reduction="none")
    chunked = MAML(model, F.mse_loss, inner_lr=0.1, strategy="vmap", chunk_size=3).meta_loss(b, reduction="none")
    torch.testing.assert_close(full, chunked)


class Transpose(nn.Module):
    """(1, L, C) logits to (1, C, L), as cross-entropy takes a sequence's classes."""

    def forward(self, x):
        return x.transpose(1, 2)


def test_shapes_that_silently_meant_something_else():
    maml = MAML(nn.Linear(1, 1), F.mse_loss, inner_lr=0.1)
    x, y = torch.randn(20, 1), torch.randn(20, 1)
    # one task of 10 examples given without its task dimension reads as 10 tasks of one example
    with pytest.warns(UserWarning, match=r"support_x\(10, 1\) reads as 10 tasks of one example each"):
        maml.meta_loss(TaskBatch(x[:10], y[:10], x[10:], y[10:]))
    # a leftover task dimension on integer labels: cross-entropy read the examples as classes
    classifier = MAML(nn.Linear(4, 5), F.cross_entropy, inner_lr=0.1)
    images, labels = torch.randn(5, 4), torch.arange(5)
    with pytest.raises(ValueError, match=r"support_y\(1, 5\) holds integer labels .* pass support_x\[0\]"):
        classifier.adapt(images[None], labels[None])
    # but a one-example task can have integer targets of its own shape: one image's segmentation mask,
    # one sentence's tags
    segmenter = MAML(nn.Conv2d(3, 4, 1), F.cross_entropy, inner_lr=0.1)
    assert segmenter.adapt(torch.randn(1, 3, 8, 8), torch.randint(4, (1, 8, 8)))["weight"].shape == (4, 3, 1, 1)
    tagger = MAML(nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 3), Transpose()), F.cross_entropy, inner_lr=0.1)
    assert tagger.adapt(torch.randint(10, (1, 6)), torch.randint(3, (1, 6)))["1.weight"].shape == (3, 4)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one-shot token tasks (T, 1) of integers: no warning
        tokens = TaskBatch(torch.randint(10, (4, 1)), torch.randint(3, (4, 1)), torch.randint(10, (4, 2)),
                           torch.randint(3, (4, 2)))
        MAML(nn.Sequential(nn.Embedding(10, 3)), F.cross_entropy, inner_lr=0.1).meta_loss(tokens)
    with pytest.raises(ValueError, match="steps must be an integer, got 2.7"):
        classifier.adapt(images, labels, steps=2.7)
    assert classifier.adapt(images, labels, steps=2)["weight"].shape == (5, 4)


def test_task_batch_to_a_dtype_keeps_integer_labels():
    b = TaskBatch(torch.randn(2, 3, 4), torch.arange(6).view(2, 3), torch.randn(2, 3, 4), torch.arange(6).view(2, 3))
    for moved in (b.to(torch.float64), b.to(dtype=torch.float64), b.to("cpu", dtype=torch.float64)):
        assert moved.support_x.dtype == torch.float64 and moved.support_y.dtype == torch.int64
    assert b.to("cpu").support_x.dtype == torch.float32 and b.to("cpu", True).support_y.dtype == torch.int64


def test_a_compiled_maml_pickles(tmp_path):
    """torch.save(maml) failed once a compiled meta-loss had run (its compiled function cannot be pickled)."""
    import io

    torch.manual_seed(0)
    maml = MAML(nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)), F.mse_loss, inner_lr=0.1, compile=True)
    b = batch()
    maml.meta_loss(b).backward()
    buffer = io.BytesIO()
    torch.save(maml, buffer)
    buffer.seek(0)
    copy = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        assert torch.equal(copy.meta_loss(b), maml.meta_loss(b))
