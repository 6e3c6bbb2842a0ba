"""The vmap path equals the per-task loop (and finite differences) for the layers users use."""

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastmaml import MAML, TaskBatch
from fastmaml.algorithms import maml as maml_module


def conv_bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4, track_running_stats=False),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1, stride=2),
        nn.BatchNorm2d(4),  # running statistics present: MAML still uses batch statistics
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 3),
    ).double()


def image_batch(tasks=3, ways=3, shots=2, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    n = ways * shots
    x = lambda: torch.randn(tasks, n, 1, 8, 8, generator=g, dtype=torch.float64)  # noqa: E731
    y = lambda: torch.randint(0, ways, (tasks, n), generator=g)  # noqa: E731
    return TaskBatch(x(), y(), x(), y())


def grads_of(maml: MAML, batch: TaskBatch) -> torch.Tensor:
    maml.zero_grad()
    loss = maml.meta_loss(batch)
    loss.backward()
    return loss.detach(), torch.cat([p.grad.reshape(-1) for p in maml.parameters()])


@pytest.mark.parametrize("first_order", [False, True])
def test_conv_batchnorm_vmap_equals_loop_and_finite_differences(first_order):
    batch = image_batch()
    results = {}
    for strategy in ("vmap", "loop"):
        maml = MAML(conv_bn_net(), F.cross_entropy, inner_lr=0.5, inner_steps=2, first_order=first_order,
                    strategy=strategy)
        results[strategy] = grads_of(maml, batch)
    torch.testing.assert_close(results["vmap"][0], results["loop"][0], rtol=1e-12, atol=0)
    torch.testing.assert_close(results["vmap"][1], results["loop"][1], rtol=1e-9, atol=1e-12)
    if first_order:
        return
    # Directional finite difference of the meta-loss (second order is the true derivative).
    params = list(maml.parameters())
    direction = [torch.randn_like(p) for p in params]
    eps = 1e-6
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.add_(eps * d)
        plus = maml.meta_loss(batch)
        for p, d in zip(params, direction):
            p.sub_(2 * eps * d)
        minus = maml.meta_loss(batch)
        for p, d in zip(params, direction):
            p.add_(eps * d)
    fd = (plus - minus) / (2 * eps)
    analytic = results["vmap"][1] @ torch.cat([d.reshape(-1) for d in direction])
    torch.testing.assert_close(analytic, fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_batchnorm_running_stats_untouched_by_meta_training(strategy):
    maml = MAML(conv_bn_net(), F.cross_entropy, inner_lr=0.5, strategy=strategy)
    before = maml.model[5].running_mean.clone()
    maml.meta_loss(image_batch()).backward()
    assert torch.equal(maml.model[5].running_mean, before)


def test_mlp_vmap_equals_loop_second_order_three_steps():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 16), nn.Sigmoid(), nn.Linear(16, 1)).double()
    g = torch.Generator().manual_seed(0)
    batch = TaskBatch(*(torch.randn(5, 10, 1, generator=g, dtype=torch.float64) for _ in range(4)))
    out = {}
    for strategy in ("vmap", "loop"):
        out[strategy] = grads_of(MAML(model, F.mse_loss, inner_lr=0.1, inner_steps=3, strategy=strategy), batch)
    torch.testing.assert_close(out["vmap"][1], out["loop"][1], rtol=1e-10, atol=1e-13)


def test_dropout_under_vmap_gives_each_task_its_own_mask():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 1))
    x = torch.randn(1, 8, 4).expand(6, 8, 4)  # six identical tasks
    y = torch.randn(1, 8, 1).expand(6, 8, 1)
    maml = MAML(model, F.mse_loss, inner_lr=0.01, strategy="vmap")
    losses = maml.meta_loss(TaskBatch(x, y, x, y), reduction="none")
    assert losses.shape == (6,)
    assert losses.unique().numel() > 1  # same data, different dropout masks
    losses.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    same = maml.meta_loss(TaskBatch(x, y, x, y), reduction="none")
    assert same.unique().numel() == 1  # dropout off in eval mode


