"""MAML on models beyond MLPs and conv nets: each case was found by probing the API against an
independent per-task reference (2026-12-06) and failed before its fix, silently or with a traceback."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastmaml import MAML, TaskBatch
from fastmaml.core import needs_exact_vmap_ops


def reference_meta_grads(model, loss_fn, batch, *, lr, steps, first_order=False, adapted=None):
    """An independent reference: per task, `steps` SGD steps on the support set with
    torch.autograd.grad (only parameters that require grad adapt, of them only those named in
    `adapted` if given: the others keep θ), the query loss averaged over tasks, its gradient with
    respect to the parameters that require grad."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    adapted = set(names) if adapted is None else adapted
    theta = [dict(model.named_parameters())[n] for n in names]
    buffers = dict(model.named_buffers())

    def loss(values, x, y):
        return loss_fn(torch.func.functional_call(model, {**buffers, **dict(zip(names, values))}, (x,)), y)

    total = 0
    for i in range(batch.support_x.shape[0]):
        values = theta
        for _ in range(steps):
            grads = torch.autograd.grad(loss(values, batch.support_x[i], batch.support_y[i]), values,
                                        create_graph=not first_order, allow_unused=True, materialize_grads=True)
            values = [v - lr * g if n in adapted else v for n, v, g in zip(names, values, grads)]
        total = total + loss(values, batch.query_x[i], batch.query_y[i])
    return torch.autograd.grad(total / batch.support_x.shape[0], theta, allow_unused=True, materialize_grads=True)


def meta_grads(maml, batch, backward="meta_loss"):
    maml.zero_grad()
    if backward == "meta_backward":
        maml.meta_backward(batch)
    else:
        maml.meta_loss(batch).backward()
    return [p.grad if p.grad is not None else torch.zeros_like(p) for p in maml.params().values()]


def relative(got, want):
    num = sum(((a - b) ** 2).sum() for a, b in zip(got, want)).sqrt()
    return float(num / sum((b**2).sum() for b in want).sqrt().clamp_min(1e-30))


def regression_batch(tasks=3, support=4, query=6, features=8, generator_seed=0):
    g = torch.Generator().manual_seed(generator_seed)
    shape = lambda n, f: torch.randn(tasks, n, f, generator=g, dtype=torch.float64)  # noqa: E731
    return TaskBatch(shape(support, features), shape(support, 1), shape(query, features), shape(query, 1))


class DirectLayerNorm(nn.Module):
    """A user's own module calling F.layer_norm itself (no nn.LayerNorm for MAML to see)."""

    def __init__(self):
        super().__init__()
        self.inp, self.out = nn.Linear(8, 16), nn.Linear(16, 1)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 16))

    def forward(self, x):
        return self.out(F.layer_norm(self.inp(x), (16,), self.scale))


class FixedStatsBatchNorm(nn.Module):
    """A user's own batch norm with fixed statistics (e.g. a frozen backbone's): F.batch_norm with
    training=False. Under vmap the rerouted batch norm used batch statistics (loss off by 0.2)."""

    def __init__(self):
        super().__init__()
        self.inp, self.out = nn.Linear(8, 6), nn.Linear(6, 1)
        self.weight, self.bias = nn.Parameter(torch.linspace(0.5, 1.5, 6)), nn.Parameter(torch.zeros(6))
        self.register_buffer("mean", torch.linspace(-1, 1, 6))
        self.register_buffer("var", torch.linspace(0.5, 2, 6))

    def forward(self, x):
        h = F.batch_norm(self.inp(x), self.mean, self.var, self.weight, self.bias, training=False)
        return self.out(torch.tanh(h))


def token_batch(tasks=3, support=5, query=7, length=4, vocab=10, generator_seed=0):
    g = torch.Generator().manual_seed(generator_seed)
    ids = lambda n: torch.randint(0, vocab, (tasks, n, length), generator=g)  # noqa: E731 - 0 is the padding id
    targets = lambda n: torch.randn(tasks, n, 1, generator=g, dtype=torch.float64)  # noqa: E731
    return TaskBatch(ids(support), targets(support), ids(query), targets(query))


class Pool(nn.Module):
    def forward(self, x):  # (N, length, d) -> (N, d)
        return x.mean(1)


class Channels(nn.Module):
    def forward(self, x):  # (N, 8) -> (N, 2, 4): two channels of length 4 for instance norm
        return x.view(x.shape[0], 2, 4)


