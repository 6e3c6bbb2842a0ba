"""Gradient checkpointing across inner steps: the same meta-gradient, less memory kept per step."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from test_batched_paths import conv_bn_net, grads_of, image_batch
from torch import nn

from fastmaml import MAML, TaskBatch
from fastmaml.config import TrainConfig
from fastmaml.errors import ConfigError


def mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)).double()


def regression_batch(tasks=4, n=6, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    x = lambda: torch.randn(tasks, n, 2, generator=g, dtype=torch.float64)  # noqa: E731
    y = lambda: torch.randn(tasks, n, 1, generator=g, dtype=torch.float64)  # noqa: E731
    return TaskBatch(x(), y(), x(), y())


@pytest.mark.parametrize("meta_sgd", [False, True])
def test_checkpointed_meta_gradient_equals_plain_mlp(meta_sgd):
    batch = regression_batch()
    plain = MAML(mlp(), F.mse_loss, inner_lr=0.1, inner_steps=4, meta_sgd=meta_sgd, strategy="loop")
    ckpt = MAML(mlp(), F.mse_loss, inner_lr=0.1, inner_steps=4, meta_sgd=meta_sgd, grad_checkpointing=True)
    loss_a, grad_a = grads_of(plain, batch)
    loss_b, grad_b = grads_of(ckpt, batch)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-13, atol=0)
    torch.testing.assert_close(grad_b, grad_a, rtol=1e-11, atol=1e-13)
    # Not vacuous: the second-order part matters here (first order differs).
    fo = MAML(mlp(), F.mse_loss, inner_lr=0.1, inner_steps=4, meta_sgd=meta_sgd, first_order=True)
    assert (grads_of(fo, batch)[1] - grad_a).abs().max() > 1e-4


def test_checkpointed_meta_gradient_equals_vmap_conv_batchnorm():
    batch = image_batch()
    vmapped = MAML(conv_bn_net(), F.cross_entropy, inner_lr=0.5, inner_steps=3, strategy="vmap")
    ckpt = MAML(conv_bn_net(), F.cross_entropy, inner_lr=0.5, inner_steps=3, grad_checkpointing=True)
    assert ckpt.resolved_strategy() == "loop"
    torch.testing.assert_close(grads_of(ckpt, batch)[1], grads_of(vmapped, batch)[1], rtol=1e-9, atol=1e-12)


def test_frozen_parameter_still_adapts_in_the_inner_loop():
    batch = regression_batch()
    results = []
    for checkpointing in (False, True):
        model = mlp()
        model[0].bias.requires_grad_(False)
        maml = MAML(model, F.mse_loss, inner_lr=0.1, inner_steps=2, grad_checkpointing=checkpointing, strategy="loop")
        maml.zero_grad()
        maml.meta_loss(batch).backward()
        assert model[0].bias.grad is None
        results.append(torch.cat([p.grad.reshape(-1) for p in maml.parameters() if p.requires_grad]))
    torch.testing.assert_close(results[1], results[0], rtol=1e-11, atol=1e-13)


PEAK_SCRIPT = """
import sys, torch, torch.nn.functional as F
from torch import nn
from fastmaml import MAML, TaskBatch
from fastmaml.bench import peak_rss_bytes, reset_peak_rss, rss_bytes
torch.set_num_threads(1)
steps, checkpointing = int(sys.argv[1]), sys.argv[2] == "1"
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 1))
x = torch.randn(1, 2048, 8)
batch = TaskBatch(x, x[..., :1], x, x[..., :1])
maml = MAML(model, F.mse_loss, inner_lr=0.01, inner_steps=steps, grad_checkpointing=checkpointing)
small = TaskBatch(*(t[:, :4] for t in batch))
maml.meta_loss(small).backward()  # lazy imports (checkpoint loads torch._dynamo) and kernel set-up
assert reset_peak_rss(), "cannot reset the peak RSS mark (/proc/self/clear_refs)"
before = rss_bytes()
maml.meta_loss(batch).backward()
print((peak_rss_bytes() - before) // 1024)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak RSS from /proc (Linux only)")
def test_checkpointing_keeps_peak_memory_flat_in_inner_steps():
    """Peak resident memory of one meta-step (fresh process each, /proc's VmHWM: ru_maxrss would
    start at the size of this large parent process): grows with steps only without checkpointing."""

    def peak_kib(steps: int, checkpointing: bool) -> int:
        # A fixed mmap threshold makes glibc return freed blocks at once, so the peak is what was live.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(steps), str(int(checkpointing))],
                             capture_output=True, text=True, check=True, env=env)
        return int(out.stdout.strip())

    plain, ckpt = peak_kib(8, False), peak_kib(8, True)
    # Without checkpointing 8 steps keep 8 graphs of 2048 x 256 activations (~100 MiB).
    assert plain > 60_000, plain
    assert ckpt < plain / 2.5, (ckpt, plain)