class DataDependent(nn.Module):
    """A model vmap cannot trace: Python control flow on a tensor value."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1)

    def forward(self, x):
        out = self.lin(x)
        return out * 2 if out.sum().item() > 0 else out


def test_auto_falls_back_to_loop_for_models_vmap_cannot_trace(caplog):
    g = torch.Generator().manual_seed(0)
    batch = TaskBatch(*(torch.randn(3, 4, d, generator=g) for d in (2, 1, 2, 1)))
    maml = MAML(DataDependent(), F.mse_loss, inner_lr=0.1)
    with caplog.at_level(logging.WARNING):
        loss = maml.meta_loss(batch)
    assert "per-task loop" in caplog.text and maml.resolved_strategy() == "loop"
    torch.manual_seed(0)
    reference = MAML(maml.model, F.mse_loss, inner_lr=0.1, strategy="loop").meta_loss(batch)
    torch.testing.assert_close(loss, reference)
    with pytest.raises(RuntimeError, match="vmap.*data-dependent control flow"):  # asked for vmap: no fall-back
        MAML(DataDependent(), F.mse_loss, inner_lr=0.1, strategy="vmap").meta_loss(batch)


def test_auto_picks_loop_for_conv_on_cpu_and_vmap_for_mlp():
    assert MAML(conv_bn_net(), F.cross_entropy, inner_lr=0.1).resolved_strategy() == "loop"
    assert MAML(nn.Linear(2, 1), F.mse_loss, inner_lr=0.1).resolved_strategy() == "vmap"


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
@pytest.mark.parametrize("first_order,meta_sgd", [(False, False), (True, False), (False, True)])
def test_worker_threads_give_the_one_thread_meta_gradient(first_order, meta_sgd, strategy, monkeypatch):
    """Threads under vmap must still take batch norm's exact path (conv + BatchNorm net here)."""
    monkeypatch.setattr(maml_module, "THREADED_VMAP_MIN_PARAMS", 0)  # thread even this tiny net
    batch = image_batch(tasks=5)
    results = []
    for workers in (1, 2, 3):
        maml = MAML(conv_bn_net(), F.cross_entropy, inner_lr=0.5, inner_steps=2, first_order=first_order,
                    meta_sgd=meta_sgd, strategy=strategy, workers=workers)
        maml.zero_grad()
        loss = maml.meta_backward(batch, scale=0.5)
        results.append((loss, torch.cat([p.grad.reshape(-1) for p in maml.parameters()])))
    reference = MAML(conv_bn_net(), F.cross_entropy, inner_lr=0.5, inner_steps=2, first_order=first_order,
                     meta_sgd=meta_sgd, strategy="vmap")
    expected = grads_of(reference, batch)
    for loss, grad in results:
        torch.testing.assert_close(loss, expected[0] * 0.5, rtol=1e-12, atol=0)
        torch.testing.assert_close(grad, expected[1] * 0.5, rtol=1e-9, atol=1e-12)
    # Fixed partition and summation order: repeating the threaded step gives bit-identical gradients.
    again = MAML(conv_bn_net(), F.cross_entropy, inner_lr=0.5, inner_steps=2, first_order=first_order,
                 meta_sgd=meta_sgd, strategy=strategy, workers=2)
    again.meta_backward(batch, scale=0.5)
    assert torch.equal(torch.cat([p.grad.reshape(-1) for p in again.parameters()]), results[1][1])


def test_auto_vectorises_in_threads_from_the_first_call_and_falls_back_to_the_loop(caplog, monkeypatch):
    """Every call takes the same path (so a resumed run repeats the uninterrupted one bit for bit);
    a model vmap cannot trace falls back to the threaded loop with a warning."""
    monkeypatch.setattr(maml_module, "THREADED_VMAP_MIN_PARAMS", 0)
    g = torch.Generator().manual_seed(0)
    batch = TaskBatch(*(torch.randn(6, 4, d, generator=g, dtype=torch.float64) for d in (2, 1, 2, 1)))
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    maml = MAML(model, F.mse_loss, inner_lr=0.1, workers=3)
    calls = []
    original = maml._threaded_backward
    maml._threaded_backward = lambda *a, **k: calls.append(k) or original(*a, **k)
    grads = []
    for _ in range(2):
        maml.zero_grad()
        maml.meta_backward(batch)
        grads.append(torch.cat([p.grad.reshape(-1) for p in maml.parameters()]))
    assert calls == [{"vmap": True}, {"vmap": True}] and maml.resolved_strategy() == "vmap"
    assert torch.equal(grads[1], grads[0])
    reference = MAML(model, F.mse_loss, inner_lr=0.1, strategy="loop")
    reference.zero_grad()  # the same model: drop the threaded call's gradients first
    reference.meta_loss(batch).backward()
    torch.testing.assert_close(grads[0], torch.cat([p.grad.reshape(-1) for p in reference.parameters()]),
                               rtol=1e-10, atol=1e-13)

    plain = TaskBatch(*(t.float() for t in batch))
    fallback = MAML(DataDependent(), F.mse_loss, inner_lr=0.1, workers=2)
    with caplog.at_level(logging.WARNING):
        fallback.meta_backward(plain)
    assert "per-task loop" in caplog.text and fallback.resolved_strategy() == "loop"
    expected = MAML(copy.deepcopy(fallback.model), F.mse_loss, inner_lr=0.1, strategy="loop")
    expected.zero_grad()
    expected.meta_loss(plain).backward()
    for a, b in zip(fallback.parameters(), expected.parameters()):
        assert a is not b and a.grad.abs().sum() > 0
        torch.testing.assert_close(a.grad, b.grad)