MODELS = {
    # second-order vmap meta-gradients measured off by 9e-3 (layer norm), 3e-2 (instance norm); the
    # embedding's padding row got a meta-gradient of norm 2e-2 under vmap
    "layer_norm": (lambda: nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 1)), regression_batch),
    "layer_norm_gelu": (lambda: nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 1)),
                        regression_batch),
    "instance_norm": (lambda: nn.Sequential(nn.Linear(8, 8), Channels(), nn.InstanceNorm1d(2, affine=True),
                                            nn.Flatten(), nn.Linear(8, 1)), regression_batch),
    "direct_layer_norm": (DirectLayerNorm, regression_batch),
    "fixed_stats_batch_norm": (FixedStatsBatchNorm, regression_batch),
    "embedding_padding": (lambda: nn.Sequential(nn.Embedding(10, 6, padding_idx=0), Pool(), nn.Linear(6, 1)),
                          token_batch),
}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("strategy", ["vmap", "hybrid"])
def test_vmapped_meta_gradient_equals_the_reference(name, strategy):
    build, batch_fn = MODELS[name]
    torch.manual_seed(0)
    model = build().double()
    batch = batch_fn()
    maml = MAML(model, F.mse_loss, inner_lr=0.1, inner_steps=2, strategy=strategy)
    assert needs_exact_vmap_ops(model)
    want = reference_meta_grads(model, F.mse_loss, batch, lr=0.1, steps=2)
    assert relative(meta_grads(maml, batch), want) < 1e-10
    if name == "embedding_padding":
        assert torch.count_nonzero(model[0].weight.grad[0]) == 0  # padding_idx: no gradient, ever
        assert model[0].weight.grad[1:].abs().sum() > 0


def test_plain_torch_models_without_such_layers_skip_the_reroute():
    """The reroute costs about 3% of the sinusoid MLP's vmapped step: models of torch.nn layers that
    need none of it run without; fastmaml's own models say so with exact_under_vmap."""
    from fastmaml.models.mlp import MLP

    assert not needs_exact_vmap_ops(nn.Sequential(nn.Linear(2, 4), nn.LayerNorm(4, elementwise_affine=False)))
    assert not needs_exact_vmap_ops(MLP(1, 1))
    assert needs_exact_vmap_ops(DirectLayerNorm())


