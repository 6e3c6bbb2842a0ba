"""The paper's conv net and non-conv MLP: shapes, original-code conventions, and MAML vmap == loop."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastmaml import MAML
from fastmaml.errors import ConfigError
from fastmaml.models import ConvNet, NoConvMLP
from fastmaml.models.conv import same_padding
from fastmaml.tasks import FewShotImages


def feature_sizes(model: ConvNet, x: torch.Tensor) -> list[int]:
    sizes = []
    for layer in model.features:
        x = layer(x)
        if isinstance(layer, nn.ReLU | nn.MaxPool2d):
            sizes.append(x.shape[-1])
    return sizes


def test_omniglot_net_strided_same_padding_and_mean_pooling():
    model = ConvNet(1, 5)
    x = torch.rand(7, 1, 28, 28)
    assert model(x).shape == (7, 5)
    assert feature_sizes(model, x) == [14, 7, 4, 2]
    assert model.head.in_features == 64  # features averaged over space, as the original
    assert [same_padding(s, 2) for s in (28, 14, 7, 4)] == [(0, 1), (0, 1), (1, 1), (0, 1)]  # TF puts extra after
    assert all(m.stride == (2, 2) for m in model.modules() if isinstance(m, nn.Conv2d))
    assert all(not m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_same_padding_matches_tensorflow_on_an_asymmetric_case():
    # TF 'SAME', stride 2, kernel 3, input 4: output 2, pad 1 at the end only, so the first output
    # pixel sees input rows 0..2 and the second rows 2..4 (row 4 is padding).
    conv = ConvNet(1, 1, hidden=1, blocks=1, image_size=4).features[:2]
    nn.init.ones_(conv[1].weight)
    nn.init.zeros_(conv[1].bias)
    x = torch.arange(16.0).view(1, 1, 4, 4)
    window = lambda rows, cols: x[0, 0, rows, cols].sum()  # noqa: E731
    first, second = slice(0, 3), slice(2, 4)
    expected = torch.stack([torch.stack([window(r, c) for c in (first, second)]) for r in (first, second)])
    assert torch.allclose(conv(x)[0, 0], expected)


def test_miniimagenet_net_max_pool_and_flatten():
    model = ConvNet(3, 5, hidden=32, image_size=84, max_pool=True)
    x = torch.rand(3, 3, 84, 84)
    assert model(x).shape == (3, 5)
    assert feature_sizes(model, x) == [84, 42, 42, 21, 21, 10, 10, 5]  # ReLU then pool, per block
    assert model.head.in_features == 32 * 5 * 5
    assert all(m.stride == (1, 1) for m in model.modules() if isinstance(m, nn.Conv2d))


def test_initialisation_follows_the_original():
    omniglot, mini = ConvNet(1, 5), ConvNet(3, 5, hidden=32, image_size=84, max_pool=True)
    assert 0.7 < omniglot.head.weight.std() < 1.3  # tf.random_normal
    assert mini.head.weight.abs().max() <= (6 / (800 + 5)) ** 0.5  # Glorot uniform bound
    conv = next(m for m in omniglot.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.abs().max() <= (6 / (9 * 1 + 9 * 64)) ** 0.5 and conv.bias.abs().sum() == 0
    mlp = NoConvMLP(784, 5)
    weights = [m.weight for m in mlp.modules() if isinstance(m, nn.Linear)]
    assert all(w.abs().max() <= 0.02 for w in weights) and 0.007 < weights[0].std() < 0.011


def test_noconv_mlp_shapes_and_errors():
    mlp = NoConvMLP(784, 5)
    assert mlp(torch.rand(4, 1, 28, 28)).shape == (4, 5) and mlp(torch.rand(4, 784)).shape == (4, 5)
    assert [m.out_features for m in mlp.modules() if isinstance(m, nn.Linear)] == [256, 128, 64, 64, 5]
    with pytest.raises(ConfigError, match="expects 784 input features, got 100"):
        mlp(torch.rand(2, 100))
    with pytest.raises(ValueError, match="built for 28x28 images, got .*image_size=84"):
        ConvNet(1, 5)(torch.rand(2, 1, 84, 84))
    with pytest.raises(ValueError, match="too small for 4 max-pooled blocks; use image_size >= 16"):
        ConvNet(3, 5, image_size=8, max_pool=True)


def tiny_batch(channels: int, size: int) -> tuple:
    images = torch.randint(0, 256, (6 * 5, channels, size, size), generator=torch.Generator().manual_seed(0))
    data = FewShotImages(images.to(torch.uint8), [5] * 6, rotations=(0, 1))
    batch = data.sample(torch.Generator().manual_seed(1), meta_batch_size=3, ways=3, shots=2, queries=2)
    return tuple(t.double() if t.is_floating_point() else t for t in batch)


@pytest.mark.parametrize(
    "make, channels, size",
    [
        (lambda: ConvNet(1, 3, hidden=4, blocks=2, image_size=8), 1, 8),
        (lambda: ConvNet(3, 3, hidden=4, blocks=2, image_size=8, max_pool=True), 3, 8),
        (lambda: NoConvMLP(36, 3, hidden=(8, 6)), 1, 6),
    ],
    ids=["conv-strided", "conv-maxpool", "noconv-mlp"],
)
def test_maml_vmap_equals_loop_in_float64(make, channels, size):
    torch.manual_seed(0)
    model = make().double()
    batch = tiny_batch(channels, size)
    results = []
    for strategy in ("vmap", "loop"):
        maml = MAML(model, F.cross_entropy, inner_lr=0.4, inner_steps=2, strategy=strategy)
        loss = maml.meta_loss(batch, reduction="none")
        grads = torch.autograd.grad(loss.mean(), list(model.parameters()))
        results.append((loss, grads))
    (vmap_loss, vmap_grads), (loop_loss, loop_grads) = results
    assert torch.allclose(vmap_loss, loop_loss, rtol=1e-10, atol=1e-12)
    assert all(torch.allclose(a, b, rtol=1e-8, atol=1e-10) for a, b in zip(vmap_grads, loop_grads))
    assert all(g.abs().sum() > 0 for g in vmap_grads)


@pytest.mark.parametrize("make", [lambda norm: ConvNet(1, 3, hidden=4, blocks=2, image_size=8, norm=norm),
                                  lambda norm: NoConvMLP(64, 3, hidden=(8, 6), norm=norm)], ids=["conv", "mlp"])
def test_original_batch_norm_has_no_scale_eps_1e3_and_a_learned_offset(make):
    """norm="original": tf.contrib.layers.batch_norm's defaults (no scale, eps 1e-3, an offset beta)."""
    from fastmaml.models.conv import Offset, norm_offsets

    torch.manual_seed(0)
    model = make("original")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(not m.affine and m.eps == 1e-3 and not m.track_running_stats for m in norms)
    offsets = [m for m in model.modules() if isinstance(m, Offset)]
    assert len(offsets) == len(norms) and all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in offsets)
    assert len(norm_offsets(model)) == len(norms) and norm_offsets(make("affine")) == []
    assert sum(p.numel() for p in make("affine").parameters()) - sum(p.numel() for p in model.parameters()) == sum(
        m.bias.numel() for m in offsets)  # one scale per channel fewer
    # an offset shifts each channel after normalising: the first block's output moves by it before the ReLU
    x = torch.randn(5, 1, 8, 8)
    offsets[0].bias.data = torch.linspace(-1, 1, offsets[0].bias.numel())
    layers = model.features if isinstance(model, ConvNet) else model.net
    first = layers[: next(i for i, m in enumerate(layers) if isinstance(m, Offset)) + 1]
    h = first(x if isinstance(model, ConvNet) else x.flatten(1))
    mean = h.mean((0, 2, 3)) if h.dim() == 4 else h.mean(0)
    assert torch.allclose(mean, offsets[0].bias, atol=1e-5)
    with pytest.raises(ConfigError, match="norm must be one of affine, original"):
        make("layer")


def test_conv_net_refuses_no_blocks_and_says_it_takes_square_images():
    """ConvNet(blocks=0) built and failed at the first forward on a matrix product; a 32x33 image was
    told to build with image_size=33, which fails as well (found by a review)."""
    with pytest.raises(ConfigError, match="blocks must be an integer >= 1, got 0"):
        ConvNet(1, 5, blocks=0)
    net = ConvNet(1, 5, image_size=32)
    with pytest.raises(ConfigError, match="takes square images"):
        net(torch.randn(2, 1, 32, 33))
    with pytest.raises(ConfigError, match="build it with image_size=28"):
        net(torch.randn(2, 1, 28, 28))