def test_small_models_vectorise_in_one_thread_despite_workers():
    g = torch.Generator().manual_seed(0)
    batch = TaskBatch(*(torch.randn(6, 4, d, generator=g) for d in (2, 1, 2, 1)))
    small = MAML(nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1)), F.mse_loss, inner_lr=0.1, workers=2)
    big = MAML(nn.Sequential(nn.Linear(2, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 1)),
               F.mse_loss, inner_lr=0.1, workers=2)
    assert sum(p.numel() for p in big.model.parameters()) >= maml_module.THREADED_VMAP_MIN_PARAMS
    threaded = []
    for maml in (small, big):
        original = maml._threaded_backward
        maml._threaded_backward = lambda *a, _o=original, _m=maml, **k: threaded.append(_m) or _o(*a, **k)
        maml.meta_backward(batch)
    assert threaded == [big]


def test_meta_backward_accumulates_like_backward():
    batch = image_batch(tasks=4)
    maml = MAML(conv_bn_net(), F.cross_entropy, inner_lr=0.5, strategy="loop", workers=2)
    maml.meta_backward(batch.slice(0, 2), scale=0.5)
    maml.meta_backward(batch.slice(2, 4), scale=0.5)
    whole = MAML(conv_bn_net(), F.cross_entropy, inner_lr=0.5, strategy="loop")
    whole.meta_loss(batch).backward()
    for a, b in zip(maml.parameters(), whole.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("first_order,meta_sgd,steps", [(False, False, 1), (False, False, 3), (True, False, 2),
                                                          (False, True, 2)])
def test_hybrid_first_step_vectorised_equals_the_loop(first_order, meta_sgd, steps, workers):
    """The hybrid strategy (first inner step under vmap with shared weights, the rest per task) gives
    the loop's meta-loss and meta-gradient, batch norm included, in one thread and in workers."""
    batch = image_batch(tasks=5)
    make = lambda strategy, w: MAML(conv_bn_net(), F.cross_entropy, inner_lr=0.5, inner_steps=steps,  # noqa: E731
                                    first_order=first_order, meta_sgd=meta_sgd, strategy=strategy, workers=w)
    expected = grads_of(make("loop", 1), batch)
    hybrid = make("hybrid", workers)
    assert hybrid.resolved_strategy() == "hybrid"
    torch.testing.assert_close(grads_of(hybrid, batch)[1], expected[1], rtol=1e-9, atol=1e-12)  # meta_loss().backward()
    hybrid.zero_grad()
    loss = hybrid.meta_backward(batch, scale=0.5)  # the trainer's step: threads when workers > 1
    torch.testing.assert_close(loss, expected[0] * 0.5, rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.cat([p.grad.reshape(-1) for p in hybrid.parameters()]), expected[1] * 0.5,
                               rtol=1e-9, atol=1e-12)
    # evaluation under hybrid runs the loop
    curve = hybrid.adaptation_curve(batch, 2)
    torch.testing.assert_close(curve, make("loop", 1).adaptation_curve(batch, 2))


def test_hybrid_refuses_grad_checkpointing():
    with pytest.raises(ValueError, match="grad_checkpointing runs one task at a time"):
        MAML(conv_bn_net(), F.cross_entropy, inner_lr=0.5, strategy="hybrid", grad_checkpointing=True)


@pytest.mark.parametrize("strategy", ["loop", "hybrid", "vmap"])
def test_adaptation_curve_in_worker_threads_equals_one_thread(strategy):
    """Evaluation with ``workers`` adapts the tasks in threads (5 tasks over 2 and 3 workers) and puts
    them back in task order: the same numbers as one thread, under no_grad (its grad mode holds in
    the workers: nothing there builds a graph) and a metric other than the loss; Meta-SGD's rates too.
    Under vmap each worker vectorises a contiguous share (as for a model of THREADED_VMAP_MIN_PARAMS
    parameters or more; this small one is made to)."""
    batch = image_batch(tasks=5)
    accuracy = lambda pred, y: (pred.argmax(-1) == y).double().mean()  # noqa: E731
    make = lambda w: MAML(conv_bn_net(), F.cross_entropy, inner_lr=0.5, meta_sgd=True, strategy=strategy,  # noqa: E731
                          workers=w)
    one = make(1)
    with torch.no_grad():
        expected = one.adaptation_curve(batch, steps=3)
        expected_accuracy = one.adaptation_curve(batch, steps=2, metric=accuracy)
    assert expected.shape == (5, 4) and not expected.requires_grad
    assert len(set(expected[:, -1].tolist())) == 5  # every task its own curve: an order mix-up would show
    for workers in (2, 3):
        maml = make(workers)
        maml._thread_vmap = True
        threads = []
        original = maml._threaded_curves
        maml._threaded_curves = lambda *a, _o=original, _t=threads, **k: _t.append(1) or _o(*a, **k)
        with torch.no_grad():
            curve = maml.adaptation_curve(batch, steps=3)
            accuracies = maml.adaptation_curve(batch, steps=2, metric=accuracy)
        assert threads == [1, 1]
        assert not curve.requires_grad
        torch.testing.assert_close(curve, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(accuracies, expected_accuracy, rtol=0, atol=0)