class WithFrozen(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone, self.head = nn.Linear(8, 16), nn.Linear(16, 1)
        self.unused = nn.Linear(3, 3)  # never called: its meta-gradient is zero
        self.backbone.requires_grad_(False)

    def forward(self, x):
        return self.head(torch.tanh(self.backbone(x)))


@pytest.mark.parametrize(
    "options, backward",
    [({"strategy": "vmap"}, "meta_loss"), ({"strategy": "loop"}, "meta_loss"), ({"strategy": "hybrid"}, "meta_loss"),
     ({"strategy": "loop", "workers": 2}, "meta_backward"), ({"grad_checkpointing": True}, "meta_loss"),
     ({"strategy": "vmap", "meta_sgd": True}, "meta_loss")],
)
def test_frozen_parameters_are_constants_and_unused_ones_get_zero(options, backward):
    """requires_grad=False parameters are neither adapted nor meta-learned (they were adapted,
    silently); an unused parameter crashed hybrid, worker threads and gradient checkpointing."""
    torch.manual_seed(0)
    model = WithFrozen().double()
    batch = regression_batch()
    maml = MAML(model, F.mse_loss, inner_lr=0.1, inner_steps=2, **options)
    assert list(maml.params()) == ["head.weight", "head.bias", "unused.weight", "unused.bias"]
    if options.get("meta_sgd"):
        assert [tuple(a.shape) for a in maml.inner_lrs] == [(1, 16), (1,), (3, 3), (3,)]
    grads = meta_grads(maml, batch, backward)
    if not options.get("meta_sgd"):
        assert relative(grads, reference_meta_grads(model, F.mse_loss, batch, lr=0.1, steps=2)) < 1e-10
    assert model.backbone.weight.grad is None and model.backbone.bias.grad is None
    assert torch.count_nonzero(grads[2]) == 0 and grads[0].abs().sum() > 0
    adapted = maml.adapt(batch.support_x[0], batch.support_y[0], steps=3)
    assert list(adapted) == [n for n, _ in model.named_parameters()]  # a full set of weights
    assert adapted["backbone.weight"] is model.backbone.weight
    assert not torch.equal(adapted["head.weight"], model.head.weight)
    assert torch.allclose(maml(batch.query_x[0], adapted), torch.func.functional_call(model, adapted, (batch.query_x[0],)))


class DataDependentBackward(torch.autograd.Function):
    """Identity whose backward branches on a value: fine one task at a time, impossible under vmap."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        return grad if bool(grad.abs().sum() >= 0) else -grad


class FailsInBackward(nn.Module):
    """Query sets (6 examples) go through DataDependentBackward: under vmap the forward runs and the
    failure comes only at the meta-gradient's backward."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 1)

    def forward(self, x):
        out = self.lin(x)
        return DataDependentBackward.apply(out) if x.shape[0] == 6 else out


def test_auto_falls_back_when_vmap_fails_only_in_backward(caplog):
    """Some models fail under vmap only in backward (nn.TransformerEncoderLayer in eval mode did: its
    fused fast path has no derivative; the layer-norm reroute now keeps it off that path); auto
    found such a failure only at the user's backward, after it had committed to vmap."""
    torch.manual_seed(0)
    model = FailsInBackward().double()
    batch = regression_batch()
    with pytest.raises(RuntimeError):  # what auto ran into
        MAML(model, F.mse_loss, inner_lr=0.1, first_order=True, strategy="vmap").meta_loss(batch).backward()
    maml = MAML(model, F.mse_loss, inner_lr=0.1, first_order=True)
    with caplog.at_level("WARNING"):
        grads = meta_grads(maml, batch)
    assert maml.resolved_strategy() == "loop" and "using a per-task loop" in caplog.text
    want = reference_meta_grads(model, F.mse_loss, batch, lr=0.1, steps=1, first_order=True)
    assert relative(grads, want) < 1e-12
    # an evaluation first (forward only) does not settle on vmap: the first training call still checks
    for evaluate in (lambda m: m.meta_loss(batch), lambda m: m.adaptation_curve(batch, 1)):
        maml = MAML(model, F.mse_loss, inner_lr=0.1, first_order=True)
        with torch.no_grad():
            evaluate(maml)
        assert relative(meta_grads(maml, batch), want) < 1e-12 and maml.resolved_strategy() == "loop"
    # in eval mode with float32 the encoder layer now meta-trains under vmap
    encoder = nn.Sequential(nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True), Pool(),
                            nn.Linear(8, 1)).eval()
    tokens = TaskBatch(*(torch.randn(3, n, 5, 8) if i % 2 == 0 else torch.randn(3, n, 1)
                         for i, n in enumerate((4, 4, 6, 6))))
    vmapped = MAML(encoder, F.mse_loss, inner_lr=0.1, first_order=True, strategy="vmap")
    looped = MAML(encoder, F.mse_loss, inner_lr=0.1, first_order=True, strategy="loop")
    assert relative(meta_grads(vmapped, tokens), meta_grads(looped, tokens)) < 1e-5


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
        self.out = nn.Linear(8, 1)

    def forward(self, x):  # (N, length, 8) -> (N, 1)
        return self.out(self.layer(x).mean(1))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_attention_meta_trains_at_second_order(mode):
    """At second order the CPU flash-attention kernel's backward has no derivative: .backward() failed
    (README told users to wrap the step in sdpa_kernel(MATH)). MAML now runs a model with attention
    on the math kernel at second order; the meta-gradient is the reference's."""
    torch.manual_seed(0)
    model = Encoder().double()
    getattr(model, mode)()
    g = torch.Generator().manual_seed(0)
    tokens = TaskBatch(*(torch.randn(3, 4, 5, 8, generator=g, dtype=torch.float64) if i % 2 == 0
                         else torch.randn(3, 4, 1, generator=g, dtype=torch.float64) for i in range(4)))
    for strategy in ("loop", "auto"):
        got = meta_grads(MAML(model, F.mse_loss, inner_lr=0.1, inner_steps=2, strategy=strategy), tokens)
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
            want = reference_meta_grads(model, F.mse_loss, tokens, lr=0.1, steps=2)
        assert relative(got, want) < 1e-12, strategy


