"""The paper's few-shot classifiers (Finn et al. 2017, Sec. 5.2), following cbfinn/maml ``maml.py``/``utils.py``.

``ConvNet``: ``blocks`` x [3x3 conv with ``hidden`` filters, batch norm, ReLU], then a linear layer.

- Omniglot (``max_pool=False``, 64 filters): every conv has stride 2 and TensorFlow ``'SAME'``
  padding, which puts the odd padding pixel at the bottom/right (28 -> 14 -> 7 -> 4 -> 2); that
  asymmetry is reproduced. The last feature map is averaged over space
  (``tf.reduce_mean(hidden4, [1, 2])``), so the linear layer sees ``hidden`` features.
- MiniImagenet (``max_pool=True``, 32 filters): stride-1 ``'SAME'`` conv, then 2x2 max-pool with
  ``'VALID'`` padding after the ReLU (84 -> 42 -> 21 -> 10 -> 5); the map is flattened
  (32 * 5 * 5 = 800 features).

Batch norm normalises with the statistics of the batch it sees (``track_running_stats=False``), as
the original did. Initialisation as the original: Glorot-uniform conv weights, zero biases, and a
Glorot-uniform (MiniImagenet) or N(0, 1) (Omniglot, ``tf.random_normal``) linear layer.
Differences: the original batch norm had no scale (``tf.contrib.layers.batch_norm`` defaults to
``scale=False``), used eps 1e-3, and its offsets were meta-learned but not adapted in the inner
loop; here it is the usual affine ``nn.BatchNorm2d`` and adapted like every other parameter.

``NoConvMLP``: the paper's non-convolutional baseline, ``784 -> 256 -> 128 -> 64 -> 64 -> ways``,
each hidden layer linear, batch norm, ReLU; weights from a normal with std 0.01 truncated at two
std (``tf.truncated_normal``), zero biases.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from fastmaml.errors import ConfigError

KERNEL = 3


def same_padding(size: int, stride: int, kernel: int = KERNEL) -> tuple[int, int]:
    """TensorFlow's ``'SAME'`` padding (before, after) of one spatial dim: the output is ceil(size / stride)."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class ConvNet(nn.Module):
    """The paper's 4-block conv net: strided (Omniglot) or max-pooled (``max_pool=True``, MiniImagenet)."""

    exact_under_vmap = True  # its forward calls only torch.nn modules (fastmaml.core.norm.needs_exact_vmap_ops)

    def __init__(
        self,
        in_channels: int,
        ways: int,
        hidden: int = 64,
        blocks: int = 4,
        image_size: int = 28,
        max_pool: bool = False,
    ) -> None:
        super().__init__()
        stride, size, layers = (1 if max_pool else 2), image_size, []
        for block in range(blocks):
            before, after = same_padding(size, stride)
            layers += [
                nn.ZeroPad2d((before, after, before, after)),
                nn.Conv2d(in_channels if block == 0 else hidden, hidden, KERNEL, stride),
                nn.BatchNorm2d(hidden, track_running_stats=False),
                nn.ReLU(),
            ]
            size = -(-size // stride)
            if max_pool:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            if size < 1:
                raise ConfigError(f"image_size={image_size} is too small for {blocks} max-pooled blocks; use "
                                  f"image_size >= {2 ** blocks} (or, in Python, ConvNet(blocks=...) with fewer)")
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(hidden * size * size if max_pool else hidden, ways)
        self.image_size, self.max_pool = image_size, max_pool
        for m in self.features:
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        if max_pool:
            nn.init.xavier_uniform_(self.head.weight)
        else:
            nn.init.normal_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N, ways)
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ConfigError(
                f"ConvNet was built for {self.image_size}x{self.image_size} images, got "
                f"{tuple(x.shape[-2:])}; build it with image_size={x.shape[-1]}"
            )
        h = self.features(x)
        return self.head(h.flatten(1) if self.max_pool else h.mean((2, 3)))


class NoConvMLP(nn.Module):
    """The paper's non-convolutional Omniglot network: flattened image -> hidden (BN, ReLU) -> ways."""

    exact_under_vmap = True  # its forward calls only torch.nn modules (fastmaml.core.norm.needs_exact_vmap_ops)

    def __init__(self, in_features: int, ways: int, hidden: Sequence[int] = (256, 128, 64, 64)) -> None:
        super().__init__()
        layers, width = [], in_features
        for out in hidden:
            layers += [nn.Linear(width, out), nn.BatchNorm1d(out, track_running_stats=False), nn.ReLU()]
            width = out
        layers.append(nn.Linear(width, ways))
        self.net = nn.Sequential(*layers)
        self.in_features = in_features
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.01, a=-0.02, b=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:  # (N, ...) -> (N, ways)
        x = x.flatten(1)
        if x.shape[1] != self.in_features:
            raise ConfigError(f"NoConvMLP expects {self.in_features} input features, got {x.shape[1]}")
        return self.net(x)
