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


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script is deprecated in newer torch
def test_models_and_rates_maml_cannot_use_are_refused_when_built():
    """A TorchScript module built and then failed at the first call with torch.func's "stateless API
    can't be used with Jitted modules"; a learning rate given as text failed inside a comparison."""
    with pytest.raises(TypeError, match="TorchScript module.* pass the eager nn.Module"):
        MAML(torch.jit.script(nn.Linear(1, 1)), F.mse_loss, inner_lr=0.1)
    with pytest.raises(TypeError, match="inner_lr must be a number, got str '0.1'"):
        MAML(nn.Linear(1, 1), F.mse_loss, inner_lr="0.1")


def test_adaptation_curve_checks_its_steps_as_adapt_does():
    """steps=-1 returned step 0 alone, 1.5 a TypeError from inside, True counted as 1."""
    maml = MAML(nn.Linear(1, 1), F.mse_loss, inner_lr=0.1)
    for steps, message in ((-1, "steps must be >= 0"), (1.5, "steps must be an integer"),
                           (True, "steps must be an integer")):
        with pytest.raises(ValueError, match=message):
            maml.adaptation_curve(batch(), steps)
        with pytest.raises(ValueError, match=message):
            maml.adapt(batch().support_x[0], batch().support_y[0], steps=steps)
    assert maml.adaptation_curve(batch(), 2.0).shape == (4, 3)


def test_empty_tasks_and_mismatched_targets_are_refused():
    """An empty support set failed with a ZeroDivisionError inside torch's decompositions; a (T, M)
    query target against (T, N, 1) support targets broadcast the MSE to an (M, M) matrix silently."""
    maml = MAML(nn.Linear(1, 1), F.mse_loss, inner_lr=0.1)
    good = batch()
    with pytest.raises(ValueError, match=r"at least one support and one query example; got support_x\(4, 0, 1\)"):
        maml.meta_loss(TaskBatch(good.support_x[:, :0], good.support_y[:, :0], good.query_x, good.query_y))
    with pytest.raises(ValueError, match=r"support_y\(4, 5, 1\) and query_y\(4, 5\) must have the same example"):
        maml.meta_loss(TaskBatch(good.support_x, good.support_y, good.query_x, good.query_y[..., 0]))
    featureless = r"support_x\(4, 5\) has no feature dimension.* support_x\[\.\.\., None\]"
    # the Linear(1, 1) model cannot take scalar examples
    with pytest.warns(UserWarning, match=featureless), pytest.raises(RuntimeError):
        maml.meta_loss(TaskBatch(*(t[..., 0] for t in good)))


class Tagger(nn.Module):
    """One sequence of 12 steps, 3 features each, to one of 4 tags per step: (N, 12, 3) -> (N, 12, 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn, self.out = nn.GRU(3, 8, batch_first=True), nn.Linear(8, 4)

    def forward(self, x):
        return self.out(self.rnn(x)[0])


def test_adapt_takes_a_one_sequence_tagging_task():
    """(1, L, F) inputs with (1, L) integer tags are one example, not a task dimension left in: adapt
    refused them (meta_loss took the same data) and advised dropping a dimension that was real."""
    torch.manual_seed(0)
    loss = lambda p, y: F.cross_entropy(p.flatten(0, 1), y.flatten())  # noqa: E731
    maml = MAML(Tagger(), loss, inner_lr=0.1, strategy="loop")
    x, y = torch.randn(1, 12, 3), torch.randint(0, 4, (1, 12))
    adapted = maml.adapt(x, y, steps=2)
    before = loss(maml(x), y)
    assert loss(maml(x, adapted), y) < before


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