def test_non_scalar_losses_get_one_clear_error():
    model = nn.Sequential(nn.Linear(8, 1)).double()
    batch = regression_batch()
    for strategy in ("vmap", "loop", "auto"):
        per_example = MAML(model, lambda p, y: F.mse_loss(p, y, reduction="none"), inner_lr=0.1, strategy=strategy)
        with pytest.raises(ValueError, match=r"loss_fn must return a scalar tensor .* got \(4, 1\)"):
            per_example.meta_loss(batch)
        with pytest.raises(ValueError, match="loss_fn must return a scalar tensor"):
            per_example.adapt(batch.support_x[0], batch.support_y[0])
    # a float32 model fed bfloat16 inputs under autocast runs (a dtype check of fastmaml's own refused it)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert MAML(nn.Linear(8, 1), F.mse_loss, inner_lr=0.1).meta_loss(
            TaskBatch(*(t.to(torch.bfloat16) for t in batch))).isfinite()


def test_instance_norm_running_statistics_stay_as_they_are_under_every_strategy():
    """MAML never updates running statistics: the loop's fused instance-norm kernel updated them in
    place (training mode) while vmap did not, so a later eval-mode pass depended on the strategy."""
    torch.manual_seed(0)
    for strategy in ("loop", "vmap", "auto"):
        model = nn.Sequential(nn.Linear(8, 8), Channels(), nn.InstanceNorm1d(2, affine=True, track_running_stats=True),
                              nn.Flatten(), nn.Linear(8, 1)).double()
        maml = MAML(model, F.mse_loss, inner_lr=0.1, inner_steps=2, strategy=strategy)
        maml.meta_loss(regression_batch()).backward()
        norm = model[2]
        assert torch.equal(norm.running_mean, torch.zeros(2, dtype=torch.float64)), strategy
        assert torch.equal(norm.running_var, torch.ones(2, dtype=torch.float64)), strategy
        model.eval()  # eval mode reads the running statistics, alike under both strategies
        losses = [MAML(model, F.mse_loss, inner_lr=0.1, strategy=s).meta_loss(regression_batch()) for s in ("loop", "vmap")]
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-12, atol=0)


class OwnBatchNorm(nn.Module):
    """A batch norm of the user's own: its buffers passed to ``F.batch_norm`` as running statistics."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, None, self.training, 0.1, 1e-5)


def test_a_layers_own_running_statistics_stay_as_they_are_under_every_strategy():
    """The loop's fused kernel updated a custom layer's running statistics in place on every support
    and query forward, vmap's primitive batch norm did not (found by a review): now neither does."""
    for strategy in ("loop", "vmap", "auto", "hybrid"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 4), OwnBatchNorm(4), nn.Tanh(), nn.Linear(4, 1)).double()
        maml = MAML(model, F.mse_loss, inner_lr=0.1, inner_steps=2, strategy=strategy)
        maml.meta_loss(regression_batch()).backward()
        maml.adapt(regression_batch().support_x[0], regression_batch().support_y[0], steps=2)
        assert torch.equal(model[1].running_mean, torch.zeros(4, dtype=torch.float64)), strategy
        assert torch.equal(model[1].running_var, torch.ones(4, dtype=torch.float64)), strategy
    # outside MAML the layer is the user's: plain training updates its statistics
    model[1](torch.randn(5, 4, dtype=torch.float64))
    assert not torch.equal(model[1].running_mean, torch.zeros(4, dtype=torch.float64))


@pytest.mark.parametrize("layer", ["batch", "instance"])
def test_one_value_per_channel_is_refused_under_vmap_as_in_the_loop(layer):
    """Batch norm on one example (K = 1 regression), or instance norm on one spatial element, has
    zero variance: every feature normalises to 0. F.batch_norm refuses it, but under vmap the
    reroute to primitive ops skipped that check and trained a degenerate network silently (found by
    a review); now every strategy gives torch's error."""
    torch.manual_seed(0)
    if layer == "batch":
        model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1)).double()
        x = torch.randn(4, 1, 3, dtype=torch.float64)
        message = "more than 1 value per channel"
    else:  # four channels of one element each
        model = nn.Sequential(nn.Linear(3, 4), nn.Unflatten(1, (4, 1)), nn.InstanceNorm1d(4, affine=True),
                              nn.Flatten(), nn.Linear(4, 1)).double()
        x = torch.randn(4, 5, 3, dtype=torch.float64)
        message = "more than 1 spatial element"
    y = torch.randn(4, x.shape[1], 1, dtype=torch.float64)
    batch = TaskBatch(x, y, x, y)
    for strategy in ("vmap", "loop", "auto"):
        with pytest.raises(ValueError, match=message):
            MAML(model, F.mse_loss, inner_lr=0.1, strategy=strategy).meta_loss(batch)