def test_vmap_with_checkpointing_is_refused():
    with pytest.raises(ValueError, match="grad_checkpointing"):
        MAML(mlp(), F.mse_loss, inner_lr=0.1, strategy="vmap", grad_checkpointing=True)
    with pytest.raises(ConfigError, match="grad_checkpointing"):
        TrainConfig(strategy="vmap", grad_checkpointing=True).validate()
    # First order keeps no inner graph: the option is a no-op and vmap stays allowed.
    fo = MAML(mlp(), F.mse_loss, inner_lr=0.1, strategy="vmap", first_order=True, grad_checkpointing=True)
    assert not fo.grad_checkpointing


def test_config_override_reaches_the_preset_model():
    from fastmaml.config import apply_overrides
    from fastmaml.engine.experiment import get_preset, make_maml

    preset = get_preset("sinusoid")
    config = apply_overrides(preset.make_config(), ["grad_checkpointing=true", "inner_steps=3"])
    config.validate()
    maml = make_maml(preset.build(config))
    assert maml.grad_checkpointing and maml.resolved_strategy() == "loop"


class FunctionalDropout(nn.Module):
    """Dropout called in the forward (``F.dropout``), no dropout module to find."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(2, 32), nn.Linear(32, 1)

    def forward(self, x):
        return self.b(F.dropout(torch.tanh(self.a(x)), 0.3, self.training))


class NoisyInput(nn.Module):
    """Gaussian noise on the hidden layer while training (``torch.randn_like``)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(2, 32), nn.Linear(32, 1)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        return self.b(h + 0.3 * torch.randn_like(h) if self.training else h)


@pytest.mark.parametrize("kind", ["module", "functional", "noise"])
def test_checkpointing_with_dropout_runs_one_thread_and_recomputes_the_forwards_masks(caplog, kind):
    """Recomputing a checkpointed step restores the global generator to draw the forward's dropout mask
    again; worker threads drawing from it in between made some recomputed masks differ (a wrong
    meta-gradient, found by a review: 2-7 of 24 steps per run). With dropout the tasks now run in one
    thread: the meta-gradient is the one-worker one, bit for bit. Dropout called as ``F.dropout`` in
    the forward, or noise, was missed by a look for dropout modules (42% off, a later review): whether
    the forward draws random numbers is now found by running it."""

    def net() -> nn.Module:
        torch.manual_seed(1)
        if kind == "module":
            return nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Dropout(0.3), nn.Linear(32, 1)).double()
        return (FunctionalDropout() if kind == "functional" else NoisyInput()).double()

    batch = regression_batch(tasks=8)
    grads = {}
    for workers in (1, 2):
        maml = MAML(net(), F.mse_loss, inner_lr=0.1, inner_steps=3, grad_checkpointing=True, workers=workers)
        torch.manual_seed(0)
        with caplog.at_level("WARNING"):
            maml.meta_backward(batch)
        grads[workers] = [p.grad.clone() for p in maml.params().values()]
    assert all(torch.equal(a, b) for a, b in zip(grads[1], grads[2]))
    assert "the tasks' meta-gradients are computed in one thread" in caplog.text


def test_checkpointing_with_a_deterministic_model_keeps_its_workers(caplog):
    """The probe for random draws does not send every model to one thread, nor move the caller's
    random state: two workers give the meta-gradient of one (up to summation order) and the same
    draws afterwards."""
    batch = regression_batch(tasks=8)
    grads, after = {}, {}
    for workers in (1, 2):
        maml = MAML(mlp(), F.mse_loss, inner_lr=0.1, inner_steps=3, grad_checkpointing=True, workers=workers)
        torch.manual_seed(0)
        with caplog.at_level("WARNING"):
            maml.meta_backward(batch)
        after[workers] = torch.rand(3)
        grads[workers] = [p.grad.clone() for p in maml.params().values()]
        assert not maml._recomputes_dropout(batch.support_x[0])
    torch.testing.assert_close(grads[2], grads[1], rtol=1e-12, atol=1e-14)
    assert torch.equal(after[1], after[2])
    assert "one thread" not in caplog.text
