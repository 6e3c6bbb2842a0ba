"""The meta-gradient against closed forms (float64): (I - αH) products, first order, Meta-SGD."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastmaml import MAML, TaskBatch

ALPHA = 0.3


def tanh_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)).double()


def regression_batch(tasks: int = 3, shots: int = 5, seed: int = 1) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    x = lambda: torch.randn(tasks, shots, 2, generator=g, dtype=torch.float64)  # noqa: E731
    y = lambda: torch.randn(tasks, shots, 1, generator=g, dtype=torch.float64)  # noqa: E731
    return TaskBatch(x(), y(), x(), y())


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vector: torch.Tensor, like: dict) -> dict:
    out, i = {}, 0
    for k, p in like.items():
        out[k] = vector[i : i + p.numel()].view_as(p)
        i += p.numel()
    return out


def closed_form(maml: MAML, task: TaskBatch, steps: int) -> torch.Tensor:
    """∇θ L_q(θ_N) = Π_k (I − α H_s(θ_k)) ∇L_q(θ_N), built from explicit Hessians."""
    theta = flat(maml.params().values()).detach()
    like = maml.params()
    loss_s = lambda v: maml.loss(unflatten(v, like), task.support_x, task.support_y)  # noqa: E731
    loss_q = lambda v: maml.loss(unflatten(v, like), task.query_x, task.query_y)  # noqa: E731
    jacobians = []
    for _ in range(steps):
        hessian = torch.autograd.functional.hessian(loss_s, theta)
        jacobians.append(torch.eye(theta.numel(), dtype=theta.dtype) - ALPHA * hessian)
        theta = theta - ALPHA * torch.autograd.functional.jacobian(loss_s, theta)
    grad = torch.autograd.functional.jacobian(loss_q, theta)
    for jac in reversed(jacobians):
        grad = jac @ grad
    return grad


def meta_grad(maml: MAML, batch: TaskBatch) -> torch.Tensor:
    maml.zero_grad()
    maml.meta_loss(batch).backward()
    return flat(p.grad for p in maml.model.parameters())


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_second_order_equals_hessian_formula(steps, strategy):
    maml = MAML(tanh_net(), F.mse_loss, inner_lr=ALPHA, inner_steps=steps, strategy=strategy)
    batch = regression_batch()
    expected = torch.stack([closed_form(maml, batch.task(i), steps) for i in range(3)]).mean(0)
    got = meta_grad(maml, batch)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    # The Hessian term matters here: the first-order gradient is measurably different.
    fo = meta_grad(MAML(maml.model, F.mse_loss, inner_lr=ALPHA, inner_steps=steps, first_order=True), batch)
    assert (fo - expected).norm() > 1e-3 * expected.norm()


@pytest.mark.parametrize("steps", [1, 2])
def test_first_order_equals_query_gradient_at_adapted_params(steps):
    maml = MAML(tanh_net(), F.mse_loss, inner_lr=ALPHA, inner_steps=steps, first_order=True)
    batch = regression_batch()
    expected = []
    for i in range(batch.num_tasks):
        task = batch.task(i)
        adapted = {k: v.detach().requires_grad_() for k, v in maml.adapt(task.support_x, task.support_y).items()}
        expected.append(flat(torch.autograd.grad(maml.loss(adapted, task.query_x, task.query_y), list(adapted.values()))))
    torch.testing.assert_close(meta_grad(maml, batch), torch.stack(expected).mean(0), rtol=1e-10, atol=1e-12)


def test_meta_sgd_gradient_wrt_alpha_is_minus_g_times_query_gradient():
    maml = MAML(tanh_net(), F.mse_loss, inner_lr=ALPHA, meta_sgd=True)
    assert all(torch.equal(a, torch.full_like(a, ALPHA)) for a in maml.inner_lrs)
    assert len(list(maml.parameters())) == 2 * len(list(maml.model.parameters()))
    batch = regression_batch(tasks=1)
    task = batch.task(0)
    params = {k: v.detach() for k, v in maml.params().items()}
    g = torch.func.grad(maml.loss)(params, task.support_x, task.support_y)
    adapted = {k: (params[k] - ALPHA * g[k]).requires_grad_() for k in params}
    gq = torch.autograd.grad(maml.loss(adapted, task.query_x, task.query_y), list(adapted.values()))
    maml.meta_loss(batch).backward()
    for alpha, g_k, gq_k in zip(maml.inner_lrs, g.values(), gq):
        torch.testing.assert_close(alpha.grad, -g_k * gq_k, rtol=1e-10, atol=1e-14)


def test_meta_sgd_vmap_equals_loop_and_adapt_uses_learned_alpha():
    batch = regression_batch()
    grads = {}
    for strategy in ("vmap", "loop"):
        maml = MAML(tanh_net(), F.mse_loss, inner_lr=ALPHA, meta_sgd=True, inner_steps=2, strategy=strategy)
        with torch.no_grad():
            for i, a in enumerate(maml.inner_lrs):
                a.mul_(torch.linspace(0.5, 1.5, a.numel(), dtype=a.dtype).view_as(a) + i)
        maml.meta_loss(batch).backward()
        grads[strategy] = flat(p.grad for p in maml.parameters())
    torch.testing.assert_close(grads["vmap"], grads["loop"], rtol=1e-10, atol=1e-13)
    task = batch.task(0)
    adapted = maml.adapt(task.support_x, task.support_y, steps=1)
    g = torch.func.grad(maml.loss)(maml.params(), task.support_x, task.support_y)
    for (k, p), a in zip(maml.params().items(), maml.inner_lrs):
        torch.testing.assert_close(adapted[k], p - a * g[k])


def test_backward_equals_torch_func_grad_and_gradcheck():
    maml = MAML(tanh_net(), F.mse_loss, inner_lr=ALPHA, inner_steps=2)
    batch = regression_batch(tasks=2, shots=3)
    like = {k: v.detach() for k, v in maml.params().items()}

    def meta_loss_of(vector):
        from fastmaml.core import meta_loss_vmap

        return meta_loss_vmap(maml.loss, unflatten(vector, like), batch, lr=ALPHA, steps=2).mean()

    theta = flat(like.values()).clone().requires_grad_()
    assert torch.autograd.gradcheck(meta_loss_of, (theta,), eps=1e-6, atol=1e-6)
    torch.testing.assert_close(meta_grad(maml, batch), torch.func.grad(meta_loss_of)(theta.detach()))