def test_an_empty_task_batch_gets_one_clear_error():
    model = nn.Sequential(nn.Linear(8, 1)).double()
    for strategy in ("vmap", "loop"):
        maml = MAML(model, F.mse_loss, inner_lr=0.1, strategy=strategy)
        with pytest.raises(ValueError, match="at least one task; got T = 0"):
            maml.meta_loss(regression_batch().slice(0, 0))
        with pytest.raises(ValueError, match="at least one task"):
            maml.meta_backward(regression_batch().slice(0, 0))


def test_scale_grad_by_freq_embeddings_loop():
    """vmap counts the indices of all tasks together for scale_grad_by_freq (meta-gradients measured
    7.9% off the loop): auto loops for such a model, and vmap or hybrid are refused."""
    model = nn.Sequential(nn.Embedding(10, 6, scale_grad_by_freq=True), Pool(), nn.Linear(6, 1)).double()
    assert MAML(model, F.mse_loss, inner_lr=0.1).resolved_strategy() == "loop"
    for strategy in ("vmap", "hybrid"):
        with pytest.raises(ValueError, match="scale_grad_by_freq"):
            MAML(model, F.mse_loss, inner_lr=0.1, strategy=strategy)
    batch = token_batch()
    want = reference_meta_grads(model, F.mse_loss, batch, lr=0.1, steps=2)
    assert relative(meta_grads(MAML(model, F.mse_loss, inner_lr=0.1, inner_steps=2), batch), want) < 1e-10


class DropoutThenFailsInBackward(FailsInBackward):
    def forward(self, x):
        return super().forward(F.dropout(x, 0.5, training=True))


def test_auto_fallback_draws_the_random_numbers_the_loop_draws():
    """auto's vmap attempt drew dropout masks before it fell back, so its first meta-step differed
    from the loop's, and a resumed run (whose new MAML tries vmap again) from an uninterrupted one."""
    model = DropoutThenFailsInBackward().double()
    batch = regression_batch()
    grads = {}
    for strategy in ("auto", "loop"):
        torch.manual_seed(5)
        grads[strategy] = meta_grads(MAML(model, F.mse_loss, inner_lr=0.1, first_order=True, strategy=strategy), batch)
        grads[strategy].append(torch.rand(3, dtype=torch.float64))  # the stream after the step
    assert relative(grads["auto"], grads["loop"]) == 0


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.head = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16)), nn.Linear(16, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.body(x)))


@pytest.mark.parametrize(
    "options, backward",
    [({"strategy": "vmap"}, "meta_loss"), ({"strategy": "loop"}, "meta_loss"), ({"strategy": "hybrid"}, "meta_loss"),
     ({"strategy": "loop", "workers": 2}, "meta_backward"), ({"strategy": "hybrid", "workers": 2}, "meta_backward"),
     ({"strategy": "vmap", "workers": 2, "_thread_vmap": True}, "meta_backward"),
     ({"grad_checkpointing": True}, "meta_loss"), ({"strategy": "vmap", "meta_sgd": True}, "meta_loss"),
     ({"strategy": "vmap", "first_order": True}, "meta_loss"),
     ({"strategy": "loop", "first_order": True}, "meta_loss")],
)
@pytest.mark.parametrize("inner_params", [["head"], ["body.2", "head.bias"], lambda name: name.endswith("weight")])
def test_parameters_left_out_of_the_inner_loop_are_meta_learned(options, backward, inner_params):
    """inner_params=["head"] (ANIL): the body keeps θ in every inner step, and its meta-gradient,
    through the inner steps and the query loss, matches the reference under every strategy."""
    torch.manual_seed(0)
    model = Backbone().double()
    batch = regression_batch()
    options = dict(options)
    thread_vmap = options.pop("_thread_vmap", False)  # threads split vmap only for large models; this one is small
    maml = MAML(model, F.mse_loss, inner_lr=0.1, inner_steps=2, inner_params=inner_params, **options)
    maml._thread_vmap = maml._thread_vmap or thread_vmap
    adapted = {"head.weight", "head.bias"} if inner_params == ["head"] else (
        {"body.2.weight", "body.2.bias", "head.bias"} if isinstance(inner_params, list) else
        {"body.0.weight", "body.2.weight", "head.weight"})
    assert set(maml.params()) == adapted and set(maml.outer_params()) == set(dict(model.named_parameters())) - adapted
    if options.get("meta_sgd"):
        assert len(maml.inner_lrs) == len(adapted)
    maml.zero_grad()
    if backward == "meta_backward":
        maml.meta_backward(batch)
    else:
        maml.meta_loss(batch).backward()
    names = [n for n, _ in model.named_parameters()]
    want = dict(zip(names, reference_meta_grads(model, F.mse_loss, batch, lr=0.1, steps=2, adapted=adapted,
                                                first_order=options.get("first_order", False))))
    got = dict(model.named_parameters())
    assert relative([got[n].grad for n in names], [want[n] for n in names]) < 1e-10
    assert all(got[n].grad.abs().sum() > 0 for n in names)  # the left-out parameters are meta-learned
    # adapt(): a full set of weights, the left-out ones the model's own
    weights = maml.adapt(batch.support_x[0], batch.support_y[0], steps=3)
    assert all((weights[n] is got[n]) == (n not in adapted) for n in names)


def test_left_out_parameters_differ_from_adapting_everything():
    """Not a no-op: leaving the body out changes the meta-gradient of the body."""
    torch.manual_seed(0)
    batch = regression_batch()
    grads = []
    for inner_params in (None, ["head"]):
        torch.manual_seed(0)
        model = Backbone().double()
        MAML(model, F.mse_loss, inner_lr=0.1, inner_steps=2, inner_params=inner_params).meta_loss(batch).backward()
        grads.append(model.body[0].weight.grad)
    assert relative([grads[1]], [grads[0]]) > 1e-3


@pytest.mark.parametrize(
    "inner_params, message",
    [(["neck"], r"\['neck'\] name no parameter.*body.0.weight, body.0.bias"),
     (["bod"], r"\['bod'\] name no parameter"),  # a prefix is whole name parts: "bod" does not take body.0.weight
     (lambda name: False, "leaves no parameter for the inner loop to adapt"),
     ([3], "parameter names or name prefixes")],
)
def test_inner_params_that_choose_nothing_are_refused(inner_params, message):
    with pytest.raises(ValueError, match=message):
        MAML(Backbone(), F.mse_loss, inner_lr=0.1, inner_params=inner_params)


def test_frozen_parameters_stay_out_of_inner_params():
    """A parameter that does not require grad is a constant: inner_params cannot make it adapt."""
    model = Backbone()
    model.head.requires_grad_(False)
    with pytest.raises(ValueError, match=r"\['head'\] name no parameter of the model that requires grad"):
        MAML(model, F.mse_loss, inner_lr=0.1, inner_params=["head"])
    maml = MAML(model, F.mse_loss, inner_lr=0.1, inner_params=["body.2"])
    assert list(maml.outer_params()) == ["body.0.weight", "body.0.bias"]


def test_head_means_the_last_layer_of_fastmamls_mlps():
    """`--set inner_params=head`, as README gives it, was refused on the MLP presets (sinusoid, table,
    omniglot-noconv): their last layer is net.N. "head" now means it there; names work as before."""
    from fastmaml.models.conv import NoConvMLP
    from fastmaml.models.mlp import MLP

    for model, last in ((MLP(1, 1), "net.4"), (MLP(3, 2, hidden=(8,)), "net.2"), (NoConvMLP(784, 5), "net.12")):
        maml = MAML(model, F.mse_loss, inner_lr=0.1, inner_params=["head"])
        assert list(maml.params()) == [f"{last}.weight", f"{last}.bias"]
        assert list(MAML(model, F.mse_loss, inner_lr=0.1, inner_params=[last]).params()) == list(maml.params())
    # a model with parameters under "head" keeps them; one without head_name still gets the error
    assert list(MAML(Backbone(), F.mse_loss, inner_lr=0.1, inner_params="head").params()) == ["head.weight", "head.bias"]
    with pytest.raises(ValueError, match=r"\['head'\] name no parameter"):
        MAML(nn.Sequential(nn.Linear(1, 1)), F.mse_loss, inner_lr=0.1, inner_params=["head"])


# ----------------------------------------------------------------------------- reuse_features
class SplitBackbone(Backbone):
    """Backbone with timm's split: forward(x) = forward_head(forward_features(x))."""

    def forward_features(self, x):
        return torch.tanh(self.body(x))

    def forward_head(self, z):
        return self.head(z)


class DropoutInHead(SplitBackbone):
    def forward_head(self, z):
        return self.head(F.dropout(z, 0.3, training=self.training))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


class DropoutInBody(SplitBackbone):
    def forward_features(self, x):
        return F.dropout(super().forward_features(x), 0.3, training=self.training)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


class WrongParts(SplitBackbone):
    def forward_head(self, z):
        return self.head(2 * z)  # not what forward computes


@pytest.mark.parametrize(
    "options",
    [{"strategy": "vmap"}, {"strategy": "loop"}, {"strategy": "loop", "workers": 2},
     {"strategy": "vmap", "workers": 2, "_thread_vmap": True}, {"grad_checkpointing": True},
     {"strategy": "vmap", "meta_sgd": True}, {"strategy": "loop", "first_order": True}],
)
def test_features_computed_once_give_the_reference_meta_gradient(options):
    """A model that splits, its head alone adapted: the body runs once per task and set (counted), and
    the meta-gradient of every parameter matches the independent reference under every strategy."""
    torch.manual_seed(0)
    model = SplitBackbone().double()
    batch = regression_batch()
    options = dict(options)
    thread_vmap = options.pop("_thread_vmap", False)
    maml = MAML(model, F.mse_loss, inner_lr=0.1, inner_steps=3, inner_params=["head"], **options)
    maml._thread_vmap = maml._thread_vmap or thread_vmap
    calls = []
    model.body.register_forward_hook(lambda *_: calls.append(1))
    got = meta_grads(maml, batch, "meta_backward") + [p.grad for p in maml.outer_params().values()]
    assert maml._split
    count = len(calls)
    names = [*maml.params(), *maml.outer_params()]
    want = dict(zip([n for n, _ in model.named_parameters()],
                    reference_meta_grads(model, F.mse_loss, batch, lr=0.1, steps=3,
                                         adapted={"head.weight", "head.bias"},
                                         first_order=options.get("first_order", False))))
    if options.get("meta_sgd"):  # Meta-SGD's rates start at inner_lr: the same first meta-gradient
        got = got[: len(maml.params())] + got[-len(maml.outer_params()):]
    assert relative(got, [want[n] for n in names]) < 1e-10
    # deciding the split runs the body 3 times (twice for the features, once in the whole model), then
    # each task's support and query sets once (vmap: once for all tasks, or for each worker's share;
    # gradient checkpointing recomputes none: the features stay outside the checkpointed steps)
    vmapped = options.get("strategy") == "vmap"
    groups = (options.get("workers", 1) if vmapped else batch.num_tasks)
    assert count == 3 + 2 * groups < 3 + 4 * batch.num_tasks  # the whole model: 4 runs per task


def test_features_once_match_the_whole_model_in_evaluation_and_adapt():
    """adaptation_curve and adapt on a conv net with batch norm: the same numbers as running the
    whole model at every step, and the body runs on each set once instead of at every step."""
    from fastmaml.models.conv import ConvNet

    torch.manual_seed(0)
    model = ConvNet(1, 3, hidden=4, blocks=2, image_size=8).double()
    g = torch.Generator().manual_seed(0)
    x = lambda: torch.randn(2, 6, 1, 8, 8, generator=g, dtype=torch.float64)  # noqa: E731
    y = lambda: torch.randint(0, 3, (2, 6), generator=g)  # noqa: E731
    batch = TaskBatch(x(), y(), x(), y())
    once = MAML(model, F.cross_entropy, inner_lr=0.4, inner_params=["head"], strategy="loop")
    whole = MAML(model, F.cross_entropy, inner_lr=0.4, inner_params=["head"], strategy="loop", reuse_features=False)
    calls = []
    model.features.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        curve_once = once.adaptation_curve(batch, steps=4)
        runs, calls[:] = len(calls), []
        curve_whole = whole.adaptation_curve(batch, steps=4)
    assert once._split and not whole._split
    assert runs == 3 + 2 * 2  # deciding the split (3 runs), then each task's support and query set once
    assert torch.allclose(curve_once, curve_whole, rtol=1e-12, atol=1e-12)
    assert len(calls) == 2 * (4 + 4 + 1)  # whole: 4 support steps and 5 query evaluations per task
    a, b = once.adapt(batch.support_x[0], batch.support_y[0], steps=3), whole.adapt(
        batch.support_x[0], batch.support_y[0], steps=3)
    assert all(torch.allclose(a[n], b[n], rtol=1e-12, atol=1e-12) for n in a)
    once.reuse_features = False  # turned off later: the next call runs the whole model
    once.adapt(batch.support_x[0], batch.support_y[0], steps=3)
    assert not once._split


@pytest.mark.parametrize("name", ["ConvNet", "NoConvMLP", "MLP"])
def test_fastmaml_models_split_for_their_last_layer(name):
    from fastmaml.models.conv import ConvNet, NoConvMLP
    from fastmaml.models.mlp import MLP

    model = {"ConvNet": lambda: ConvNet(1, 5, hidden=4, image_size=28), "NoConvMLP": lambda: NoConvMLP(784, 5, (16, 8)),
             "MLP": lambda: MLP(784, 5, (16, 8))}[name]()
    inner = ["head"] if name == "ConvNet" else [f"net.{len(model.net) - 1}"]
    x = torch.randn(5, 1, 28, 28) if name == "ConvNet" else torch.randn(5, 784)
    maml = MAML(model, F.cross_entropy, inner_lr=0.1, inner_steps=2, inner_params=inner)
    maml.adapt(x, torch.arange(5), first_order=True)
    assert maml._split and torch.equal(model(x), model.forward_head(model.forward_features(x)))


@pytest.mark.parametrize("case", ["body adapted", "one step", "no split methods", "dropout in the body", "wrong parts",
                                  "hybrid"])
def test_the_whole_model_runs_where_features_cannot_be_reused(case, caplog):
    """Each case keeps the whole model at every inner step, with the reference meta-gradient."""
    torch.manual_seed(0)
    model = {"no split methods": Backbone, "dropout in the body": DropoutInBody, "wrong parts": WrongParts}.get(
        case, SplitBackbone)().double()
    inner = ["body.2", "head"] if case == "body adapted" else ["head"]
    steps = 1 if case == "one step" else 2
    batch = regression_batch()
    maml = MAML(model, F.mse_loss, inner_lr=0.1, inner_steps=steps, inner_params=inner,
                strategy="hybrid" if case == "hybrid" else "loop")
    adapted = set(maml.params())
    torch.manual_seed(3)
    with caplog.at_level("WARNING"):
        got = meta_grads(maml, batch) + [p.grad for p in maml.outer_params().values()]
    assert not maml._split
    assert ("differs from forward(x)" in caplog.text) == (case == "wrong parts")
    if case == "dropout in the body":
        model.eval()  # no dropout: the features are deterministic, and the split is used
        maml.meta_loss(batch)
        assert maml._split
        return
    names = [*maml.params(), *maml.outer_params()]
    want = dict(zip([n for n, _ in model.named_parameters()],
                    reference_meta_grads(model, F.mse_loss, batch, lr=0.1, steps=steps, adapted=adapted)))
    assert relative(got, [want[n] for n in names]) < 1e-10


def test_dropout_in_the_head_draws_what_the_whole_model_draws():
    """Dropout in the head draws once per head call either way, and deciding the split draws nothing:
    the same meta-gradient, and the same random stream afterwards, with and without reuse_features."""
    results = []
    for reuse in (True, False):
        torch.manual_seed(0)
        model = DropoutInHead().double()
        maml = MAML(model, F.mse_loss, inner_lr=0.1, inner_steps=3, inner_params=["head"], strategy="loop",
                    reuse_features=reuse)
        torch.manual_seed(7)
        grads = meta_grads(maml, regression_batch()) + [p.grad for p in maml.outer_params().values()]
        results.append((maml._split, grads, torch.rand(3)))
    assert results[0][0] and not results[1][0]
    assert relative(results[0][1], results[1][1]) < 1e-12 and torch.equal(results[0][2], results[1][2])


def test_a_frozen_body_is_run_once_per_task_without_inner_params():
    """A frozen body (requires_grad=False: constants) with every trainable parameter adapted: the body
    is never adapted, so its features are computed once per task here too, and the head's
    meta-gradient is the reference's."""
    torch.manual_seed(0)
    model = SplitBackbone().double()
    model.body.requires_grad_(False)
    batch = regression_batch()
    maml = MAML(model, F.mse_loss, inner_lr=0.1, inner_steps=2, strategy="loop")
    got = meta_grads(maml, batch)
    assert maml._split and set(maml.params()) == {"head.weight", "head.bias"}
    want = reference_meta_grads(model, F.mse_loss, batch, lr=0.1, steps=2)
    assert relative(got, list(want)) < 1e-10
